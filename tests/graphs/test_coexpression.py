"""Co-expression graph and edge perturbation: exact counts, endpoints, padding, jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.graphs import coexpression_adjacency, expressed_positions, num_replaced, perturb_edges
from grn_jax.types import BinSpec, GraphBatch, TokenBatch

B, S, E = 4, 12, 16
_perturb = jax.jit(perturb_edges, static_argnames=("alpha", "mode"))


def _toy():
    rng = np.random.default_rng(0)
    n_edges = np.array([5, 16, 10, 0])  # 5 -> 1 replaced, 16 -> 3, 10 -> 2, 0 -> 0
    edge_mask = np.arange(E)[None, :] < n_edges[:, None]
    senders = np.where(edge_mask, rng.integers(1, S, (B, E)), 0).astype(np.int32)
    receivers = np.where(edge_mask, rng.integers(1, S, (B, E)), 0).astype(np.int32)
    weights = np.where(edge_mask, rng.uniform(0.5, 2.0, (B, E)), 0).astype(np.float32)
    graph = GraphBatch(jnp.asarray(senders), jnp.asarray(receivers), jnp.asarray(weights), jnp.asarray(edge_mask))
    lengths = np.array([9, 12, 6, 12])
    token_mask = np.arange(S)[None, :] < lengths[:, None]
    expressed = token_mask & (rng.random((B, S)) < 0.5)
    expressed[:, 0] = True  # CLS must be ignored even if flagged
    expressed[2, :] = False
    expressed[2, [0, 3]] = True  # only one real expressed gene: no co-expression pair possible
    return graph, jnp.asarray(token_mask), jnp.asarray(expressed)


def test_coexpression_adjacency_is_eq3():
    ex = jnp.array([[True, True, False, True, True]])
    adj = np.asarray(coexpression_adjacency(ex))[0]
    want = np.zeros((5, 5), bool)
    for u in (1, 3, 4):
        for v in (1, 3, 4):
            want[u, v] = u != v
    np.testing.assert_array_equal(adj, want)


def test_exact_replaced_count_and_endpoints():
    graph, token_mask, expressed = _toy()
    out = _perturb(jax.random.key(1), graph, token_mask, expressed, alpha=0.2)
    changed = np.asarray((out.senders != graph.senders) | (out.receivers != graph.receivers))
    m = np.asarray(num_replaced(graph, expressed & token_mask, 0.2))
    np.testing.assert_array_equal(m, [1, 3, 0, 0])  # floor(0.2*5), floor(0.2*16), cell 2 has one expressed gene
    # a replaced slot may by chance redraw its old pair; count slots with a new draw instead
    assert np.all(changed.sum(1) <= m)
    ex = np.asarray(expressed)
    adj = np.asarray(coexpression_adjacency(expressed & token_mask))
    s, r = np.asarray(out.senders), np.asarray(out.receivers)
    for b in range(B):
        for j in np.flatnonzero(changed[b]):
            assert adj[b, s[b, j], r[b, j]], (b, j)  # every new edge is in G_co of its cell
            assert ex[b, s[b, j]] and s[b, j] >= 1 and s[b, j] != r[b, j]
    np.testing.assert_array_equal(np.asarray(out.edge_mask), np.asarray(graph.edge_mask))
    np.testing.assert_array_equal(np.asarray(out.weights), np.asarray(graph.weights))
    pad = ~np.asarray(graph.edge_mask)
    np.testing.assert_array_equal(s[pad], np.asarray(graph.senders)[pad])  # padding untouched


def test_count_over_many_keys_is_exact():
    # Mark replaced slots by giving the candidate set positions disjoint from all original endpoints.
    b, s_len, e = 3, 10, 20
    n_edges = np.array([20, 7, 13])
    edge_mask = np.arange(e)[None, :] < n_edges[:, None]
    graph = GraphBatch(jnp.full((b, e), 1, jnp.int32), jnp.full((b, e), 2, jnp.int32),
                       jnp.ones((b, e), jnp.float32), jnp.asarray(edge_mask))
    expressed = jnp.asarray(np.tile(np.arange(s_len) >= 5, (b, 1)))
    token_mask = jnp.ones((b, s_len), bool)
    for alpha, want in ((0.2, [4, 1, 2]), (0.7, [14, 4, 9])):  # 0.7 * 7 = 4.9 -> 4, 0.7 * 20 = 14 exactly
        for seed in range(3):
            out = _perturb(jax.random.key(seed), graph, token_mask, expressed, alpha=alpha)
            new = np.asarray(out.senders) >= 5
            np.testing.assert_array_equal(new.sum(1), want, err_msg=f"alpha={alpha}")
            assert np.all(np.asarray(out.receivers)[new] >= 5)


def test_random_mode_uses_all_gene_tokens():
    b, s_len, e = 2, 10, 50
    edge_mask = jnp.ones((b, e), bool)
    graph = GraphBatch(jnp.full((b, e), 1, jnp.int32), jnp.full((b, e), 2, jnp.int32),
                       jnp.ones((b, e), jnp.float32), edge_mask)
    token_mask = jnp.asarray(np.arange(s_len)[None, :] < np.array([[10], [6]]))
    expressed = jnp.zeros((b, s_len), bool)  # random mode ignores expression
    out = _perturb(jax.random.key(3), graph, token_mask, expressed, alpha=1.0, mode="random")
    s, r = np.asarray(out.senders), np.asarray(out.receivers)
    assert np.all(s != r) and s.min() >= 1 and r.min() >= 1
    assert s[1].max() <= 5 and r[1].max() <= 5  # only the cell's own tokens
    assert len(np.unique(s[0])) >= 6  # spreads over the tokens
    # co-expression mode with nothing expressed replaces nothing
    same = _perturb(jax.random.key(3), graph, token_mask, expressed, alpha=1.0)
    np.testing.assert_array_equal(np.asarray(same.senders), np.asarray(graph.senders))


def test_pairs_uniform_over_coexpression_pairs():
    # 3 expressed genes -> 6 ordered pairs, each with probability 1/6.
    e = 3000
    graph = GraphBatch(jnp.zeros((1, e), jnp.int32), jnp.zeros((1, e), jnp.int32),
                       jnp.ones((1, e), jnp.float32), jnp.ones((1, e), bool))
    expressed = jnp.asarray([[False, True, False, True, True, False]])
    out = _perturb(jax.random.key(5), graph, jnp.ones((1, 6), bool), expressed, alpha=1.0)
    pairs = np.asarray(out.senders)[0] * 10 + np.asarray(out.receivers)[0]
    vals, counts = np.unique(pairs, return_counts=True)
    np.testing.assert_array_equal(vals, [13, 14, 31, 34, 41, 43])
    # binomial sd of a 1/6 frequency over 3000 draws is 0.0068; allow 4 sd
    assert np.all(np.abs(counts / e - 1 / 6) < 4 * np.sqrt(1 / 6 * 5 / 6 / e))


def test_vmap_per_cell_matches_batch_rule():
    graph, token_mask, expressed = _toy()

    def one(key, s, r, w, m, tm, ex):
        g = GraphBatch(s[None], r[None], w[None], m[None])
        return perturb_edges(key, g, tm[None], ex[None]).senders[0]

    keys = jax.random.split(jax.random.key(0), B)
    out = jax.jit(jax.vmap(one))(keys, graph.senders, graph.receivers, graph.weights, graph.edge_mask,
                                 token_mask, expressed)
    changed = np.asarray(out != graph.senders)
    m = np.asarray(num_replaced(graph, expressed & token_mask, 0.2))
    assert np.all(changed.sum(1) <= m)


def test_expressed_positions_ignores_masked_positions():
    spec = BinSpec(n_bins=5)
    bins = jnp.array([[spec.cls_id, 3, spec.mask_id, 0, spec.pad_id]], jnp.int32)
    targets = jnp.array([[0, 0, 2, 0, 0]], jnp.int32)
    loss_mask = jnp.array([[False, False, True, False, False]])
    token_mask = jnp.array([[True, True, True, True, False]])
    g = GraphBatch(*(jnp.zeros((1, 1), d) for d in (jnp.int32, jnp.int32, jnp.float32, bool)))
    batch = TokenBatch(gene_ids=jnp.array([[2, 5, 6, 7, 0]], jnp.int32), bins=bins, targets=targets,
                       loss_mask=loss_mask, token_mask=token_mask, graph=g)
    # the masked position (true bin 2) is not visible as expressed: no MLM target leaks into G_co
    np.testing.assert_array_equal(np.asarray(expressed_positions(batch, spec)), [[False, True, False, False, False]])


def test_bad_arguments():
    graph, token_mask, expressed = _toy()
    with pytest.raises(ValueError, match="mode"):
        perturb_edges(jax.random.key(0), graph, token_mask, expressed, mode="knn")
    with pytest.raises(ValueError, match="alpha"):
        perturb_edges(jax.random.key(0), graph, token_mask, expressed, alpha=1.5)


def test_cell_result_independent_of_batch_mates():
    graph, token_mask, expressed = _toy()
    out = _perturb(jax.random.key(9), graph, token_mask, expressed, alpha=0.2)
    # change everything about cells 0, 2 and 3; cell 1 keeps its row position
    other = GraphBatch(graph.senders.at[jnp.array([0, 2, 3])].set(3), graph.receivers.at[jnp.array([0, 2, 3])].set(4),
                       graph.weights, graph.edge_mask.at[jnp.array([0, 2, 3])].set(True))
    ex2 = expressed.at[jnp.array([0, 2, 3])].set(True)
    out2 = _perturb(jax.random.key(9), other, token_mask, ex2, alpha=0.2)
    np.testing.assert_array_equal(np.asarray(out2.senders[1]), np.asarray(out.senders[1]))
    np.testing.assert_array_equal(np.asarray(out2.receivers[1]), np.asarray(out.receivers[1]))
