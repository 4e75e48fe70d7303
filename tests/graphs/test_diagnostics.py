"""Graph diagnostics against hand counts and dense oracles (scipy expm, eigvalsh over all nodes)."""

import numpy as np
import pytest
import scipy.linalg

from grn_jax.graphs.diagnostics import (GraphDiagnostics, beta_from_lambda_min, diffusion_rel_change,
                                        format_graph_diagnostics, lambda_min_nonzero, laplacian_spectrum,
                                        shared_network_types)
from grn_jax.testing import tolerance
from tests.models._cells import dense_laplacian_np

F64 = tolerance(np.float64)


def _random_graph(rng, n, m):
    src = rng.integers(1, n + 1, m)
    dst = rng.integers(1, n + 1, m)
    return src, dst, rng.uniform(0.2, 2.0, m)


def _dense(n, src, dst, w):
    """Oracle Laplacian over all n gene positions (1..n -> 0..n-1), isolated genes included."""
    return dense_laplacian_np(n, [(int(s) - 1, int(d) - 1, float(x)) for s, d, x in zip(src, dst, w)])


def test_coverage_and_edges_per_cell_by_hand():
    diag = GraphDiagnostics(sample_cells=8)
    # chunk 1: cell A (4 genes) edges 1-2, 2-3 (genes 1,2,3 covered); cell B (3 genes) no edges
    diag.add([4, 3], [0, 2, 2], [1, 2], [2, 3], [1.0, 1.0])
    # chunk 2: cell C (5 genes) edges 1-5, 5-1, 2-2 (self-loop still names gene 2): genes 1, 2, 5
    diag.add([5], [0, 3], [1, 5, 2], [5, 1, 2], [1.0, 2.0, 1.0])
    d = diag.summary(beta=0.5, fell_back=["NK", "B"])
    assert d["cells"] == 3 and d["gene_tokens"] == 12 and d["cells_without_edges"] == 1
    assert d["gene_tokens_with_edge_fraction"] == pytest.approx(6 / 12)
    assert d["edges_per_cell"]["median"] == 2.0 and d["edges_per_cell"]["p10"] == pytest.approx(0.4)
    assert d["fell_back_to_pooled"] == ["B", "NK"]
    text = format_graph_diagnostics(d)
    assert "50.0 % of 12 gene tokens" in text and "B, NK" in text and "beta 0.5" in text


def test_spectrum_matches_dense_eigvalsh_over_all_nodes():
    rng = np.random.default_rng(0)
    n = 12
    src, dst, w = _random_graph(rng, n, 9)
    ours = laplacian_spectrum(src, dst, w)
    full = np.linalg.eigvalsh(_dense(n, src, dst, w))
    covered = len(np.unique(np.concatenate([src[src != dst], dst[src != dst]])))
    # isolated genes add eigenvalue 1 exactly; everything else is the same spectrum
    np.testing.assert_allclose(np.sort(np.concatenate([ours, np.ones(n - covered)])), full, atol=F64.atol * 10)
    assert len(ours) == covered


def test_diffusion_change_matches_expm_oracle():
    rng = np.random.default_rng(1)
    beta = 0.7
    cells = [(10, *_random_graph(rng, 10, 6)), (15, *_random_graph(rng, 15, 20)), (6, [], [], [])]
    num = 0.0
    for n, s, d, w in cells:
        k = scipy.linalg.expm(-beta * _dense(n, s, d, w)) if len(s) else np.exp(-beta) * np.eye(n)
        num += np.sum((k - np.exp(-beta) * np.eye(n)) ** 2)  # E||(K - e^-b I) Q||^2 = tr((K - e^-b I)^2) d
    want = np.sqrt(num / sum(c[0] for c in cells))
    got = diffusion_rel_change([laplacian_spectrum(*c[1:]) for c in cells], [c[0] for c in cells], beta)
    assert got == pytest.approx(want, rel=F64.rtol * 1e3)
    # the same figure from the accumulator (sample covers every cell)
    diag = GraphDiagnostics(sample_cells=10)
    ptr = np.cumsum([0] + [len(c[1]) for c in cells])
    src, dst, w = (np.concatenate([np.asarray(c[i], np.float64) for c in cells]) for i in (1, 2, 3))
    diag.add([c[0] for c in cells], ptr, src.astype(np.int64), dst.astype(np.int64), w)
    assert diag.summary(beta)["diffusion"]["query_rel_change"] == pytest.approx(want, rel=F64.rtol * 1e3)
    # beta = 0: the operator is the identity, exactly e^0 I
    assert diffusion_rel_change([laplacian_spectrum(*cells[1][1:])], [15], 0.0) == 0.0


