"""train.deterministic_reductions: the batch-shard sum in one fixed order, so the layout cannot change a bit.

Two layouts of 8 devices with the same data x fsdp product that a plain all-reduce sums in different
orders (fsdp 2 vs 4, the devices permuted): with the flag the step's loss, gradient norm and new
parameters, and the eval sums, are bitwise equal, and the compiled step holds no all-reduce at all
(tensor = 1: only all-gathers, which do no arithmetic). The two-process case is
tests/train/test_multihost_resume.py (slow).
"""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from grn_jax.train import sharding as sh
from grn_jax.train.config import TrainConfig
from grn_jax.train.optim import make_optimizer
from grn_jax.train.state import init_sharded_state
from grn_jax.train.step import jit_eval_step, jit_train_step, make_eval_step, make_train_step
from tests.train import toy

PERMUTED = [3, 6, 0, 5, 7, 1, 4, 2]
LAYOUTS = {"data4_fsdp2": ((4, 2, 1), None), "data2_fsdp4_permuted": ((2, 4, 1), PERMUTED)}


def _compiled_steps(shape, order, deterministic: bool):
    cfg = TrainConfig(steps=10, batch_size=16, grad_accum=2, deterministic_reductions=deterministic)  # clip on
    batch = toy.toy_batch(16, seq=8)
    devices = np.asarray(jax.devices()[:8], dtype=object)
    mesh = Mesh((devices if order is None else devices[order]).reshape(shape), sh.MESH_AXES)
    model, tx = toy.ToyModel(), make_optimizer(cfg)
    init = init_sharded_state(toy.toy_init(model, batch), tx, mesh, jax.random.key(0))
    gb = sh.global_batch(batch, mesh)
    train = jit_train_step(make_train_step(toy.toy_apply(model), toy.toy_mask(), tx, cfg), init.shardings, batch,
                           mesh).lower(init.state, gb).compile()
    evaluate = jit_eval_step(make_eval_step(toy.toy_apply(model), toy.toy_mask(), cfg), init.shardings.params,
                             batch, mesh)
    return init.state, gb, train, evaluate


def _two_steps(shape, order):
    state, gb, train, evaluate = _compiled_steps(shape, order, True)
    hlo = train.as_text()
    metrics = []
    for _ in range(2):
        state, m = train(state, gb)
        metrics.append(jax.device_get(m))
    return jax.device_get(state.params), metrics, jax.device_get(evaluate(state.params, gb, np.int32(0))), hlo


@pytest.fixture(scope="module")
def runs():
    return {name: _two_steps(*layout) for name, layout in LAYOUTS.items()}


def test_step_is_bitwise_equal_across_layouts(runs):
    (p_a, m_a, e_a, _), (p_b, m_b, e_b, _) = runs.values()
    for step, (a, b) in enumerate(zip(m_a, m_b)):
        assert bool(a["finite"]) and float(a["n_masked"]) > 0
        for k in ("loss", "grad_norm", "accuracy", "n_masked"):
            assert np.array_equal(a[k], b[k]), (step, k, a[k], b[k])
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
    _, _, plain, _ = _compiled_steps((4, 2, 1), None, False)  # the default step all-reduces its gradients
    assert "all-reduce" in plain.as_text()


def test_per_shard_rules_leave_the_batch_axes_to_the_shard_map():
    used = {a for _, target in sh.PER_SHARD_AXIS_RULES if target is not None
            for a in ((target,) if isinstance(target, str) else target)}
    assert used == {"tensor"}
    assert [name for name, _ in sh.PER_SHARD_AXIS_RULES] == [name for name, _ in sh.LOGICAL_AXIS_RULES]


def test_flag_is_validated():
    with pytest.raises(ValueError, match="train.deterministic_reductions"):
        TrainConfig(deterministic_reductions="yes")
