"""|Spearman| + FDR + DPI networks (`method="spearman"`, the default) and the `grn infer` options around them."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from grn_jax.cli import main
from grn_jax.datasets import simulate
from grn_jax.graphs import aracne, infer_cell_type_networks, infer_rank_network, spearman_matrix, spearman_pvalue
from grn_jax.graphs import read_network
from grn_jax.graphs.rank_network import partial_spearman_matrix
from grn_jax.graphs import celltype_networks as ctn
from grn_jax.testing import tolerance


def _sparse_counts(seed=0, n=300, g=40):
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.5, 1.0, (n, 1))
    return rng.poisson(base * rng.gamma(0.7, 1.0, (1, g)) + 0.05).astype(np.float64)  # many zeros, many ties


def test_spearman_matrix_matches_scipy_on_tied_sparse_counts():
    x = _sparse_counts()
    assert (x == 0).mean() > 0.3
    reg = [0, 5, 17]
    rho = spearman_matrix(x, reg, chunk=7)
    ref = stats.spearmanr(x).statistic[reg]
    np.testing.assert_allclose(rho, ref, atol=tolerance(np.float64).atol, rtol=tolerance(np.float64).rtol)
    p_ref = np.array([[stats.spearmanr(x[:, r], x[:, j]).pvalue for j in range(x.shape[1])] for r in reg])
    off = np.ones_like(rho, bool)
    off[np.arange(3), reg] = False
    tol = tolerance(np.float64)
    np.testing.assert_allclose(spearman_pvalue(rho, x.shape[0])[off], p_ref[off], rtol=tol.rtol, atol=tol.atol)


def test_spearman_matrix_is_bit_identical_for_any_chunk():
    x = _sparse_counts(1, n=257, g=61)
    reg = np.arange(0, 61, 4)
    ref = spearman_matrix(x, reg, chunk=512)
    for chunk in (1, 3, 16, 60):
        assert np.array_equal(spearman_matrix(x, reg, chunk=chunk), ref)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        spearman_matrix(x, reg, chunk=0)


def _chain_data(n=2000, seed=0):
    """TF a -> TF b -> gene c (no a -> c edge), plus independent genes."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n)
    b = 0.8 * a + 0.6 * rng.standard_normal(n)
    c = 0.8 * b + 0.6 * rng.standard_normal(n)
    noise = rng.standard_normal((n, 5))
    return np.column_stack([a, b, c, noise]), ["a", "b", "c", "n1", "n2", "n3", "n4", "n5"]


def test_dpi_removes_the_indirect_edge_and_fdr_keeps_the_direct_ones():
    x, genes = _chain_data()
    net = infer_rank_network(x, genes, ["a", "b"], aracne.AracneConfig(), method="spearman")
    edges = set(zip(net.regulator, net.target))
    assert {("a", "b"), ("b", "a"), ("b", "c")} <= edges and ("a", "c") not in edges
    assert not any(t.startswith("n") for t in net.target)  # pure noise does not pass BH at 5 % here
    no_dpi = infer_rank_network(x, genes, ["a", "b"], aracne.AracneConfig(dpi=False), method="spearman")
    assert ("a", "c") in set(zip(no_dpi.regulator, no_dpi.target))
    # The weight is the Gaussian-equivalent MI of rho, monotone in |rho|; p-values are the t-test's.
    rho = stats.spearmanr(x[:, 1], x[:, 2]).statistic
    k = list(zip(net.regulator, net.target)).index(("b", "c"))
    np.testing.assert_allclose(net.mi[k], -0.5 * np.log1p(-rho * rho), rtol=1e-12)
    assert net.params["method"] == "spearman" and net.params["n_edges"] == net.num_edges


