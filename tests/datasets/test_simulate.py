"""The GRN-driven simulator: determinism, knockouts, cell types, recoverable ground truth."""

import numpy as np
import pytest
import scipy.sparse as sp

from grn_jax.datasets import SimulatedData, simulate


@pytest.fixture(scope="module")
def sim() -> SimulatedData:
    return simulate(n_cells=3000, n_genes=300, n_tfs=30, n_cell_types=3, knockouts=3,
                    knockout_fraction=0.4, seed=7)


def _lognorm(x):
    x = np.asarray(x.todense(), np.float64)
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)


def test_format(sim):
    a = sim.adata
    assert a.shape == (3000, 300)
    assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.int32 and a.X.data.min() > 0
    assert a.var_names[0] == "G0001" and a.var_names.is_unique
    assert int(a.var["is_tf"].sum()) == 30
    net = sim.network
    assert net.num_edges == len(sim.sign) > 0
    assert set(net.regulator) <= set(a.var_names[a.var["is_tf"]])  # only TFs regulate
    assert np.all(net.mi > 0) and set(np.unique(sim.sign)) == {-1, 1}
    np.testing.assert_array_equal(sim.signed_weights, sim.sign * net.mi)
    # some genes are unregulated, hubs exist (max out-degree well above the mean)
    assert (a.var["level"] == -1).sum() > 0
    n_t = a.var.loc[a.var["is_tf"], "n_targets"].to_numpy()
    assert n_t.max() >= 3 * n_t.mean()
    pairs = set(zip(net.regulator, net.target))
    assert len(pairs) == net.num_edges  # no duplicate edges
    assert set(a.obs["perturbation"].unique()) == {"control", *a.uns["simulation"]["knockouts"]}


def test_deterministic():
    a = simulate(n_cells=500, n_genes=120, seed=3)
    b = simulate(n_cells=500, n_genes=120, seed=3)
    c = simulate(n_cells=500, n_genes=120, seed=4)
    assert (a.adata.X != b.adata.X).nnz == 0
    np.testing.assert_array_equal(a.adata.obs["cell_type"], b.adata.obs["cell_type"])
    np.testing.assert_array_equal(a.network.target, b.network.target)
    assert (a.adata.X != c.adata.X).nnz > 0


def test_multi_chunk_run_reproducible():
    a = simulate(n_cells=5000, n_genes=60, n_tfs=8, seed=1)
    b = simulate(n_cells=5000, n_genes=60, n_tfs=8, seed=1)
    assert a.adata.X.shape == (5000, 60) and (a.adata.X != b.adata.X).nnz == 0
    assert np.all(np.diff(a.adata.X.indptr) > 0)


def test_knockouts_zero_gene_and_shift_targets(sim):
    a = sim.adata
    xn = _lognorm(a.X)
    pert = a.obs["perturbation"].to_numpy()
    ctype = a.obs["cell_type"].to_numpy()
    net = sim.network
    checked = 0
    agree = []
    for ko in a.uns["simulation"]["knockouts"]:
        g = a.var_names.get_loc(ko)
        in_ko = pert == ko
        assert in_ko.sum() > 100
        assert np.asarray(a.X[in_ko][:, g].todense()).max() == 0  # knocked-out gene is exactly zero
        ctrl = pert == "control"
        # compare within the cell types where the TF is actually expressed in controls
        for t in np.unique(ctype):
            c_mask, k_mask = ctrl & (ctype == t), in_ko & (ctype == t)
            if xn[c_mask, g].mean() < 1.0:
                continue
            rows = net.regulator == ko
            tg = a.var_names.get_indexer(net.target[rows])
            # losing an activator lowers its targets, losing a repressor raises them
            shift = xn[c_mask][:, tg].mean(0) - xn[k_mask][:, tg].mean(0)
            agree.append(np.sign(shift) == sim.sign[rows])
            checked += 1
    assert checked >= 1
    agree = np.concatenate(agree)
    assert agree.mean() >= 0.85, agree.mean()


