"""ARACNe pipeline: DPI and consensus against brute-force oracles, the null against chi-square,
recovery of a simulated ground truth, per-cell-type driver and bad input."""

import itertools

import numpy as np
import pytest
from scipy import stats

from grn_jax.datasets import simulate
from grn_jax.graphs import aracne, celltype_networks as ctn
from grn_jax.graphs.network_dir import write_cell_type_networks


def _dpi_brute_force(mi_RxG, reg_idx, tol=0.0):
    """Triple loop over (r, g, r2): the definition, independent of the vectorised max-min product."""
    keep = mi_RxG > 0
    out = keep.copy()
    for r, g in zip(*np.nonzero(keep)):
        for k2, g2 in enumerate(reg_idx):
            if k2 == r or g2 == g:
                continue
            a = mi_RxG[r, g2]  # MI(r, r2)
            b = mi_RxG[k2, g]  # MI(r2, g)
            if a > 0 and b > 0 and mi_RxG[r, g] < (1 - tol) * min(a, b):
                out[r, g] = False
    return out


def test_dpi_hand_triangle():
    # genes A, B (regulators), C; MI(A,B) = .5, MI(B,C) = .4, MI(A,C) = .2: A-C is the weakest edge.
    reg = np.array([0, 1])
    m = np.array([[0.0, 0.5, 0.2],
                  [0.5, 0.0, 0.4]])
    keep = aracne.dpi_prune(m, reg)
    assert keep.tolist() == [[False, True, False], [True, False, True]]
    # Without the B-C edge there is no triangle: nothing is removed.
    m[1, 2] = 0.0
    assert aracne.dpi_prune(m, reg).tolist() == [[False, True, True], [True, False, False]]
    # A tolerance of 60 % keeps A-C (0.2 >= 0.4 * min(.5, .4) = 0.16).
    m[1, 2] = 0.4
    assert aracne.dpi_prune(m, reg, tolerance=0.6)[0, 2]


@pytest.mark.parametrize("tol", [0.0, 0.15])
def test_dpi_matches_brute_force(tol):
    rng = np.random.default_rng(0)
    r, g = 9, 25
    reg = rng.choice(g, r, replace=False)
    m = rng.random((r, g))
    m = np.where(rng.random((r, g)) < 0.5, m, 0.0)
    m[np.arange(r), reg] = 0.0
    # MI is symmetric between two regulators.
    for a, b in itertools.combinations(range(r), 2):
        m[b, reg[a]] = m[a, reg[b]]
    m = m.astype(np.float32)
    assert np.array_equal(aracne.dpi_prune(m, reg, tol), _dpi_brute_force(m, reg, tol))


def test_permutation_null_matches_chi_square():
    # Copula MI of independent genes: 2 N MI ~ chi2(1), so P(MI > t) = chi2.sf(2 N t, 1).
    rng = np.random.default_rng(0)
    n = 1000
    x = rng.standard_normal((n, 40))
    null = aracne.permutation_null(x, np.arange(8), aracne.AracneConfig(n_null_pairs=20_000), rng)
    for p in (1e-2, 1e-4):
        expected = stats.chi2.isf(p, 1) / (2 * n)
        assert abs(null.threshold(p) / expected - 1) < 0.05, (p, null.threshold(p), expected)
    for t in (0.0005, 0.002, 0.004):
        assert abs(null.pvalue(t) / stats.chi2.sf(2 * n * t, 1) - 1) < 0.15


def test_fit_null_exponential_tail():
    rng = np.random.default_rng(1)
    scale = 0.1
    null = aracne.fit_null(rng.exponential(scale, 50_000), tail_fraction=0.05)
    assert abs(-1.0 / null.slope / scale - 1) < 0.1
    assert abs(null.threshold(1e-5) / (-scale * np.log(1e-5)) - 1) < 0.1
    assert np.all(np.diff(null.pvalue(np.linspace(0, 2, 50))) <= 0)  # monotone


def _bh_oracle(p, q):
    """Benjamini-Hochberg step-up by its definition: the largest k with p_(k) <= k q / m."""
    order = np.argsort(p)
    m = p.size
    ok = np.nonzero(p[order] <= q * np.arange(1, m + 1) / m)[0]
    keep = np.zeros(m, bool)
    if ok.size:
        keep[order[: ok[-1] + 1]] = True
    return keep


