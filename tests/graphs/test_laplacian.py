"""Normalised Laplacian: symmetrisation, self-loops, isolated/padding nodes, validation.

Oracle: a dense numpy construction written straight from DESIGN.md's convention
(A = W + W^T with duplicate weights summed, self-loops removed, L = I - D^-1/2 A D^-1/2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.graphs import graph_report, normalized_laplacian
from grn_jax.testing import assert_allclose
from grn_jax.types import GraphBatch


def random_graph_batch(rng, batch, num_nodes, num_edges, *, n_real=None, dtype=np.float32, first_node=1):
    """Directed, weighted edge lists over positions [first_node, n_real[b]) with masked slots,
    self-loops, duplicates and (by construction) isolated nodes and several components."""
    if n_real is None:
        n_real = [num_nodes] * batch
    s = np.zeros((batch, num_edges), np.int32)
    r = np.zeros((batch, num_edges), np.int32)
    w = np.zeros((batch, num_edges), dtype)
    m = np.zeros((batch, num_edges), bool)
    for b in range(batch):
        hi = n_real[b]
        # leave the top ~third of the real nodes untouched -> isolated nodes
        span = max(first_node + 2, first_node + (2 * (hi - first_node)) // 3)
        n_e = int(rng.integers(num_edges // 2, num_edges + 1))
        s[b, :n_e] = rng.integers(first_node, span, n_e)
        r[b, :n_e] = rng.integers(first_node, span, n_e)
        w[b, :n_e] = rng.uniform(0.05, 2.0, n_e)
        m[b, :n_e] = True
        if n_e >= 4:  # a duplicate and a self-loop for good measure
            s[b, 1], r[b, 1] = s[b, 0], r[b, 0]
            r[b, 2] = s[b, 2]
    return s, r, w, m


def laplacian_oracle(s, r, w, m, num_nodes):
    """Dense float64 [B, S, S] Laplacian from the written convention."""
    out = []
    for b in range(s.shape[0]):
        a = np.zeros((num_nodes, num_nodes))
        for e in range(s.shape[1]):
            if m[b, e] and s[b, e] != r[b, e]:
                a[s[b, e], r[b, e]] += w[b, e]
                a[r[b, e], s[b, e]] += w[b, e]
        d = a.sum(1)
        inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
        out.append(np.eye(num_nodes) - inv[:, None] * a * inv[None, :])
    return np.stack(out)


def test_hand_computed_toy():
    # path 1-2-3 with weights 1 (one way) and 3 (given both ways as 1 + 2), a self-loop on 2,
    # a masked slot, node 4 isolated, node 0 (CLS) untouched.
    s = np.array([[1, 2, 3, 2, 0]], np.int32)
    r = np.array([[2, 3, 2, 2, 4]], np.int32)
    w = np.array([[1.0, 1.0, 2.0, 5.0, 7.0]], np.float32)
    m = np.array([[True, True, True, True, False]])
    lap = np.asarray(normalized_laplacian(s, r, w, m, 5).todense())[0]
    # A: A12 = 1, A23 = 1 + 2 = 3; degrees d1 = 1, d2 = 4, d3 = 3.
    want = np.eye(5)
    want[1, 2] = want[2, 1] = -1 / np.sqrt(1 * 4)
    want[2, 3] = want[3, 2] = -3 / np.sqrt(4 * 3)
    assert_allclose(lap, want, np.float32)
    assert lap[0, 0] == 1.0 and lap[4, 4] == 1.0  # isolated / padding: L_ii = 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_oracle_on_random_graphs(dtype):
    rng = np.random.default_rng(0)
    s, r, w, m = random_graph_batch(rng, 3, 14, 24, n_real=[14, 10, 6], dtype=dtype)
    with jax.enable_x64(dtype == np.float64):
        lap = normalized_laplacian(s, r, w, m, 14)
        assert lap.shape == (3, 14, 14) and lap.n_batch == 1 and lap.nse == 2 * 24 + 14
        assert lap.data.dtype == dtype
        dense = np.asarray(lap.todense())
    assert_allclose(dense, laplacian_oracle(s, r, w, m, 14), dtype)
    evals = np.linalg.eigvalsh(dense.astype(np.float64))
    assert evals.min() > -1e-5 and evals.max() < 2 + 1e-5


def test_one_way_edges_get_true_degrees():
    """Public GREmLN defect: degrees from sources only give target-only nodes degree 1e-8.
    Here a star given one way (hub -> leaves) equals the star given the other way."""
    s = np.array([[1, 1, 1, 1]], np.int32)
    r = np.array([[2, 3, 4, 5]], np.int32)
    w = np.ones((1, 4), np.float32)
    m = np.ones((1, 4), bool)
    fwd = np.asarray(normalized_laplacian(s, r, w, m, 6).todense())
    bwd = np.asarray(normalized_laplacian(r, s, w, m, 6).todense())
    both = np.asarray(normalized_laplacian(np.concatenate([s, r], 1), np.concatenate([r, s], 1),
                                           np.concatenate([w, w], 1) / 2, np.concatenate([m, m], 1), 6).todense())
    assert_allclose(fwd, bwd, np.float32)
    assert_allclose(fwd, both, np.float32)
    # leaves have degree 1, hub degree 4: L_1j = -1/2 and the spectrum is {0, 1, 1, 1, 2} + isolated 0 -> 1
    assert_allclose(fwd[0, 1, 2:6], -0.5 * np.ones(4), np.float32)
    assert_allclose(np.linalg.eigvalsh(fwd[0, 1:, 1:].astype(np.float64)), [0, 1, 1, 1, 2], np.float32)


def test_graph_batch_input_jit_and_vmap():
    rng = np.random.default_rng(1)
    s, r, w, m = random_graph_batch(rng, 2, 9, 12)
    ref = normalized_laplacian(s, r, w, m, 9)
    assert_allclose(ref.todense(), laplacian_oracle(s, r, w, m, 9), np.float32)
    g = GraphBatch(senders=s, receivers=r, weights=w, edge_mask=m)
    via_graph = normalized_laplacian(g, num_nodes=9)
    jitted = jax.jit(lambda g: normalized_laplacian(g, num_nodes=9))(g)
    # vmap over an outer axis (e.g. two GRN scales stacked)
    stacked = jax.vmap(lambda a, b, c, d: normalized_laplacian(a, b, c, d, 9))(
        *(jnp.stack([x, x]) for x in (s, r, w, m)))
    for other in (via_graph, jitted, jax.tree.map(lambda x: x[1], stacked)):
        np.testing.assert_array_equal(np.asarray(other.indices), np.asarray(ref.indices))
        assert_allclose(other.data, ref.data, np.float32)


def test_argument_errors():
    s = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match="receivers has shape"):
        normalized_laplacian(s, np.zeros((2, 4), np.int32), np.zeros((2, 3)), np.ones((2, 3), bool), 4)
    with pytest.raises(ValueError, match="num_nodes"):
        normalized_laplacian(s, s, np.zeros((2, 3)), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="integer"):
        normalized_laplacian(s.astype(np.float32), s, np.zeros((2, 3)), np.ones((2, 3), bool), 4)


def test_graph_report_counts_and_errors():
    s = np.array([[1, 1, 2, 3, 0], [1, 2, 1, 1, 0]], np.int32)
    r = np.array([[2, 2, 1, 3, 0], [2, 1, 2, 1, 0]], np.int32)
    w = np.array([[1, 1, 1, 1, 0], [1, 0, 1, 1, 0]], np.float32)
    m = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], bool)
    rep = graph_report(s, r, w, m, 5)
    assert rep["edges"] == 8 and rep["masked_slots"] == 2 and rep["self_loops"] == 2
    assert rep["duplicate_edges"] == 2  # (1,2) twice in cell 0 and in cell 1
    assert rep["reciprocal_pairs"] == 2  # 1<->2 in both cells
    assert rep["zero_weight"] == 1
    assert rep["isolated_nodes"] == [3, 3]  # nodes 0, 3 (only a self-loop), 4; cell 1: the 2->1 edge has weight 0
    with pytest.raises(ValueError, match=r"receivers\[cell 0, edge 1\] = 9 is outside \[0, 5\)"):
        graph_report(s, np.where(np.arange(5) == 1, 9, r), w, m, 5)
    with pytest.raises(ValueError, match=r"weights\[cell 1, edge 0\] = -1.0 is negative"):
        graph_report(s, r, np.where([[0] * 5, [1, 0, 0, 0, 0]], -1.0, w), m, 5)
    with pytest.raises(ValueError, match=r"weights\[cell 0, edge 2\] = nan is not finite"):
        graph_report(s, r, np.where([[0, 0, 1, 0, 0], [0] * 5], np.nan, w), m, 5)
    node_mask = np.array([[0, 1, 1, 1, 1], [0, 1, 1, 1, 1]], bool)
    with pytest.raises(ValueError, match=r"senders\[cell 0, edge 0\] = 0 points at a position outside"):
        graph_report(np.where(np.arange(5) == 0, 0, s), r, w, m, 5, node_mask=node_mask)
    # masked slots may point anywhere (here at the CLS) without error
    assert graph_report(s, r, w, m, 5, node_mask=node_mask)["edges"] == 8
