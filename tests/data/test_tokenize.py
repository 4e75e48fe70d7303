"""Tokenizer: top-max_genes selection, token order, graph edges as positions, neighbours, edge budget."""

import numpy as np
import pytest
import scipy.sparse as sp

from grn_jax.data import (CellTypeNetworkSource, SingleNetworkSource, TokenizeConfig, rank_bins,
                          tokenize_block)
from grn_jax.types import GeneNetwork

# vocabulary ids: 0..2 specials, genes a..f = 3..8
TOKENS = ["<pad>", "<mask>", "<cls>", "a", "b", "c", "d", "e", "f"]


def net(edges, weights=None):
    reg, tgt = zip(*edges)
    w = np.ones(len(edges)) if weights is None else np.asarray(weights, float)
    return GeneNetwork(np.array(reg), np.array(tgt), w, np.zeros(len(edges)))


def block(rows):
    x = np.zeros((len(rows), len(TOKENS)))
    for i, r in enumerate(rows):
        for g, v in r.items():
            x[i, TOKENS.index(g)] = v
    return sp.csr_matrix(x)


def test_keeps_highest_bins_and_orders_by_vocab_id():
    b = block([{"a": 5, "b": 1, "c": 9, "d": 3, "e": 7}, {"f": 2}, {}])
    cfg = TokenizeConfig(n_bins=5, max_genes=3)
    t = tokenize_block(b, np.asarray(b.sum(1)).ravel() + 1, np.arange(3), cfg)
    # cell 0: values a5 b1 c9 d3 e7; keep top 3 = a, c, e (5, 9, 7); bins are ranks among the KEPT tokens:
    # m = 3, t = #smaller kept values: a0 e1 c2 -> bin 1 + floor((t (5-1) - 1) / (m-1)) = a1 e2 c4
    assert t.lengths.tolist() == [3, 1, 0]
    assert t.gene_ids[:3].tolist() == [3, 5, 7]
    assert t.bins[:3].tolist() == [1, 4, 2]
    assert t.gene_ids[3] == 8 and t.bins[3] == 1
    assert t.counts["genes_truncated"] == 2 and t.counts["cells_truncated"] == 1
    # the full cell's bins differ (a2 c4 e3): binning before truncation put every kept token in the top bins
    full = rank_bins(b, 5)
    assert full[0, 3] == 2 and full[0, 5] == 4 and full[0, 7] == 3
    # an untruncated cell keeps exactly the full-cell bins (binning the kept tokens changes nothing there)
    small = tokenize_block(b[:1], np.array([26.0]), np.arange(1), TokenizeConfig(n_bins=5, max_genes=5))
    assert small.bins.tolist() == [full[0, j] for j in (3, 4, 5, 6, 7)]


def test_bins_are_ranks_of_the_emitted_tokens_hand_computed():
    # values 5 1 3 0 2 2 over a..f, keep 3: a5, c3 and of the tied 2s the higher gene index (f);
    # kept values 5, 3, 2 -> t = 2, 1, 0 of m = 3 -> bins (n_bins 4) 1 + floor((3t - 1) / 2) = 3, 2, 1
    b = block([{"a": 5, "b": 1, "c": 3, "e": 2, "f": 2}])
    t = tokenize_block(b, np.array([13.0]), np.arange(1), TokenizeConfig(n_bins=4, max_genes=3))
    assert t.gene_ids.tolist() == [TOKENS.index(g) for g in ("a", "c", "f")]
    assert t.bins.tolist() == [3, 2, 1]


def test_values_are_normalised_log1p():
    b = block([{"a": 2, "c": 6}])
    t = tokenize_block(b, np.array([10.0]), np.arange(1), TokenizeConfig(n_bins=10))
    np.testing.assert_allclose(t.values, np.log1p(np.array([2, 6]) * 1e6 / 10), rtol=1e-6)