def test_consensus_binomial_bh():
    rng = np.random.default_rng(2)
    b, r, g = 10, 4, 30
    cand = np.ones((r, g), bool)
    cand[np.arange(r), np.arange(r)] = False
    edges = rng.random((b, r, g)) < 0.1  # background
    edges[:, 0, 5] = True  # recurs in every run
    edges[:8, 1, 9] = True
    mi = rng.random((b, r, g))
    cons = aracne.consensus(edges, mi, cand, fdr=0.05)
    edges &= cand[None]
    support = edges.sum(0)
    p0 = support.sum() / (b * cand.sum())
    assert cons.p0 == pytest.approx(p0)
    pv = np.where(support > 0, stats.binom.sf(support - 1, b, p0), 1.0)
    np.testing.assert_allclose(cons.pvalue_RxG, pv, rtol=1e-12)
    expect = np.zeros((r, g), bool)
    expect[cand] = _bh_oracle(pv[cand], 0.05)
    assert np.array_equal(cons.keep_RxG, expect)
    assert cons.keep_RxG[0, 5] and cons.keep_RxG[1, 9]
    np.testing.assert_allclose(cons.mean_mi_RxG[0, 5], mi[:, 0, 5].mean())
    with pytest.raises(ValueError, match="every subnetwork is empty"):
        aracne.consensus(np.zeros((3, r, g), bool), mi[:3], cand)


@pytest.fixture(scope="module")
def sim():
    return simulate(n_cells=1200, n_genes=150, n_cell_types=1, knockouts=0, seed=1)


def _matrix(sim):
    x = sim.adata.X.toarray().astype(np.float64)
    keep = ~ctn.mutual_info.constant_columns(x, aracne.AracneConfig().min_informative_cells)
    return x[:, keep], list(sim.adata.var_names[keep]), list(sim.adata.var_names[sim.adata.var.is_tf])


def _truth(sim):
    t = set(zip(sim.network.regulator, sim.network.target))
    return t | {(b, a) for a, b in t}  # an edge between two regulators is found in both directions


def test_recovers_simulated_network_and_dpi_helps(sim):
    x, genes, tfs = _matrix(sim)
    truth = _truth(sim)
    cfg = aracne.AracneConfig(n_bootstraps=4, n_null_pairs=2000, seed=0)
    net = aracne.infer_network(x, genes, tfs, cfg, name="sim")
    one = aracne.AracneConfig(n_bootstraps=1, n_null_pairs=2000)
    single = aracne.infer_network(x, genes, tfs, one)
    nodpi = aracne.infer_network(x, genes, tfs, aracne.AracneConfig(n_bootstraps=1, n_null_pairs=2000, dpi=False))

    def precision(n):
        return np.mean([e in truth for e in zip(n.regulator, n.target)])

    base_rate = len(set(zip(sim.network.regulator, sim.network.target))) / (len(tfs) * len(genes))
    assert precision(net) > 0.7 and precision(net) > 5 * base_rate, (precision(net), base_rate)
    n_true = len(set(zip(sim.network.regulator, sim.network.target)))
    assert sum(e in truth for e in zip(net.regulator, net.target)) > 0.4 * n_true  # recall
    assert precision(single) > precision(nodpi) and single.num_edges < nodpi.num_edges
    assert nodpi.params["edges_passing_threshold_per_run"] == [nodpi.num_edges]
    # Without DPI the network is dense (p0 ~ 0.6): a 4-run binomial consensus cannot reach FDR 5 %, and says so.
    with pytest.raises(ValueError, match="use more bootstraps"):
        aracne.infer_network(x, genes, tfs, aracne.AracneConfig(n_bootstraps=4, n_null_pairs=2000, dpi=False))
    assert set(net.regulator) <= set(tfs) and not np.any(net.regulator == net.target)
    assert np.all((net.pvalue >= 0) & (net.pvalue <= 1)) and np.all(net.mi > 0)
    p = net.params
    assert p["n_bootstraps"] == 4 and p["n_edges"] == net.num_edges and p["mi_threshold"] > 0
    again = aracne.infer_network(x, genes, tfs, cfg, name="sim")
    assert np.array_equal(again.target, net.target) and np.array_equal(again.mi, net.mi)  # seeded


def test_max_cells_subsamples_each_run(sim):
    x, genes, tfs = _matrix(sim)
    net = aracne.infer_network(x, genes, tfs, aracne.AracneConfig(n_bootstraps=3, n_null_pairs=1000, max_cells=400))
    assert net.params["n_cells"] == x.shape[0] and net.params["n_cells_per_run"] == 400
    assert net.num_edges > 0 and np.mean([e in _truth(sim) for e in zip(net.regulator, net.target)]) > 0.6


def test_adaptive_estimator_pipeline_runs(sim):
    x, genes, tfs = _matrix(sim)
    x, genes = x[:400, :60], genes[:60]
    keep = ~ctn.mutual_info.constant_columns(x, 5)
    x, genes = x[:, keep], [g for g, k in zip(genes, keep) if k]
    net = aracne.infer_network(x, genes, tfs, aracne.AracneConfig(estimator="adaptive", n_bootstraps=1,
                                                                    n_null_pairs=1000))
    truth = _truth(sim)
    assert net.num_edges > 0 and np.mean([e in truth for e in zip(net.regulator, net.target)]) > 0.5


