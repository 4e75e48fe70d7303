"""GMM activity thresholds and cell-specific GRNs as a GraphSource."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from grn_jax.data.graph_source import GraphSource
from grn_jax.datasets import simulate
from grn_jax.graphs.cell_specific import (
    BIMODAL, CONSTANT, POOLED, SKEWED, CellSpecificNetworkSource, fit_cell_specific_grns, fit_two_gaussians,
    gmm_thresholds, weighted_intersection)
from grn_jax.testing import assert_allclose


def test_intersection_closed_forms():
    # equal weights and variances: the midpoint
    x = weighted_intersection(np.array([[0.5, 0.5]]), np.array([[1.0, 3.0]]), np.array([[0.25, 0.25]]))
    assert_allclose(x, [2.0], np.float64)
    # equal variances, unequal weights: x = (m1+m2)/2 + v log(w1/w2) / (m2-m1)
    w, m, v = np.array([[0.8, 0.2]]), np.array([[0.0, 2.0]]), np.array([[0.5, 0.5]])
    assert_allclose(weighted_intersection(w, m, v), [1.0 + 0.5 * np.log(4.0) / 2.0], np.float64)
    # unequal variances: the root between the means equalises the weighted densities (scipy oracle)
    w, m, v = np.array([[0.7, 0.3]]), np.array([[0.1, 0.3]]), np.array([[0.02**2, 0.04**2]])
    t = weighted_intersection(w, m, v)[0]
    assert 0.1 < t < 0.3
    d1 = 0.7 * stats.norm.pdf(t, 0.1, 0.02)
    d2 = 0.3 * stats.norm.pdf(t, 0.3, 0.04)
    assert abs(d1 - d2) <= 1e-9 * d1


def test_em_matches_sklearn_on_bimodal():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    n = 2000
    x = np.where(rng.random(n) < 0.3, rng.normal(0.3, 0.03, n), rng.normal(0.1, 0.02, n))[:, None]
    fit = fit_two_gaussians(x)
    gm = GaussianMixture(2, tol=1e-10, max_iter=2000, reg_covar=1e-6 * x.var(), random_state=0).fit(x)
    o = np.argsort(gm.means_.ravel())
    assert fit.converged.all()
    assert_allclose(fit.weights[0], gm.weights_[o], np.float32)
    assert_allclose(fit.means[0], gm.means_.ravel()[o], np.float32)
    assert_allclose(fit.variances[0], gm.covariances_.ravel()[o], np.float32)


def test_thresholds_bimodal_skewed_constant():
    rng = np.random.default_rng(1)
    n = 4000
    bimodal = np.where(rng.random(n) < 0.3, rng.normal(0.3, 0.03, n), rng.normal(0.1, 0.02, n))
    skewed = rng.gamma(2.0, 0.02, n)  # one skewed mode
    tail = np.concatenate([rng.normal(0.1, 0.02, n - 80), rng.normal(0.17, 0.02, 80)])  # 2 % minor bump
    const = np.full(n, 0.25)
    thr, mode, fit = gmm_thresholds(np.stack([bimodal, skewed, tail, const], axis=1))
    np.testing.assert_array_equal(mode, [BIMODAL, SKEWED, SKEWED, CONSTANT])
    # bimodal: close to the intersection of the TRUE components (sampling error only)
    true_t = weighted_intersection(np.array([[0.7, 0.3]]), np.array([[0.1, 0.3]]),
                                   np.array([[0.02**2, 0.03**2]]))[0]
    assert abs(thr[0] - true_t) < 0.005
    # skewed with a dominant component (the 2 % tail): mu + 2 sigma of the heavier component
    for j in (2,):
        d = int(np.argmax(fit.weights[j]))
        assert fit.weights[j, d] >= 0.95
        assert_allclose(thr[j], fit.means[j, d] + 2 * np.sqrt(fit.variances[j, d]), np.float64)
    # skewed without one (the gamma: two overlapping components of comparable weight): the mixture's
    # mu + 2 sigma, i.e. the right tail of the distribution, not of its heavier component
    w1, m1, v1 = fit.weights[1], fit.means[1], fit.variances[1]
    assert w1.max() < 0.95
    mix_mu = np.sum(w1 * m1)
    assert_allclose(thr[1], mix_mu + 2 * np.sqrt(np.sum(w1 * (v1 + m1**2)) - mix_mu**2), np.float64)
    # against the data: close to the sample's mean + 2 sd, and only the right tail is active
    assert abs(thr[1] - (skewed.mean() + 2 * skewed.std())) < 0.005
    assert 0.02 < np.mean(skewed > thr[1]) < 0.08
    # the 2 % tail: dominant component ~ N(0.1, 0.02) -> threshold near 0.14
    assert abs(thr[2] - 0.14) < 0.01
    assert thr[3] == 0.25  # constant: nothing is strictly above it


@pytest.fixture(scope="module")
def sim():
    return simulate(n_cells=600, n_genes=120, n_tfs=12, n_cell_types=3, knockouts=0, seed=2)


def test_cell_specific_grns_and_source(sim):
    a = sim.adata
    labels = a.obs["cell_type"].to_numpy().astype(str)
    grns = fit_cell_specific_grns(a.X, a.var_names, sim.network, labels, min_cells=20)
    for t, tg in grns.types.items():
        # active = AUC strictly above the type's threshold, recomputed independently
        np.testing.assert_array_equal(tg.active_CxR, tg.auc_CxR > tg.threshold_R[None])
        assert set(np.unique(tg.mode_R)) <= {BIMODAL, SKEWED, CONSTANT}
    # the source is a GraphSource and returns exactly the active edges among each cell's genes
    vocab = np.concatenate([["<pad>", "<mask>", "<cls>"], a.var_names.to_numpy()])  # a shifted index space
    src = CellSpecificNetworkSource(grns, vocab)
    assert isinstance(src, GraphSource)
    cells = np.array([3, 50, 51, 400, 599])
    expressed = (a.X[cells] > 0).toarray()
    genes = sp.csr_matrix(np.concatenate([np.zeros((len(cells), 3), bool), expressed], axis=1))
    ce = src.cell_edges(cells, genes)
    net = sim.network
    reg_i = a.var_names.get_indexer(net.regulator)
    tgt_i = a.var_names.get_indexer(net.target)
    for row, cell in enumerate(cells):
        active = set(grns.active_regulons(cell))
        want = {(r + 3, t + 3) for r, t, name in zip(reg_i, tgt_i, net.regulator)
                if name in active and expressed[row, r] and expressed[row, t]}
        got = set(zip(ce.src[ce.ptr[row]:ce.ptr[row + 1]].tolist(), ce.dst[ce.ptr[row]:ce.ptr[row + 1]].tolist()))
        assert got == want, cell
        # cell_network holds the same edges over all genes
        cn = grns.cell_network(cell)
        assert set(cn.regulator) <= active
        # neighbours: genes reached through an active edge from a marked gene, not marked themselves
        nb = set(np.flatnonzero(src.cell_neighbours(cells[row:row + 1], genes[row]).toarray()[0]).tolist())
        want_nb = set()
        for r, t, name in zip(reg_i, tgt_i, net.regulator):
            if name in active:
                if expressed[row, r] and not expressed[row, t]:
                    want_nb.add(t + 3)
                if expressed[row, t] and not expressed[row, r]:
                    want_nb.add(r + 3)
        assert nb == want_nb, cell
    # an edge set differs between cells: the GRN is cell-specific
    sizes = np.diff(ce.ptr)
    assert len(set(sizes.tolist())) > 1


def test_small_type_pools_and_errors(sim):
    a = sim.adata
    labels = a.obs["cell_type"].to_numpy().astype(str).copy()
    labels[:5] = "rare"
    grns = fit_cell_specific_grns(a.X, a.var_names, sim.network, labels, min_cells=20)
    assert grns.types["rare"].fitted_on == POOLED and grns.report["pooled_fallback"] == ["rare"]
    with pytest.raises(ValueError, match="no network"):
        fit_cell_specific_grns(a.X, a.var_names, {"type_0": sim.network}, labels)
    with pytest.raises(ValueError, match="gene_names"):
        fit_cell_specific_grns(a.X, a.var_names[:10], sim.network, labels)
    src = CellSpecificNetworkSource(grns, a.var_names)
    with pytest.raises(ValueError, match="outside"):
        src.cell_edges(np.array([10_000]), sp.csr_matrix((1, a.n_vars), dtype=bool))


def test_factory_fills_cell_graph_in_prepare(sim, tmp_path):
    import dataclasses

    from grn_jax.data.config import DataConfig, IngestConfig, QCConfig
    from grn_jax.data.pipeline import prepare
    from grn_jax.graphs.cell_specific import cell_specific_factory

    a = sim.adata
    cfg = dataclasses.replace(DataConfig(), qc=QCConfig(min_counts=100, min_genes=10),
                              ingest=IngestConfig(cell_type_column="cell_type"))
    summary = prepare(a, tmp_path / "shards", cfg, cell_graph=cell_specific_factory(sim.network, "cell_type"),
                      graph=sim.network)
    assert summary["cells"]["cells_kept"] == a.n_obs
    # the tokens of a cell are its expressed genes: the pipeline kept exactly our edges among them
    grns = fit_cell_specific_grns(a.X, a.var_names, sim.network, a.obs["cell_type"].to_numpy())
    src = CellSpecificNetworkSource(grns, a.var_names)
    ce = src.cell_edges(np.arange(a.n_obs), sp.csr_matrix(a.X > 0))
    assert summary["tokens"]["cell_graph_edges_kept"] == int(ce.ptr[-1]) > 0