def test_graph_edges_are_token_positions_of_the_cell():
    # network over names; cell 0 has a, c, d (positions 1, 2, 3); cell 1 has a, b
    g = net([("a", "c"), ("c", "d"), ("a", "b"), ("d", "f"), ("c", "c")], [1, 2, 3, 4, 5])
    src = SingleNetworkSource(g, TOKENS)
    b = block([{"a": 1, "c": 2, "d": 3}, {"a": 1, "b": 1}])
    t = tokenize_block(b, np.asarray(b.sum(1)).ravel(), np.arange(2), TokenizeConfig(n_bins=10), graph_source=src)
    e = t.graph
    cell0 = sorted(zip(e.src[e.ptr[0]:e.ptr[1]].tolist(), e.dst[e.ptr[0]:e.ptr[1]].tolist(),
                       e.weight[e.ptr[0]:e.ptr[1]].tolist()))
    assert cell0 == [(1, 2, 1.0), (2, 3, 2.0)]  # a->c, c->d; self-loop c->c removed, d->f (f absent) not kept
    cell1 = list(zip(e.src[e.ptr[1]:e.ptr[2]].tolist(), e.dst[e.ptr[1]:e.ptr[2]].tolist()))
    assert cell1 == [(1, 2)]
    assert src.report["network"]["self_loops_removed"] == 1


def test_cell_type_networks_and_neighbour_tokens():
    nets = {"T": net([("a", "b"), ("b", "c")]), "B": net([("d", "e")])}
    types = ["T", "B"]
    src = CellTypeNetworkSource(nets, types, TOKENS)
    b = block([{"a": 4, "d": 2}, {"d": 3, "a": 1}])
    cfg = TokenizeConfig(n_bins=10, add_neighbours=True)
    t = tokenize_block(b, np.asarray(b.sum(1)).ravel(), np.arange(2), cfg, graph_source=src)
    # cell 0 (type T): expressed a, d; neighbour b of a added with bin 0 -> tokens a, b, d
    g0 = t.gene_ids[t.token_ptr[0]:t.token_ptr[1]].tolist()
    assert g0 == [3, 4, 6] and t.bins[t.token_ptr[0]:t.token_ptr[1]].tolist()[1] == 0
    # edges a->b at positions 1->2 (b->c absent: c is a neighbour of a neighbour, not added)
    assert list(zip(t.graph.src[:t.graph.ptr[1]], t.graph.dst[:t.graph.ptr[1]])) == [(1, 2)]
    # cell 1 (type B): expressed a, d; neighbour e of d -> tokens a, d, e; edge d->e = 2->3
    assert t.gene_ids[t.token_ptr[1]:t.token_ptr[2]].tolist() == [3, 6, 7]
    assert list(zip(t.graph.src[t.graph.ptr[1]:], t.graph.dst[t.graph.ptr[1]:])) == [(2, 3)]
    assert t.counts["neighbour_tokens_added"] == 2


def test_neighbours_respect_max_genes_and_are_counted():
    src = SingleNetworkSource(net([("a", "b"), ("a", "c"), ("a", "d")]), TOKENS)
    b = block([{"a": 1}])
    t = tokenize_block(b, np.array([1.0]), np.arange(1), TokenizeConfig(n_bins=4, max_genes=2, add_neighbours=True),
                       graph_source=src)
    assert t.gene_ids.tolist() == [3, 4]  # a + the lowest-id neighbour b
    assert t.counts["neighbour_tokens_added"] == 1 and t.counts["neighbour_tokens_dropped"] == 2


def test_edge_budget_keeps_heaviest_and_counts():
    src = SingleNetworkSource(net([("a", "b"), ("a", "c"), ("b", "c")], [0.5, 3.0, 2.0]), TOKENS)
    b = block([{"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 1}])
    t = tokenize_block(b, np.asarray(b.sum(1)).ravel(), np.arange(2), TokenizeConfig(n_bins=4, max_edges=2),
                       graph_source=src)
    e = t.graph
    assert e.ptr.tolist() == [0, 2, 3]
    assert sorted(e.weight[:2].tolist()) == [2.0, 3.0]
    assert t.counts["edges_dropped_over_budget"] == 1 and t.counts["cells_edges_truncated"] == 1


def test_missing_cell_type_network_is_an_error_or_counted():
    nets = {"T": net([("a", "b")])}
    b = block([{"a": 1, "b": 1}])
    with pytest.raises(ValueError, match="cell type 'X' with no network"):
        tokenize_block(b, np.array([2.0]), np.arange(1), TokenizeConfig(n_bins=4),
                       graph_source=CellTypeNetworkSource(nets, ["X"], TOKENS))
    src = CellTypeNetworkSource(nets, ["X"], TOKENS, allow_missing=True)
    t = tokenize_block(b, np.array([2.0]), np.arange(1), TokenizeConfig(n_bins=4), graph_source=src)
    assert t.graph.ptr.tolist() == [0, 0] and src.report["cells_without_network"] == 1
