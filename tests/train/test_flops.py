"""FLOPs counted from the traced step: loops (layers, micro-batches, Chebyshev terms) times their trip count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from grn_jax import _compat
from grn_jax.models.config import tiny
from grn_jax.train.config import TrainConfig
from grn_jax.train.data import abstract_local_batch, mask_bins
from grn_jax.train.flops import count_flops
from grn_jax.train.model_fns import model_fns
from grn_jax.train.optim import make_optimizer
from grn_jax.train.state import _init_state
from grn_jax.train.step import make_train_step

S, E = 16, 24


def _step_flops(batch_size=8, grad_accum=1, **model):
    mc = tiny(**{"n_layers": 2, "attention": "vanilla", **model})
    t = TrainConfig(steps=4, batch_size=batch_size, grad_accum=grad_accum)
    _, init_params, apply_fn = model_fns(mc)
    tx = make_optimizer(t)
    state = jax.eval_shape(lambda r: _init_state(init_params, tx, r), jax.random.key(0))

    def mask_fn(key, b):
        return mask_bins(key, b.tokens, 0.3, mc.bin_spec, cell_ids=b.cell_index)

    batch = abstract_local_batch(mc, batch_size, S, E)
    return mc, count_flops(make_train_step(apply_fn, mask_fn, tx, t), state, batch)


def test_counts_scan_and_fori_loop_bodies_times_their_length():
    w = jnp.ones((8, 8))

    def f(x):
        x, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=3)
        return jax.lax.fori_loop(0, 2, lambda i, c: c @ w, x)

    c = count_flops(f, jnp.ones((4, 8)))
    assert c.dot == 5 * 2 * 4 * 8 * 8  # 5 products of [4, 8] x [8, 8]
    assert c.other == 3 * 4 * 8 + 2  # tanh, and the fori_loop counter increment per iteration
    assert c.uncounted == {}
    # reverse mode: dx only -> one extra product per forward one
    assert count_flops(jax.grad(lambda x: f(x).sum()), jnp.ones((4, 8))).dot == 10 * 2 * 4 * 8 * 8


def test_layers_count_linearly_with_the_hand_formula():
    mc, two = _step_flops(n_layers=2)
    _, four = _step_flops(n_layers=4)
    b, d, m = 8, mc.d_model, mc.mlp_dim
    # per layer and token: q, k, v, out projections 8 D^2; scores + weighted sum 4 S D; MLP 4 D M;
    # the train step is forward + backward = 3x the forward products
    per_layer = 3 * b * S * (8 * d * d + 4 * S * d + 4 * d * m)
    assert four.dot - two.dot == 2 * per_layer
    assert four.total / two.total == pytest.approx(2.0, rel=0.25)  # ~2x: embeddings and heads are shared


def test_grad_accum_counts_every_micro_batch():
    _, one = _step_flops(batch_size=8, grad_accum=1)
    _, two_micro = _step_flops(batch_size=16, grad_accum=2)
    _, big = _step_flops(batch_size=16, grad_accum=1)
    assert two_micro.dot == 2 * one.dot  # two micro-batches of 8 cells: twice one step of 8
    assert two_micro.dot == big.dot  # the same cells in one batch: the same products


def test_chebyshev_terms_are_counted():
    costs = [_step_flops(n_layers=1, attention="diffusion", diffusion_order=k)[1] for k in (4, 8, 12)]
    assert costs[1].total > costs[0].total
    # every Chebyshev term costs the same (forward and backward): linear in the order
    assert costs[2].dot - costs[1].dot == costs[1].dot - costs[0].dot
    assert costs[2].other - costs[1].other == costs[1].other - costs[0].other
    assert all(c.uncounted == {} for c in costs)  # the XLA path is traced, not the native kernel


def test_shard_map_body_counts_once_per_shard_of_its_manual_axes():
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("a", "b"))
    x, w = jax.ShapeDtypeStruct((16, 8), jnp.float32), jax.ShapeDtypeStruct((8, 5), jnp.float32)
    whole = count_flops(lambda x, w: x @ w, x, w).dot
    assert whole == 2 * 16 * 8 * 5
    over_a = _compat.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(P("a"), P()), out_specs=P("a"),
                               axis_names={"a"})  # body [4, 8] @ [8, 5], 4 shards
    assert count_flops(over_a, x, w).dot == whole
    over_both = _compat.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(P(("a", "b")), P()),
                                  out_specs=P(("a", "b")))
    assert count_flops(over_both, x, w).dot == whole