def test_bad_input_messages(sim):
    x, genes, tfs = _matrix(sim)
    cfg = aracne.AracneConfig(n_bootstraps=1, n_null_pairs=500)
    with pytest.raises(ValueError, match="none of the 2 regulators"):
        aracne.infer_network(x, genes, ["NOPE1", "NOPE2"], cfg)
    with pytest.raises(ValueError, match="3 cells"):
        aracne.infer_network(x[:3], genes, tfs, cfg, name="tiny")
    xc = x.copy()
    xc[:, 4] = 1.0
    with pytest.raises(ValueError, match=f"constant.*{genes[4]}"):
        aracne.infer_network(xc, genes, tfs, cfg)
    xn = x.copy()
    xn[7, 2] = np.nan
    with pytest.raises(ValueError, match=f"cell row 7, gene '{genes[2]}'"):
        aracne.infer_network(xn, genes, tfs, cfg)
    noise = np.random.default_rng(0).standard_normal((60, 30))
    with pytest.raises(ValueError, match="network is empty"):
        aracne.infer_network(noise, [f"g{i}" for i in range(30)], ["g0", "g1"],
                             aracne.AracneConfig(n_bootstraps=1, n_null_pairs=500, mi_pvalue=1e-9))
    with pytest.raises(ValueError, match="AracneConfig.estimator"):
        aracne.AracneConfig(estimator="knn")


@pytest.fixture(scope="module")
def typed():
    s = simulate(n_cells=500, n_genes=80, n_cell_types=2, knockouts=0, seed=3)
    ad = s.adata
    ad.obs["ct"] = ad.obs["cell_type"].astype(str)
    ad.obs.loc[ad.obs_names[:3], "ct"] = "rare"  # a cell type with 3 cells
    return s, list(ad.var_names[ad.var.is_tf])


def test_cell_type_networks_with_fallbacks(typed, tmp_path):
    s, tfs = typed
    cfg = aracne.AracneConfig(n_bootstraps=3, n_null_pairs=1000)
    res = ctn.infer_cell_type_networks(s.adata, cell_type_key="ct", regulators=tfs + ["NOT_A_GENE"], config=cfg,
                                       method="aracne", min_cells=40)
    summ = res.summary.set_index("cell_type")
    assert summ.loc["rare", "n_cells"] == 3 and summ.loc["rare", "status"].startswith("fallback: pooled")
    assert res.networks["rare"] is res.networks[ctn.POOLED]
    for t in ("type_0", "type_1"):
        assert summ.loc[t, "status"] == "inferred" and res.networks[t].num_edges == summ.loc[t, "n_edges"] > 0
        assert res.networks[t].params["n_cells"] == int((s.adata.obs["ct"] == t).sum())
    assert res.params["n_regulators_missing"] == 1
    files = write_cell_type_networks(res, tmp_path, "tsv")
    assert files["rare"] == files[ctn.POOLED] and (tmp_path / "summary.tsv").exists()

    skipped = ctn.infer_cell_type_networks(s.adata, cell_type_key="ct", regulators=tfs, config=cfg, method="aracne",
                                           min_cells=40,
                                           fallback="skip")
    assert "rare" not in skipped.networks
    assert skipped.summary.set_index("cell_type").loc["rare", "status"] == "skipped: below min_cells"
    with pytest.raises(ValueError, match=r"fewer than min_cells=40.*'rare': 3"):
        ctn.infer_cell_type_networks(s.adata, cell_type_key="ct", regulators=tfs, config=cfg, method="aracne",
                                     min_cells=40,
                                     fallback="error")
    # A type large enough by count whose own network comes out empty falls back too, and says why.
    ad = s.adata.copy()
    ad.obs.loc[ad.obs_names[3:15], "ct"] = "small"
    res = ctn.infer_cell_type_networks(ad, cell_type_key="ct", regulators=tfs, config=cfg, method="aracne",
                                       min_cells=10)
    status = res.summary.set_index("cell_type").loc["small", "status"]
    assert status.startswith("fallback: pooled") and "own network empty" in status
    assert res.networks["small"] is res.networks[ctn.POOLED]
    with pytest.raises(aracne.EmptyNetworkError, match="small"):
        ctn.infer_cell_type_networks(ad[ad.obs["ct"] != "rare"].copy(), cell_type_key="ct", regulators=tfs,
                                     config=cfg, method="aracne", min_cells=10, fallback="error")
    with pytest.raises(ValueError, match="cell_type_key 'nope'"):
        ctn.infer_cell_type_networks(s.adata, cell_type_key="nope", regulators=tfs, config=cfg, method="aracne")
    with pytest.raises(ValueError, match="layer 'counts' not in adata.layers"):
        ctn.infer_cell_type_networks(s.adata, cell_type_key="ct", regulators=tfs, config=cfg, method="aracne",
                                     layer="counts")