def test_cell_types_differ(sim):
    a = sim.adata
    xn = _lognorm(a.X)
    ctrl = a.obs["perturbation"].to_numpy() == "control"
    ctype = a.obs["cell_type"].to_numpy()
    m_idx = a.var_names.get_indexer(sim.master_tfs)
    for c, prog in enumerate(sim.programmes):
        sel = ctrl & (ctype == f"type_{c}")
        other = ctrl & (ctype != f"type_{c}")
        mean_c, mean_o = xn[sel][:, m_idx].mean(0), xn[other][:, m_idx].mean(0)
        # a programme's ON masters are higher than in other types on average, OFF ones lower
        diff = mean_c - mean_o
        if prog.any():
            assert diff[prog].mean() > 0.3
        if (~prog).any():
            assert diff[~prog].mean() < -0.3
    assert len({p.tobytes() for p in sim.programmes}) == len(sim.programmes)


def test_ground_truth_recoverable(sim):
    # Within each cell type (as GRN inference runs), true TF->target pairs correlate
    # more strongly than TF->gene non-edges, with the sign of the edge.
    a = sim.adata
    ctrl = a.obs["perturbation"].to_numpy() == "control"
    ctype = a.obs["cell_type"].to_numpy()
    net = sim.network
    r = a.var_names.get_indexer(net.regulator)
    t = a.var_names.get_indexer(net.target)
    tfs = np.flatnonzero(a.var["is_tf"].to_numpy())
    truth = np.zeros((a.n_vars, a.n_vars), bool)
    truth[r, t] = True
    cand = np.zeros_like(truth)
    cand[tfs] = True
    np.fill_diagonal(cand, False)
    for c in np.unique(ctype):
        xn = _lognorm(a.X[ctrl & (ctype == c)])
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(xn.T)
        ok = np.isfinite(corr)
        edge = np.abs(corr[truth & ok])
        non = np.abs(corr[cand & ~truth & ~truth.T & ok])
        assert edge.mean() > 2.5 * non.mean(), (c, edge.mean(), non.mean())
        assert np.mean(np.sign(corr[r, t]) == sim.sign) > 0.85


def test_named_knockouts_and_errors():
    d = simulate(n_cells=200, n_genes=50, n_tfs=6, knockouts=["G0003", "G0010"], seed=0)
    assert set(d.adata.obs["perturbation"].unique()) == {"control", "G0003", "G0010"}
    with pytest.raises(ValueError, match="G9999"):
        simulate(n_cells=10, n_genes=50, knockouts=["G9999"])
    with pytest.raises(ValueError, match="n_genes"):
        simulate(n_cells=10, n_genes=5, n_tfs=5)
    with pytest.raises(ValueError, match="dropout"):
        simulate(n_cells=10, n_genes=50, dropout=1.0)
    with pytest.raises(ValueError, match="cell types"):
        simulate(n_cells=10, n_genes=50, n_tfs=3, n_cell_types=5)


def test_h5ad_round_trip(tmp_path):
    import anndata as ad

    d = simulate(n_cells=200, n_genes=60, n_tfs=6, seed=5)
    d.adata.write_h5ad(tmp_path / "sim.h5ad")
    back = ad.read_h5ad(tmp_path / "sim.h5ad")
    assert (back.X != d.adata.X).nnz == 0
    assert list(back.uns["simulation"]["knockouts"]) == d.adata.uns["simulation"]["knockouts"]
    np.testing.assert_array_equal(back.obs["perturbation"], d.adata.obs["perturbation"])


def test_simulate_cli_writes_files(tmp_path, capsys):
    import json

    from grn_jax.cli import main
    from grn_jax.graphs.network_io import read_network

    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), "--cells", "150", "--genes", "40", "--tfs", "5", "--seed", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    direct = simulate(n_cells=150, n_genes=40, n_tfs=5, seed=2)
    net = read_network(out / "network.tsv")
    np.testing.assert_array_equal(np.asarray(net.target).astype(str), direct.network.target)
    np.testing.assert_allclose(net.mi, direct.network.mi, rtol=1e-9)
    assert summary["edges"] == direct.network.num_edges and summary["cells"] == 150
    capsys.readouterr()
    # an existing output is refused: one error line naming the fix, exit code 2
    assert main(["simulate", "--out", str(out), "--cells", "150", "--genes", "40", "--tfs", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_scale_100k_cells():
    # CPU seconds, not wall time: the check must not depend on what else the machine runs
    import time
    t0 = time.process_time()
    d = simulate(n_cells=100_000, n_genes=2000, seed=0)
    assert d.adata.shape == (100_000, 2000)
    assert time.process_time() - t0 < 60
