"""Bayesian graph integration for unseen cells (GREmLN §4.2, eqs. 1-3)."""

import numpy as np
import pytest
import scipy.sparse as sp

from grn_jax.data.graph_source import GraphSource
from grn_jax.datasets import simulate
from grn_jax.graphs.integration import (
    IntegratedNetworkSource, KnnTypePosterior, assign_networks, edge_exclusion, integrate_exclusion)
from grn_jax.testing import assert_allclose
from grn_jax.types import GeneNetwork


def _net(rows):
    reg, tgt, mi, p = zip(*rows)
    return GeneNetwork(np.array(reg), np.array(tgt), np.array(mi, float), np.array(p, float))


# Two types. e1 = a->b, e2 = a->c, e3 = c->d.
NETS = {
    "A": _net([("a", "b", 2.0, 0.01), ("a", "c", 1.0, 0.2), ("a", "b", 5.0, 0.3)]),  # duplicate a->b: keep p=0.01
    "B": _net([("a", "b", 4.0, 0.5), ("c", "d", 3.0, 0.0)]),
}
GENES = ["a", "b", "c", "d", "e"]


def test_edge_exclusion_union():
    ex = edge_exclusion(NETS)
    assert list(ex.types) == ["A", "B"]
    assert list(zip(ex.regulator, ex.target)) == [("a", "b"), ("a", "c"), ("c", "d")]
    assert_allclose(ex.exclusion_TxE, [[0.01, 0.2, 1.0], [0.5, 1.0, 0.0]], np.float64)
    assert_allclose(ex.weight_TxE, [[2.0, 1.0, 0.0], [4.0, 0.0, 3.0]], np.float64)
    assert ex.report["duplicates"] == {"A": 1, "B": 0}