def test_network_is_identical_whatever_threads_or_chunks(tmp_path):
    """The same network bits from 1 BLAS thread and chunk 1, 2 threads and chunk 7, and this process's defaults."""
    s = simulate(n_cells=300, n_genes=60, n_cell_types=1, knockouts=0, seed=2, mean_library_size=800)
    s.adata.write_h5ad(tmp_path / "d.h5ad")
    code = ("import sys, numpy as np, anndata as ad; from grn_jax.graphs import AracneConfig, infer_rank_network;"
            "from grn_jax.graphs.celltype_networks import log_normalised;"
            "a = ad.read_h5ad(sys.argv[1]); x = log_normalised(a).toarray();"
            "keep = (x > 0).sum(0) >= 5; g = list(a.var_names[keep]);"
            "tfs = [t for t in a.var_names[a.var.is_tf] if t in g];"
            "nets = {m: infer_rank_network(x[:, keep], g, tfs, AracneConfig(block=int(sys.argv[2])), method=m)"
            " for m in ('spearman', 'pcor')};"
            "np.savez(sys.argv[3], **{f'{m}_{k}': v for m, n in nets.items() for k, v in"
            " (('r', n.regulator.astype(str)), ('t', n.target.astype(str)), ('mi', n.mi), ('p', n.pvalue))})")
    outs = []
    for threads, block in (("1", 1), ("2", 7)):  # fresh processes: the thread count is set before NumPy starts
        env = {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
        out = tmp_path / f"n{threads}_{block}.npz"
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "d.h5ad"), str(block), str(out)], check=True,
                       env=env, timeout=120)
        outs.append(np.load(out))
    outs.append({f"{m}_{k}": v for m in ("spearman", "pcor") for k, v in zip(("r", "t", "mi", "p"), _in_process(
        tmp_path / "d.h5ad", m))})  # this process: default threads and chunk
    for m in ("spearman", "pcor"):
        assert outs[0][f"{m}_r"].size > 0
        for o in outs[1:]:
            for k in ("r", "t", "mi", "p"):
                assert np.array_equal(o[f"{m}_{k}"], outs[0][f"{m}_{k}"]), (m, k)


def _in_process(path, method):
    import anndata as ad

    a = ad.read_h5ad(path)
    x = ctn.log_normalised(a).toarray()
    keep = (x > 0).sum(0) >= 5
    g = list(a.var_names[keep])
    n = infer_rank_network(x[:, keep], g, [t for t in a.var_names[a.var.is_tf] if t in g], method=method)
    return n.regulator.astype(str), n.target.astype(str), n.mi, n.pvalue


@pytest.fixture(scope="module")
def typed():
    s = simulate(n_cells=500, n_genes=80, n_cell_types=2, knockouts=0, seed=3, mean_library_size=1000)
    ad = s.adata
    ad.obs["ct"] = ad.obs["cell_type"].astype(str)
    ad.obs.loc[ad.obs_names[:3], "ct"] = "rare"
    return s, list(ad.var_names[ad.var.is_tf])


def _truth(s):
    return set(zip(s.network.regulator, s.network.target)) | set(zip(s.network.target, s.network.regulator))


@pytest.mark.parametrize("method", ["spearman", "pcor"])
def test_rank_methods_recover_true_edges_and_name_fallbacks(typed, method):
    s, tfs = typed
    res = infer_cell_type_networks(s.adata, cell_type_key="ct", regulators=tfs + ["NOT_A_GENE"], min_cells=40,
                                   method=method)
    assert res.params["method"] == method
    assert res.own == ["type_0", "type_1"] and res.fell_back == ["rare"]
    summ = res.summary.set_index("cell_type")
    assert list(summ["network"]) == ["pooled", "own", "own"]
    assert res.params["cell_types_pooled_fallback"] == ["rare"]
    report = res.report()
    assert "2 of 3 cell types got their own network: type_0, type_1" in report
    assert f"1 fell back to the pooled network of all {s.adata.n_obs} cells: rare" in report
    assert f"regulators: {len(tfs)} of {len(tfs) + 1} given are genes of the data (1 not found" in report
    truth = _truth(s)
    chance = len(s.network.regulator) / (len(tfs) * s.adata.n_vars)
    for t in ("type_0", "type_1"):
        net = res.networks[t]
        prec = np.mean([e in truth for e in zip(net.regulator, net.target)])
        assert net.num_edges > 0 and prec > 3 * chance, (t, prec, chance)


def test_all_cells_and_variable_gene_regulators(typed):
    s, _ = typed
    res = infer_cell_type_networks(s.adata, regulators="hvg:15", all_cells=True, min_cells=40)
    assert list(res.networks) == [ctn.ALL_CELLS] and res.own == [ctn.ALL_CELLS]
    assert (res.labels == ctn.ALL_CELLS).all() and res.params["label_source"] == "all cells (one network)"
    assert res.params["n_regulators_in_data"] == 15 and res.params["regulator_source"].startswith("the 15 most")
    # hvg:N is scanpy's dispersion ranking of the log-normalised data, computed independently here.
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(X=ctn.log_normalised(s.adata).astype(np.float32))
    tmp.var_names = s.adata.var_names
    sc.pp.highly_variable_genes(tmp, n_top_genes=15, flavor="seurat")
    hv = ctn.variable_genes(s.adata, 15)
    flagged = set(tmp.var_names[tmp.var["highly_variable"]])  # scanpy keeps every tie at the cut (16 here)
    top = tmp.var["dispersions_norm"].sort_values(ascending=False)
    assert len(hv) == 15 and set(hv) <= flagged and set(top.index[top > top.iloc[14]]) <= set(hv)
    with pytest.raises(ValueError, match="drop cell_type_key 'ct'"):
        infer_cell_type_networks(s.adata, cell_type_key="ct", all_cells=True)
    with pytest.raises(ValueError, match="hvg:N with an integer N"):
        infer_cell_type_networks(s.adata, regulators="hvg:many", all_cells=True)
    with pytest.raises(ValueError, match="hvg:0 asks for 0 regulators"):
        infer_cell_type_networks(s.adata, regulators="hvg:0", all_cells=True)
    with pytest.raises(ValueError, match="method must be one of"):
        infer_cell_type_networks(s.adata, all_cells=True, method="genie3")


