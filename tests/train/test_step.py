"""The compiled step: k accumulated micro-batches equal one big batch; the NaN guard never writes garbage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.testing import assert_allclose
from grn_jax.train import losses
from grn_jax.train import sharding as sh
from grn_jax.train.config import MeshConfig, OptimConfig, TrainConfig
from grn_jax.train.optim import make_optimizer
from grn_jax.train.state import init_sharded_state
from grn_jax.train.step import jit_train_step, make_train_step
from tests.train import toy


# A large first update that is a smooth function of the gradient (eps >> |g| makes Adam's first step
# lr * g / (|g| + eps) rather than lr * sign(g)), so parameter comparisons are meaningful.
SMOOTH = OptimConfig(peak_lr=0.1, warmup_fraction=0.0, eps=1.0, weight_decay=0.0)


def _setup(cfg, batch, mesh_shape=(1, 1, 1)):
    model = toy.ToyModel()
    tx = make_optimizer(cfg)
    mesh = sh.make_mesh(MeshConfig(*mesh_shape), jax.devices()[: int(np.prod(mesh_shape))])
    init = init_sharded_state(toy.toy_init(model, batch), tx, mesh, jax.random.key(0))
    step = jit_train_step(make_train_step(toy.toy_apply(model), toy.toy_mask(), tx, cfg), init.shardings, batch,
                          mesh)
    return init, step, mesh


def test_masked_cross_entropy_against_hand_computation():
    logits = jnp.array([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]]])
    targets = jnp.array([[0, 2, 1]])
    mask = jnp.array([[True, True, False]])
    total, count = losses.masked_bin_cross_entropy(logits, targets, mask)
    want = (-np.log(np.exp(2) / (np.exp(2) + 2))) + (-np.log(1 / (np.e + 2)))
    assert_allclose(total, want, np.float32)
    assert float(count) == 2.0
    assert float(losses.masked_bin_correct(logits, targets, mask)) == 1.0


@pytest.fixture(scope="module")
def big_step():
    """One compiled single-device step (no accumulation), shared by the tests below."""
    batch = toy.toy_batch(8, seed=3)
    cfg = TrainConfig(steps=10, batch_size=8, grad_accum=1, optim=SMOOTH)
    init, step, mesh = _setup(cfg, batch)
    return cfg, batch, step, mesh


def test_grad_accumulation_equals_one_big_batch(big_step):
    big, batch, step_a, mesh = big_step
    acc = TrainConfig(steps=10, batch_size=8, grad_accum=4, optim=SMOOTH)
    init_a = init_sharded_state(toy.toy_init(toy.ToyModel(), batch), make_optimizer(big), mesh, jax.random.key(0))
    init_b, step_b, _ = _setup(acc, batch)
    w1_before = np.asarray(init_a.state.params["w1"])  # the step donates (deletes) its input state
    sa, ma = step_a(init_a.state, sh.global_batch(batch, mesh))
    sb, mb = step_b(init_b.state, sh.global_batch(batch, mesh))
    assert_allclose(mb["loss"], ma["loss"], np.float32, err_msg="loss")
    assert_allclose(mb["grad_norm"], ma["grad_norm"], np.float32, err_msg="grad norm")
    assert float(mb["n_masked"]) == float(ma["n_masked"]) > 0
    pa, pb = jax.device_get(sa.params), jax.device_get(sb.params)
    for name in pa:
        assert_allclose(pb[name], pa[name], np.float32, err_msg=name)
    # and the step really changed the parameters
    assert not np.allclose(pa["w1"], w1_before)


def test_non_finite_step_leaves_state_untouched(big_step):
    cfg, batch, step, mesh = big_step
    state = init_sharded_state(toy.toy_init(toy.ToyModel(), batch), make_optimizer(cfg), mesh,
                               jax.random.key(0)).state
    params = dict(state.params)
    params["wout"] = params["wout"].at[0, 0].set(jnp.nan)
    bad = state.replace(params=params)
    before = jax.device_get(bad)
    new, m = step(bad, sh.global_batch(batch, mesh))
    assert not bool(m["finite"])
    assert int(new.step) == int(before.step) == 0
    after = jax.device_get(new)
    for a, b in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before)):
        np.testing.assert_array_equal(a, b)
