"""Checkpoints: restore onto a different mesh with identical values, keep-last + best, corrupt/partial refused."""

import json

import jax
import numpy as np
import pytest

from grn_jax.train import sharding as sh
from grn_jax.train.checkpoint import INTEGRITY_FILE, CheckpointError, Checkpointer
from grn_jax.train.config import MeshConfig, TrainConfig
from grn_jax.train.optim import make_optimizer
from grn_jax.train.state import abstract_with_shardings, init_sharded_state, state_shardings
from tests.train import toy

CFG = TrainConfig(steps=10, batch_size=8)
BATCH = toy.toy_batch(8)
MODEL = toy.ToyModel()
TX = make_optimizer(CFG)


def _mesh(shape):
    return sh.make_mesh(MeshConfig(*shape), jax.devices()[: int(np.prod(shape))])


def _target(mesh):
    abstract, shardings, _ = state_shardings(toy.toy_init(MODEL, BATCH), TX, mesh, jax.random.key(0))
    return abstract_with_shardings(abstract, shardings)


@pytest.fixture(scope="module")
def state1():
    """A train state on one device, shared (read-only) by the tests below."""
    return init_sharded_state(toy.toy_init(MODEL, BATCH), TX, _mesh((1, 1, 1)), jax.random.key(0)).state


def _save(directory, state, steps, every=1, **kw):
    ck = Checkpointer(directory, every=every, **kw)
    for step, val in steps:
        ck.save(step, state, data_state={"pos": step}, config={"name": "t"}, vocab={"genes": ["A", "B"]},
                metrics=None if val is None else {"val_loss": val})
    ck.wait()
    return ck


@pytest.mark.parametrize("save_shape,load_shape", [((1, 8, 1), (1, 1, 1)), ((1, 1, 1), (2, 2, 2))])
def test_restore_onto_another_mesh(tmp_path, save_shape, load_shape):
    src = init_sharded_state(toy.toy_init(MODEL, BATCH), TX, _mesh(save_shape), jax.random.key(7)).state
    ck = _save(tmp_path, src, [(3, None)])
    load_mesh = _mesh(load_shape)
    restored = ck.restore(3, _target(load_mesh))
    ck.close()
    assert restored.data_state == {"pos": 3} and restored.config == {"name": "t"}
    assert restored.vocab == {"genes": ["A", "B"]}
    for a, b in zip(jax.tree_util.tree_leaves(restored.state), jax.tree_util.tree_leaves(src)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    w1 = restored.state.params["w1"]
    assert w1.sharding.mesh.shape == load_mesh.shape
    assert len(w1.sharding.device_set) == load_mesh.size


def test_keeps_last_k_and_best(tmp_path, state1):
    ck = _save(tmp_path, state1, [(1, 5.0), (2, 1.0), (3, 4.0), (4, 3.0), (5, None)], keep_last=2, keep_best=1)
    assert ck.all_steps() == [2, 4, 5]  # best (val 1.0) + the last two
    assert ck.best_step() == 2
    assert ck.latest_valid_step() == 5
    ck.close()


def test_corrupt_checkpoint_is_refused(tmp_path, state1):
    ck = _save(tmp_path, state1, [(1, None), (2, None)], keep_last=3)
    record = json.loads((tmp_path / "2" / INTEGRITY_FILE).read_text())["files"]
    victim = max((k for k in record if k.startswith("state/")), key=lambda k: record[k]["bytes"])
    path = tmp_path / "2" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step 2 .* corrupt: .*1 changed"):
        ck.restore(2, _target(_mesh((1, 1, 1))))
    with pytest.raises(CheckpointError, match="corrupt"):
        ck.latest_valid_step()
    ck.close()


def test_partial_checkpoint_is_skipped_and_reported(tmp_path, state1):
    ck = _save(tmp_path, state1, [(1, None), (2, None)], keep_last=3)
    (tmp_path / "2" / INTEGRITY_FILE).unlink()  # as if killed after orbax finalised, before sealing
    reports = []
    assert ck.latest_valid_step(report=reports.append) == 1
    assert len(reports) == 1 and "step 2 is partial" in reports[0]
    with pytest.raises(CheckpointError, match="partial"):
        ck.restore(2, _target(_mesh((1, 1, 1))))
    ck.close()


def test_resume_seals_a_committed_but_unsealed_newest_step(tmp_path, state1):
    ck = _save(tmp_path, state1, [(1, None), (2, None)], keep_last=3)
    seal = tmp_path / "2" / INTEGRITY_FILE
    original = json.loads(seal.read_text())
    seal.unlink()  # as if killed after orbax committed step 2, before its seal was written
    reports = []
    restored = ck.restore_latest(_target(_mesh((1, 1, 1))), report=reports.append)
    assert restored.step == 2 and restored.data_state == {"pos": 2}
    for a, b in zip(jax.tree_util.tree_leaves(restored.state), jax.tree_util.tree_leaves(state1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(reports) == 1 and "step 2 was committed but never sealed" in reports[0] and "now sealed" in reports[0]
    assert json.loads(seal.read_text()) == original  # the new seal records the bytes that were saved
    ck.verify(2)
    # a rerun that reaches step 2 again does not try to save it twice (the old failure)
    assert not ck.save(2, state1, data_state={"pos": 2}, config={"name": "t"}, vocab={"genes": ["A", "B"]})
    ck.close()


def test_resume_deletes_an_unsealed_step_it_cannot_restore(tmp_path, state1):
    ck = _save(tmp_path, state1, [(1, None), (2, None)], keep_last=3)
    (tmp_path / "2" / INTEGRITY_FILE).unlink()
    victims = [p for p in (tmp_path / "2" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert victims
    for victim in victims:  # the array data (OCDBT data files, wherever orbax put them), torn
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    reports = []
    restored = ck.restore_latest(_target(_mesh((1, 1, 1))), report=reports.append)
    assert restored.step == 1 and "step 2 was committed but never sealed and cannot be restored" in reports[0]
    assert ck.all_steps() == [1] and not (tmp_path / "2").exists()
    # the rerun can save step 2 again
    assert ck.save(2, state1, data_state={"pos": 2}, config={"name": "t"}, vocab={"genes": ["A", "B"]}, force=True)
    ck.wait()
    ck.verify(2)
    ck.close()


def test_no_pickle_in_checkpoints(tmp_path, state1):
    _save(tmp_path, state1, [(1, None)]).close()
    for f in (tmp_path / "1").rglob("*"):
        if f.is_file():
            head = f.read_bytes()[:2]
            assert head != b"\x80\x04" and head != b"\x80\x05", f"{f} looks like a pickle"