def test_posterior_averaged_exclusion_two_types():
    ex = edge_exclusion(NETS)
    w = np.array([[0.9, 0.1], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    p = integrate_exclusion(w, ex.exclusion_TxE)
    want = np.array([
        [0.9 * 0.01 + 0.1 * 0.5, 0.9 * 0.2 + 0.1 * 1.0, 0.9 * 1.0 + 0.1 * 0.0],  # 0.059, 0.28, 0.9
        [0.01, 0.2, 1.0],
        [0.5, 1.0, 0.0],
        [0.255, 0.6, 0.5],
    ])
    assert_allclose(p, want, np.float64)
    src = IntegratedNetworkSource(ex, w, GENES, alpha=0.05)
    assert isinstance(src, GraphSource)
    all_genes = sp.csr_matrix(np.ones((4, 5), bool))
    ce = src.cell_edges(np.arange(4), all_genes)
    edges = [set(zip(ce.src[ce.ptr[i]:ce.ptr[i + 1]].tolist(), ce.dst[ce.ptr[i]:ce.ptr[i + 1]].tolist()))
             for i in range(4)]
    # cell 0: 0.059 > 0.05 drops a->b although type A (its likelier type) has it at 0.01
    assert edges == [set(), {(0, 1)}, {(2, 3)}, set()]
    # one-hot posteriors reduce eq. 3 to eq. 1 of that type; weight = posterior-mean mi
    assert_allclose(ce.weight, [2.0, 3.0], np.float32)
    # at alpha = 0.3 cell 0 keeps a->b (0.059) and a->c (0.28), weights 0.9*2+0.1*4 and 0.9*1
    src3 = IntegratedNetworkSource(ex, w, GENES, alpha=0.3)
    ce3 = src3.cell_edges(np.array([0]), all_genes[:1])
    assert list(zip(ce3.src, ce3.dst)) == [(0, 1), (0, 2)]
    assert_allclose(ce3.weight, [2.2, 0.9], np.float32)
    # restricted to the cell's genes: without gene b the edge a->b goes, b becomes a neighbour
    only = sp.csr_matrix(np.array([[True, False, True, True, False]]))
    assert src3.cell_edges(np.array([0]), only).src.tolist() == [0]
    np.testing.assert_array_equal(src3.cell_neighbours(np.array([0]), only).toarray(),
                                  [[False, True, False, False, False]])
    net0 = src3.cell_network(0)
    assert_allclose(net0.pvalue, [0.059, 0.28], np.float64)


def test_knn_posterior_hand_computed():
    feats = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    labels = ["A", "A", "B", "B", "B", "C"]
    knn = KnnTypePosterior(feats, labels, k=3, types=["A", "B", "C", "D"])
    post = knn.posterior(np.array([[0.4], [11.2], [4.8]]))
    # 0.4 -> {0, 1, 2}: A A B; 11.2 -> {11, 12, 10}: B C B; 4.8 -> {2, 1, 0} (10 is 5.2 away): B A A
    assert_allclose(post, [[2 / 3, 1 / 3, 0, 0], [0, 2 / 3, 1 / 3, 0], [2 / 3, 1 / 3, 0, 0]], np.float64)
    with pytest.raises(ValueError, match="k=9"):
        KnnTypePosterior(feats, labels, k=9)


@pytest.fixture(scope="module")
def sim_split():
    sim = simulate(n_cells=900, n_genes=150, n_tfs=15, n_cell_types=3, knockouts=0, seed=3)
    a = sim.adata
    labels = a.obs["cell_type"].to_numpy().astype(str)
    rng = np.random.default_rng(0)
    net = sim.network
    nets = {}
    for t in np.unique(labels):
        keep = rng.random(net.num_edges) < 0.6
        nets[t] = GeneNetwork(net.regulator[keep], net.target[keep], net.mi[keep], rng.uniform(0, 0.1, keep.sum()))
    return a, labels, nets


def test_assign_networks_end_to_end(sim_split):
    a, labels, nets = sim_split
    train, query = np.arange(600), np.arange(600, 900)
    # query genes in a different order, plus an extra gene: alignment is by name
    perm = np.random.default_rng(1).permutation(a.n_vars)
    qx = sp.hstack([a.X[query][:, perm], sp.csr_matrix(np.ones((300, 1)))]).tocsr()
    qgenes = np.concatenate([a.var_names.to_numpy()[perm], ["EXTRA"]])
    src = assign_networks(a.X[train], a.var_names, labels[train], nets, qx, qgenes, k=15, alpha=0.05)
    assert src.report["gene_alignment"] == {"train_genes_missing_in_query": 0, "query_genes_not_in_training": 1}
    acc = np.mean(src.exclusion.types[src.posterior.argmax(1)] == labels[query])
    assert acc > 0.85  # the simulator's types are separable; the labels of query cells were never passed
    assert_allclose(src.posterior.sum(1), np.ones(300), np.float64)
    # a query cell's graph does not depend on the other query cells
    alone = assign_networks(a.X[train], a.var_names, labels[train], nets, qx[7:8], qgenes, k=15, alpha=0.05)
    assert_allclose(alone.posterior[0], src.posterior[7], np.float64)
    # cell_edges == brute force of eq. 2-3 over the cell's expressed genes
    cells = np.array([0, 7, 150])
    marked = (qx[cells] > 0).toarray()
    ce = src.cell_edges(cells, sp.csr_matrix(marked))
    ex = src.exclusion
    gi = {g: i for i, g in enumerate(qgenes)}
    for row, c in enumerate(cells):
        p = src.posterior[c] @ ex.exclusion_TxE
        want = {(gi[r], gi[t]) for r, t, pe in zip(ex.regulator, ex.target, p)
                if pe <= 0.05 and marked[row, gi[r]] and marked[row, gi[t]]}
        got = set(zip(ce.src[ce.ptr[row]:ce.ptr[row + 1]].tolist(), ce.dst[ce.ptr[row]:ce.ptr[row + 1]].tolist()))
        assert got == want and len(got) > 0


def test_assign_networks_errors(sim_split):
    a, labels, nets = sim_split
    with pytest.raises(ValueError, match="no network"):
        assign_networks(a.X[:100], a.var_names, labels[:100], {"type_0": nets["type_0"]}, a.X[100:110], a.var_names)
    with pytest.raises(ValueError, match="training genes"):
        assign_networks(a.X[:100], a.var_names, labels[:100], nets, a.X[100:110], [f"x{i}" for i in range(a.n_vars)])
    with pytest.raises(ValueError, match="pvalue"):
        edge_exclusion({"A": _net([("a", "b", 1.0, 1.5)])})
    ex = edge_exclusion(NETS)
    with pytest.raises(ValueError, match="sum to 1"):
        IntegratedNetworkSource(ex, np.array([[0.5, 0.2]]), GENES)


def test_factory_feeds_prepare(sim_split, tmp_path):
    import dataclasses

    from grn_jax.data.config import DataConfig, QCConfig
    from grn_jax.data.pipeline import prepare
    from grn_jax.graphs.integration import integration_factory

    a, labels, nets = sim_split
    query = a[800:].copy()
    del query.obs["cell_type"]  # the query's labels are not even available
    cfg = dataclasses.replace(DataConfig(), qc=QCConfig(min_counts=100, min_genes=10))
    summary = prepare(query, tmp_path / "q", cfg,
                      graph=integration_factory(a.X[:600], a.var_names, labels[:600], nets, k=15, alpha=0.05))
    src = assign_networks(a.X[:600], a.var_names, labels[:600], nets, query.X, query.var_names, k=15, alpha=0.05)
    ce = src.cell_edges(np.arange(query.n_obs), sp.csr_matrix(query.X > 0))
    assert summary["cells"]["cells_kept"] == query.n_obs
    assert summary["tokens"]["edges_kept"] == int(ce.ptr[-1]) > 0
