"""train.deterministic_reductions: the batch-shard sum in one fixed order, so the layout cannot change a bit.

Two layouts of 8 devices with the same data x fsdp product that a plain all-reduce sums in different
orders (fsdp 2 vs 4, the devices permuted): with the flag the step's loss, gradient norm and new
parameters, and the eval sums, are bitwise equal, and the compiled step holds no all-reduce at all
(tensor = 1: only all-gathers, which do no arithmetic). Two processes x 4 devices (jax.distributed on
127.0.0.1) give the metrics of one process on 8 devices bit for bit (without the flag the first loss
differs in the last place: 12.950331 vs 12.950332). The CLI run killed and resumed on two hosts with
tensor = 2 is tests/train/test_multihost_resume.py (slow).
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from grn_jax.train import sharding as sh
from grn_jax.train.config import TrainConfig
from tests.train import two_process_toy
from tests.train.test_multihost_resume import REPO, _env, _free_port

PERMUTED = [3, 6, 0, 5, 7, 1, 4, 2]
LAYOUTS = {"data4_fsdp2": ((4, 2, 1), None), "data2_fsdp4_permuted": ((2, 4, 1), PERMUTED)}


def _run(shape, order):
    state, gb, train, evaluate = two_process_toy.build(shape, order)
    state, metrics = two_process_toy.train_metrics(state, gb, train)
    return jax.device_get(state.params), metrics, jax.device_get(evaluate(state.params, gb, np.int32(0))), \
        train.as_text()


@pytest.fixture(scope="module")
def runs():
    return {name: _run(*layout) for name, layout in LAYOUTS.items()}


def test_step_is_bitwise_equal_across_layouts(runs):
    (p_a, m_a, e_a, _), (p_b, m_b, e_b, _) = runs.values()
    assert all(np.isfinite(m[0]) and m[3] > 0 for m in m_a)
    assert m_a == m_b  # loss, grad_norm, accuracy, n_masked of every step, as floats
    for name in p_a:
        assert np.array_equal(p_a[name], p_b[name]), name
    for k in e_a:
        assert np.array_equal(e_a[k], e_b[k]), (k, e_a[k], e_b[k])


def test_compiled_step_sums_by_gather_not_all_reduce(runs):
    """Every cross-device sum is the gathered one: the compiled step holds all-gathers and no reduction."""
    for name, (_, _, _, hlo) in runs.items():
        assert "all-gather" in hlo, name
        for op in ("all-reduce", "reduce-scatter"):
            assert op not in hlo, (name, op)
    _, _, plain, _ = two_process_toy.build(deterministic=False)  # the default step all-reduces its gradients
    assert "all-reduce" in plain.as_text()


def test_two_processes_match_one_bit_for_bit(runs, tmp_path):
    """2 processes x 4 CPU devices (jax.distributed on 127.0.0.1) against this process's 8 devices."""
    port, out = _free_port(), tmp_path / "two.json"
    procs = [subprocess.Popen([sys.executable, "-m", "tests.train.two_process_toy", str(out)], cwd=REPO,
                              env=_env(4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        texts = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:  # a process left waiting for its peer (the other failed to start) is ended here
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [t[-2000:] for t in texts]
    assert json.loads(out.read_text()) == runs["data4_fsdp2"][1]  # two_process_toy.MESH, one process


def test_per_shard_rules_leave_the_batch_axes_to_the_shard_map():
    used = {a for _, target in sh.PER_SHARD_AXIS_RULES if target is not None
            for a in ((target,) if isinstance(target, str) else target)}
    assert used == {"tensor"}
    assert [name for name, _ in sh.PER_SHARD_AXIS_RULES] == [name for name, _ in sh.LOGICAL_AXIS_RULES]


def test_flag_is_validated():
    with pytest.raises(ValueError, match="train.deterministic_reductions"):
        TrainConfig(deterministic_reductions="yes")


def test_resume_notes_a_changed_reduction_order():
    from grn_jax.train.loop import _check_resume_config

    base = {"model": {"d_model": 8}, "train": {"batch_size": 8, "deterministic_reductions": False}}
    notes = []
    _check_resume_config(base, base, 3, notes.append)
    assert notes == []
    on = {"model": {"d_model": 8}, "train": {"batch_size": 8, "deterministic_reductions": True}}
    _check_resume_config(base, on, 3, notes.append)
    assert len(notes) == 1 and "deterministic_reductions changed since checkpoint step 3 (False -> True)" in notes[0]