def test_cli_all_cells_hvg_and_aracne_only_flags(typed, tmp_path, capsys):
    s, _ = typed
    path = tmp_path / "d.h5ad"
    s.adata.write_h5ad(path)
    out = tmp_path / "nets"
    assert main(["grn", "infer", str(path), "--all-cells", "--regulators", "hvg:12", "--out", str(out),
                 "--method", "spearman"]) == 0
    log = capsys.readouterr().out
    assert "regulators: 12 of 12 given" in log and "1 of 1 cell types got their own network: all_cells" in log
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert list(summary["cell_type"]) == ["all_cells"] and list(summary["network"]) == ["own"]
    meta = json.loads((out / "summary.json").read_text())
    assert meta["params"]["method"] == "spearman" and meta["params"]["cell_types_own_network"] == ["all_cells"]
    assert main(["grn", "infer", str(path), "--all-cells", "--regulators", "hvg:12", "--bootstraps", "5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "apply to --method aracne only" in capsys.readouterr().err
    assert main(["grn", "infer", str(path), "--all-cells", "--regulators", "hvg:12", "--out", str(tmp_path / "d")]) == 0
    meta = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert meta["params"]["method"] == "pcor"  # the default
    files = pd.read_csv(tmp_path / "d" / "summary.tsv", sep="\t")["file"]
    net = read_network(tmp_path / "d" / files[0])
    assert net.num_edges > 0 and net.params["method"] == "pcor"


def _partial_oracle(x, reg, r, g, given=None):
    """Partial Spearman of columns reg[r] and g given `given` (default: the other regulators), by least-squares
    residuals."""
    rk = stats.rankdata(x, axis=0)
    others = [j for j in (reg if given is None else given) if j not in (reg[r], g)]
    design = np.column_stack([np.ones(len(x)), rk[:, others]])

    def resid(v):
        return v - design @ np.linalg.lstsq(design, v, rcond=None)[0]

    return stats.pearsonr(resid(rk[:, reg[r]]), resid(rk[:, g])).statistic


def test_partial_spearman_matches_a_residual_regression_oracle():
    x = _sparse_counts(3, n=400, g=12)
    reg = np.array([0, 3, 4, 9])
    pc = partial_spearman_matrix(x, reg, ridge=0.0)
    tol = tolerance(np.float64)
    for r in range(reg.size):
        for g in range(x.shape[1]):
            want = 0.0 if g == reg[r] else _partial_oracle(x, reg, r, g)
            np.testing.assert_allclose(pc[r, g], want, rtol=tol.rtol, atol=tol.atol)
    assert np.array_equal(partial_spearman_matrix(x, reg, chunk=1), partial_spearman_matrix(x, reg, chunk=512))


def test_pcor_removes_the_indirect_edge_without_dpi():
    x, genes = _chain_data()
    net = infer_rank_network(x, genes, ["a", "b"], aracne.AracneConfig(dpi=False), method="pcor")
    edges = set(zip(net.regulator, net.target))
    assert {("a", "b"), ("b", "c")} <= edges and ("a", "c") not in edges
    assert net.params["method"] == "pcor" and net.params["n_conditioned"] == 1
    with pytest.raises(aracne.EmptyNetworkError, match="too few to condition on 4 regulators"):
        infer_rank_network(x[:15], genes, ["a", "b", "n1", "n2", "n3"], method="pcor")
    with pytest.raises(ValueError, match="method must be one of"):
        infer_rank_network(x, genes, ["a"], method="kendall")


def test_limited_order_partial_spearman_conditions_on_each_genes_strongest_regulators():
    """With R - 1 > order, gene g is conditioned on its `order` most |rho|-correlated regulators S_g (a regulator
    in S_g on S_g minus itself): checked against residual regressions on exactly those sets."""
    x = _sparse_counts(4, n=500, g=14)
    reg = np.array([0, 2, 5, 6, 9, 11])
    order = 2
    pc = partial_spearman_matrix(x, reg, ridge=0.0, order=order)
    rho = stats.spearmanr(x).statistic[reg]
    tol = tolerance(np.float64)
    for g in range(x.shape[1]):
        strength = np.abs(rho[:, g])
        strength[reg == g] = -1.0
        s_g = reg[np.argsort(-strength, kind="stable")[:order]]
        for r in range(reg.size):
            want = 0.0 if g == reg[r] else _partial_oracle(x, reg, r, g, given=s_g)
            np.testing.assert_allclose(pc[r, g], want, rtol=tol.rtol, atol=tol.atol)
    assert np.array_equal(partial_spearman_matrix(x, reg, order=order, chunk=3),
                          partial_spearman_matrix(x, reg, order=order))


def test_default_is_pcor_and_it_removes_confounding_by_pooled_cell_types():
    """Three cell types pooled: master-TF programmes correlate everything with everything; conditioning on each
    gene's strongest other regulators ranks true edges better than |Spearman| (AUPR against the known network)."""
    from sklearn.metrics import average_precision_score

    s = simulate(n_cells=900, n_genes=120, n_cell_types=3, knockouts=0, seed=4, mean_library_size=800)
    x = ctn.log_normalised(s.adata).toarray()
    keep = (x > 0).sum(0) >= 5
    genes = np.asarray(s.adata.var_names)[keep]
    tfs = [t for t in s.adata.var_names[s.adata.var.is_tf] if t in set(genes)]
    reg = np.array([list(genes).index(t) for t in tfs])
    truth = np.zeros((len(tfs), genes.size), bool)
    pos = {g: i for i, g in enumerate(genes)}
    for r, t in _truth(s):
        if r in tfs and t in pos:
            truth[tfs.index(r), pos[t]] = True
    cand = np.ones_like(truth)
    cand[np.arange(len(tfs)), reg] = False
    sp = np.abs(spearman_matrix(x[:, keep], reg))
    pc = np.abs(partial_spearman_matrix(x[:, keep], reg))
    ap_sp = average_precision_score(truth[cand], sp[cand])
    ap_pc = average_precision_score(truth[cand], pc[cand])
    assert ap_pc > 1.2 * ap_sp, (ap_pc, ap_sp)
    net = infer_rank_network(x[:, keep], genes, tfs)
    assert net.params["method"] == "pcor" and net.params["n_conditioned"] == min(10, len(tfs) - 1)


def _small_type(n_cells):
    s = simulate(n_cells=n_cells, n_genes=80, n_cell_types=1, knockouts=0, seed=3, mean_library_size=300)
    x = np.log1p(s.adata.X.toarray() / s.adata.X.sum(axis=1).A * 1e4)
    ok = ~aracne.mi_lib.constant_columns(x, 5)
    genes = list(s.adata.var_names[ok])
    return x[:, ok], genes, [g for g in s.adata.var_names[s.adata.var.is_tf] if g in set(genes)]


def test_min_edges_per_regulator_tops_up_small_types_below_the_fdr_edges():
    x, genes, tfs = _small_type(200)
    plain = infer_rank_network(x, genes, tfs, aracne.AracneConfig(min_edges_per_regulator=0))
    net = infer_rank_network(x, genes, tfs, aracne.AracneConfig(min_edges_per_regulator=4))
    p = net.params
    assert p["edges_after_fdr_dpi"] == plain.num_edges and p["edges_topped_up"] == net.num_edges - plain.num_edges > 0
    assert set(zip(plain.regulator, plain.target)) <= set(zip(net.regulator, net.target))
    # (a regulator can stay below 4 when its other genes have p > 0.05 or were removed by DPI)
    assert (pd.Series(net.regulator).value_counts().reindex(tfs, fill_value=0) >= 4).mean() >= 0.75
    added = ~pd.Series(list(zip(net.regulator, net.target))).isin(set(zip(plain.regulator, plain.target))).to_numpy()
    assert net.mi[added].max() <= plain.mi.min() and (net.pvalue[added] <= 0.05).all()
    # Nothing at FDR 0.05 in 60 cells: without the rule an empty-network error (-> pooled fallback), with it
    # every regulator's best guesses.
    x, genes, tfs = _small_type(60)
    with pytest.raises(aracne.EmptyNetworkError, match="min_edges_per_regulator=0"):
        infer_rank_network(x, genes, tfs, aracne.AracneConfig(min_edges_per_regulator=0))
    small = infer_rank_network(x, genes, tfs, aracne.AracneConfig())
    assert small.params["edges_after_fdr_dpi"] == 0 and small.num_edges == small.params["edges_topped_up"] >= len(tfs)
    with pytest.raises(ValueError, match="min_edges_per_regulator"):
        aracne.AracneConfig(min_edges_per_regulator=-1)