def test_unlabelled_cells_are_clustered_into_types():
    s = simulate(n_cells=500, n_genes=200, n_cell_types=3, knockouts=0, seed=3)
    tfs = list(s.adata.var_names[s.adata.var.is_tf])
    res = ctn.infer_cell_type_networks(s.adata, regulators=tfs, min_cells=40, resolution=0.3,
                                       config=aracne.AracneConfig(n_bootstraps=1, n_null_pairs=1000))
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(s.adata.obs["cell_type"].astype(str), res.labels) > 0.7
    assert res.params["label_source"].startswith("leiden")
    assert len(res.summary) == len(np.unique(res.labels)) and (res.summary["n_edges"] > 0).all()
    louvain = ctn.cluster_cells(s.adata, method="louvain", resolution=0.3)
    assert adjusted_rand_score(s.adata.obs["cell_type"].astype(str), louvain) > 0.7
    with pytest.raises(ValueError, match="cluster method"):
        ctn.cluster_cells(s.adata, method="kmeans")


def test_negative_counts_rejected(typed):
    s, tfs = typed
    ad = s.adata.copy()
    ad.X = ad.X.astype(np.float32)
    ad.X[5, 3] = -1.0
    with pytest.raises(ValueError, match=f"negative values.*cell {ad.obs_names[5]!r}"):
        ctn.infer_cell_type_networks(ad, cell_type_key="ct", regulators=tfs)


def test_cluster_consensus_within_a_type(typed):
    """GREmLN A.1: ARACNe per sub-cluster of a type, consolidated by the binomial recurrence null."""
    s, tfs = typed
    ad = s.adata[s.adata.obs["ct"] == "type_0"].copy()
    res = ctn.infer_cell_type_networks(ad, cell_type_key="ct", regulators=tfs, min_cells=20,
                                       subnetworks="clusters", subcluster_resolution=1.5, method="aracne",
                                       config=aracne.AracneConfig(n_null_pairs=1000, mi_pvalue=1e-2))
    net = res.networks["type_0"]
    p = net.params
    assert p["method"] == "consensus" and p["subnetworks"] == "clusters" and p["n_subnetworks"] >= 2
    assert p["n_subnetworks"] == len(p["subclusters_used"]) == len(p["mi_threshold_per_subnetwork"])
    assert sum(p["subcluster_sizes"].values()) == ad.n_obs
    truth = _truth(s)
    assert net.num_edges > 0 and np.mean([e in truth for e in zip(net.regulator, net.target)]) > 0.5


def test_nan_counts_rejected_with_cell_and_gene(typed):
    s, tfs = typed
    ad = s.adata.copy()
    ad.X = ad.X.astype(np.float32)
    ad.X[7, 2] = np.nan
    with pytest.raises(ValueError, match=f"1 NaN/inf values; first at cell {ad.obs_names[7]!r}, "
                                         f"gene {ad.var_names[2]!r}"):
        ctn.infer_cell_type_networks(ad, cell_type_key="ct", regulators=tfs)


def test_genes_detected_in_a_few_cells_are_excluded_and_counted(typed):
    """Two genes seen only in the same two cells look identical on ranks (MI near its maximum) and would
    flatten the permutation null's tail; they are excluded per type and reported."""
    import anndata as an
    import scipy.sparse as sp

    s, tfs = typed
    ad = s.adata[s.adata.obs["ct"] == "type_0"]
    extra = np.zeros((ad.n_obs, 2), np.int32)
    extra[:2, :] = 5
    ad2 = an.AnnData(X=sp.hstack([ad.X, sp.csr_matrix(extra)]).tocsr(), obs=ad.obs.copy())
    ad2.var_names = list(ad.var_names) + ["RARE1", "RARE2"]
    res = ctn.infer_cell_type_networks(ad2, cell_type_key="ct", regulators=tfs + ["RARE1"], min_cells=20,
                                       config=aracne.AracneConfig(n_bootstraps=3, n_null_pairs=1000),
                                       method="aracne")
    net = res.networks["type_0"]
    assert {"RARE1", "RARE2"} <= set(net.params["genes_excluded_first"])
    assert net.params["min_informative_cells_used"] == 5 and res.summary["n_genes_excluded"].iloc[0] >= 2
    assert not ({"RARE1", "RARE2"} & (set(net.regulator) | set(net.target)))
    with pytest.raises(ValueError, match=r"nearly so .fewer than 5 of .* cells.*RARE1"):
        x = ad2.X.toarray()
        aracne.infer_network(x[:, ~ctn.mutual_info.constant_columns(x)], list(np.asarray(ad2.var_names)[
            ~ctn.mutual_info.constant_columns(x)]), tfs + ["RARE1"], aracne.AracneConfig(n_bootstraps=1))
