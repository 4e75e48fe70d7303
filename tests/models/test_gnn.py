"""Neighbour sampling and GraphSAGE/GCN/GIN layers against hand-computed aggregations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.models import GNNLayer
from grn_jax.models import sample_neighbors as _sample_neighbors
from grn_jax.models import undirected_edges as _undirected_edges
from grn_jax.models.sampling import fixed_seeds
from grn_jax.testing import assert_allclose

# jitted: one compiled program per shape instead of hundreds of eager dispatches
sample_neighbors = jax.jit(_sample_neighbors, static_argnums=5)
undirected_edges = jax.jit(_undirected_edges)

S = 8
# one cell: positions 1..5 are genes, 6..7 padding, 0 is CLS
NODE_MASK = np.array([[False, True, True, True, True, True, False, False]])
GENES = np.array([[2, 10, 11, 12, 13, 14, 0, 0]], np.int32)
#            1->2   2->1 (reciprocal)  1->3  3->3 (self)  masked  4->6 (padding)  5->1
SND = np.array([[1, 2, 1, 3, 4, 4, 5]], np.int32)
RCV = np.array([[2, 1, 3, 3, 5, 6, 1]], np.int32)
MSK = np.array([[True, True, True, True, False, True, True]])
# undirected neighbour sets over positions (self-loop, masked slot and padding edge gone)
NEIGHBOURS = {1: {2, 3, 5}, 2: {1}, 3: {1}, 4: set(), 5: {1}}


def _und():
    return undirected_edges(jnp.asarray(SND), jnp.asarray(RCV), jnp.asarray(MSK), jnp.asarray(NODE_MASK))


def test_undirected_edges_symmetrise_dedupe_and_drop_invalid():
    snd, rcv, ok = (np.asarray(x)[0] for x in _und())
    pairs = sorted(zip(rcv[ok].tolist(), snd[ok].tolist()))
    want = sorted((v, u) for v, nb in NEIGHBOURS.items() for u in nb)
    assert pairs == want


def test_sampling_with_large_fanout_returns_every_neighbour():
    snd, rcv, ok = _und()
    nbr, m = sample_neighbors(snd, rcv, ok, jnp.asarray(GENES), fixed_seeds(0, 1, 1)[0], fanout=4)
    nbr, m = np.asarray(nbr)[0], np.asarray(m)[0]
    for v in range(S):
        assert set(nbr[v][m[v]].tolist()) == NEIGHBOURS.get(v, set())
        assert m[v].sum() == len(NEIGHBOURS.get(v, set()))
        assert list(m[v]) == sorted(m[v], reverse=True)  # valid entries first


def _hub_cell(copies, degree=6, num_edges=12):
    """`copies` identical cells: hub at position 1 linked to positions 2..degree+1 (padded edge slots)."""
    snd = np.zeros((copies, num_edges), np.int32)
    rcv = np.zeros((copies, num_edges), np.int32)
    msk = np.zeros((copies, num_edges), bool)
    snd[:, :degree] = 1
    rcv[:, :degree] = np.arange(2, degree + 2)
    msk[:, :degree] = True
    s = degree + 4
    node = np.zeros((copies, s), bool)
    node[:, 1: degree + 2] = True
    genes = np.zeros((copies, s), np.int32)
    genes[:, 1: degree + 2] = 100 + np.arange(degree + 1)
    return snd, rcv, msk, node, genes


def test_sampling_respects_fanout_never_picks_padding_and_is_uniform():
    copies, degree, fanout = 3000, 6, 2
    snd, rcv, msk, node, genes = _hub_cell(copies, degree)
    und = undirected_edges(jnp.asarray(snd), jnp.asarray(rcv), jnp.asarray(msk), jnp.asarray(node))
    seeds = jax.random.bits(jax.random.key(0), (copies,), jnp.uint32)
    nbr, m = (np.asarray(x) for x in sample_neighbors(*und, jnp.asarray(genes), seeds, fanout))
    hub_nbr, hub_m = nbr[:, 1], m[:, 1]
    assert hub_m.all()  # exactly `fanout` picks for the hub
    assert (hub_nbr[:, 0] != hub_nbr[:, 1]).all()  # without replacement
    assert set(np.unique(hub_nbr).tolist()) == set(range(2, degree + 2))  # only real neighbours
    # leaves (degree 1) keep their single neighbour, the hub; padding rows get nothing
    assert (m[:, 2: degree + 2].sum(-1) == 1).all() and (nbr[:, 2: degree + 2, 0] == 1).all()
    assert not m[:, degree + 2:].any() and not m[:, 0].any()
    # uniform: each neighbour is picked with probability fanout/degree
    freq = np.bincount(hub_nbr.ravel(), minlength=degree + 2)[2:] / copies
    p = fanout / degree
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / copies)), freq


def test_sample_depends_on_genes_not_slots_or_padding():
    snd, rcv, msk, node, genes = _hub_cell(1, degree=6, num_edges=8)
    seed = jnp.asarray([12345], jnp.uint32)
    a = sample_neighbors(*undirected_edges(snd, rcv, msk, node), genes, seed, 3)
    order = np.random.default_rng(0).permutation(8)  # shuffle edge slots, add more padding slots
    pad = lambda x, v: np.concatenate([x[:, order], np.full((1, 5), v, x.dtype)], axis=1)  # noqa: E731
    b = sample_neighbors(*undirected_edges(pad(snd, 0), pad(rcv, 0), pad(msk, False), node), genes, seed, 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _features(f=3, seed=0):
    return np.random.default_rng(seed).normal(size=(1, S, f)).astype(np.float32)


def _apply_layer(kind, aggregator="mean", fanout=4, f=3):
    layer = GNNLayer(kind, features=f, aggregator=aggregator, fanout=fanout)
    h = jnp.asarray(_features(f))
    edges = (*_und(), jnp.asarray(GENES))
    seed = fixed_seeds(0, 1, 1)[0]
    variables = jax.jit(layer.init)(jax.random.key(1), h, edges, seed)
    out, _ = jax.jit(layer.apply)(variables, h, edges, seed)
    return np.asarray(out)[0], jax.tree.map(np.asarray, jax.tree.map(lambda x: x, variables["params"]))


def _p(params, *path):
    x = params
    for k in path:
        x = x[k]
    return np.asarray(getattr(x, "value", x), np.float64)


@pytest.mark.parametrize("aggregator", ["mean", "max"])
def test_graphsage_matches_hand_computed_aggregation(aggregator):
    out, params = _apply_layer("sage", aggregator)
    h = _features()[0].astype(np.float64)
    w, b = _p(params, "w", "kernel"), _p(params, "w", "bias")
    for v in range(S):
        nb = sorted(NEIGHBOURS.get(v, set()))
        if not nb:
            agg = np.zeros(3)
        elif aggregator == "mean":
            agg = h[nb].mean(0)
        else:
            agg = h[nb].max(0)
        want = np.maximum(np.concatenate([h[v], agg]) @ w + b, 0)
        assert_allclose(out[v], want, jnp.float32, err_msg=f"node {v}")


def test_gcn_matches_dense_symmetric_normalisation():
    out, params = _apply_layer("gcn")
    h = _features()[0].astype(np.float64)
    a = np.eye(S)
    for v, nb in NEIGHBOURS.items():
        for u in nb:
            a[v, u] = 1.0
    d = a.sum(1)
    a_hat = a / np.sqrt(d[:, None] * d[None, :])
    want = np.maximum(a_hat @ (h @ _p(params, "w", "kernel") + _p(params, "w", "bias")), 0)
    assert_allclose(out, want, jnp.float32)


def test_gin_matches_hand_computed_sum_aggregation():
    out, params = _apply_layer("gin")
    h = _features()[0].astype(np.float64)
    eps = float(_p(params, "eps"))
    for v in range(S):
        z = (1 + eps) * h[v] + sum((h[u] for u in NEIGHBOURS.get(v, set())), np.zeros(3))
        z = np.maximum(z @ _p(params, "mlp_in", "kernel") + _p(params, "mlp_in", "bias"), 0)
        want = np.maximum(z @ _p(params, "mlp_out", "kernel") + _p(params, "mlp_out", "bias"), 0)
        assert_allclose(out[v], want, jnp.float32, err_msg=f"node {v}")