def test_lambda_min_and_auto_beta_match_dense_oracle():
    rng = np.random.default_rng(2)
    lmins = []
    for n, m in ((10, 8), (14, 30), (8, 3)):
        s, d, w = _random_graph(rng, n, m)
        full = np.linalg.eigvalsh(_dense(n, s, d, w))
        # oracle: drop the zero eigenvalues (one per component) and the isolated genes' exact 1s
        ours = lambda_min_nonzero(laplacian_spectrum(s, d, w))
        nonzero = full[full > 1e-8]
        assert ours == pytest.approx(nonzero.min(), abs=1e-10)
        lmins.append(ours)
    assert beta_from_lambda_min(lmins + [float("nan")]) == pytest.approx(1 / np.median(lmins))
    # a path graph on 2 nodes: L has eigenvalues {0, 2}
    assert lambda_min_nonzero(laplacian_spectrum([1], [2], [1.0])) == pytest.approx(2.0)
    assert np.isnan(lambda_min_nonzero(laplacian_spectrum([], [], [])))
    with pytest.raises(ValueError, match="diffusion_beta"):
        beta_from_lambda_min([float("nan")])


def test_sample_is_seeded_and_capped():
    def run(seed):
        diag = GraphDiagnostics(sample_cells=5, seed=seed)
        r = np.random.default_rng(4)
        for _ in range(4):
            lengths = r.integers(5, 9, 10)
            m = r.integers(0, 6, 10)
            ptr = np.concatenate([[0], np.cumsum(m)])
            src = np.concatenate([r.integers(1, L + 1, k) for L, k in zip(lengths, m)])
            dst = np.concatenate([r.integers(1, L + 1, k) for L, k in zip(lengths, m)])
            diag.add(lengths, ptr, src, dst, np.ones(len(src)))
        return diag.summary(0.3)
    a, b, c = run(0), run(0), run(1)
    assert a == b and a["sample_cells"] == 5 and a["cells"] == 40
    assert a["gene_tokens"] == c["gene_tokens"]


def test_shared_network_types_names_the_fallbacks():
    pooled, own_a, own_b = object(), object(), object()
    nets = {"__pooled__": pooled, "A": own_a, "B": own_b, "NK": pooled, "DC": pooled}
    assert shared_network_types(nets) == ["DC", "NK"]
    assert shared_network_types({"A": own_a, "B": own_b}) == []


def test_prepare_reports_diagnostics_recounted_from_the_shards(tmp_path):
    from grn_jax.data import DataConfig, IngestConfig, QCConfig, ShardStore, TokenizeConfig, prepare
    from grn_jax.data.pipeline import format_summary
    from grn_jax.types import GeneNetwork
    from tests.data._helpers import toy_adata

    cfg = DataConfig(ingest=IngestConfig(cell_type_column="cell_type"),
                     qc=QCConfig(min_counts=50, max_counts=None, min_genes=10),
                     tokenize=TokenizeConfig(n_bins=20, max_genes=15, min_seq_bucket=8, min_edge_bucket=4))
    g = [f"g{i}" for i in range(40)]
    own = GeneNetwork(np.array(g[:6]), np.array(g[1:7]), np.ones(6), np.zeros(6))
    pooled = GeneNetwork(np.array(g[:20]), np.array(g[20:]), np.ones(20), np.zeros(20))
    s = prepare(toy_adata(), tmp_path / "o", cfg, graph={"t0": own, "t1": pooled, "t2": pooled, "__pooled__": pooled})
    d = s["graph_diagnostics"]["graph"]
    store = ShardStore(tmp_path / "o")
    cells = [store.cell(i) for i in range(len(store))]
    tokens = sum(len(c["gene_ids"]) for c in cells)
    covered = sum(len(set(c["edge_src"].tolist()) | set(c["edge_dst"].tolist())) for c in cells)
    edges = [len(c["edge_src"]) for c in cells]
    assert d["gene_tokens"] == tokens and d["cells"] == len(cells)
    assert d["gene_tokens_with_edge_fraction"] == pytest.approx(covered / tokens)
    assert d["edges_per_cell"]["median"] == np.median(edges) and d["cells_without_edges"] == edges.count(0)
    assert d["fell_back_to_pooled"] == ["t1", "t2"]
    assert 0 <= d["diffusion"]["query_rel_change"] < 1 and d["diffusion"]["beta"] == 0.1
    assert "cell_graph" not in s["graph_diagnostics"]
    import json
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["summary"]["graph_diagnostics"] == \
        s["graph_diagnostics"]
    assert "use the pooled network, not their own: t1, t2" in format_summary(s)


def test_spectrum_work_is_budgeted_but_keeps_a_minimum_sample(monkeypatch):
    import grn_jax.graphs.diagnostics as dg

    diag = GraphDiagnostics(sample_cells=10)
    # 10 cells, each a 6-node path over positions 1..6
    src = np.tile(np.arange(1, 6), 10)
    diag.add(np.full(10, 6), np.arange(0, 51, 5), src, src + 1, np.ones(50))
    assert diag.summary(0.1)["sample_cells"] == 10
    monkeypatch.setattr(dg, "SPECTRUM_BUDGET", 6**3 * 6 + 1)  # room for 6 cells
    assert diag.summary(0.1)["sample_cells"] == 6
    monkeypatch.setattr(dg, "SPECTRUM_BUDGET", 1)
    assert diag.summary(0.1)["sample_cells"] == dg.MIN_SPECTRA
