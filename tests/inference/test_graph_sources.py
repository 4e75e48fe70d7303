"""Graphs for new cells at inference: the streamed kNN integration equals the in-memory one (GREmLN 4.2)."""

import json

import numpy as np
import pandas as pd
import pytest

from grn_jax.data import open_counts
from grn_jax.graphs.integration import assign_networks
from grn_jax.graphs.network_io import write_network
from grn_jax.inference import CLS_KEY, GraphSpec, build_graph_source, embed
from grn_jax.inference.graph_sources import check_graph_matches_training
from grn_jax.types import GeneNetwork
from tests.inference._run import toy_adata


def _nets():
    rng = np.random.default_rng(3)
    out = {}
    for t, lo in (("t0", 0), ("t1", 8)):
        reg = np.array([f"g{i}" for i in range(lo, lo + 14)])
        tgt = np.array([f"g{i + 2}" for i in range(lo, lo + 14)])
        out[t] = GeneNetwork(reg, tgt, rng.uniform(0.2, 1.0, 14), rng.uniform(0.0, 0.2, 14), {"type": t})
    return out


@pytest.fixture(scope="module")
def networks_dir(toy_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("nets")
    (d / "networks").mkdir()
    rows = []
    for t, net in _nets().items():
        write_network(net, d / "networks" / f"{t}.tsv")
        rows.append({"cell_type": t, "file": f"networks/{t}.tsv"})
    (d / "summary.json").write_text(json.dumps({"params": {}, "cell_types": rows}))
    ref = toy_run["adata"]
    pd.DataFrame({"cell": ref.obs_names, "cell_type": ref.obs["cell_type"]}).to_csv(d / "labels.tsv", sep="\t",
                                                                                    index=False)
    return d


def test_streamed_knn_integration_equals_in_memory(networks_dir, toy_run, pretrained):
    ref, query = toy_run["adata"], toy_adata(n_cells=13, seed=7)
    spec = GraphSpec(networks_dir=str(networks_dir), reference=str(toy_run["h5ad"]), knn_k=5, alpha=0.1)
    src = open_counts(query)
    got, report = build_graph_source(spec, pretrained.vocab, src, chunk_cells=4, log=lambda m: None)
    want = assign_networks(ref.X, list(ref.var_names), ref.obs["cell_type"].to_numpy(), _nets(), query.X,
                           list(query.var_names), k=5, alpha=0.1, vocab_genes=pretrained.vocab.tokens)
    np.testing.assert_allclose(got.posterior, want.posterior, rtol=0, atol=1e-12)
    present = (query.X > 0).tocsr()
    cols = pretrained.vocab.lookup(list(query.var_names))
    import scipy.sparse as sp

    marked = sp.csr_matrix((present.data, cols[present.indices], present.indptr), shape=(13, len(pretrained.vocab)))
    a, b = got.cell_edges(np.arange(13), marked), want.cell_edges(np.arange(13), marked)
    np.testing.assert_array_equal(a.ptr, b.ptr)
    np.testing.assert_array_equal(a.src, b.src)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.ptr[-1] > 0 and report["k"] == 5


def test_embed_with_integrated_and_cell_type_graphs(networks_dir, toy_run, pretrained):
    query = toy_adata(n_cells=6, seed=9)
    rep = embed(pretrained, query, graph=GraphSpec(networks_dir=str(networks_dir), reference=str(toy_run["h5ad"]),
                                                   knn_k=5), batch_size=8, progress=False, log=lambda m: None)
    assert rep.graph["kind"].startswith("kNN graph integration") and rep.tokens["edges_kept"] > 0
    assert np.isfinite(query.obsm[CLS_KEY]).all()
    typed = toy_adata(n_cells=6, seed=9)
    rep = embed(pretrained, typed, graph=GraphSpec(networks_dir=str(networks_dir), cell_type_column="cell_type"),
                batch_size=8, progress=False, log=lambda m: None)
    assert rep.graph["kind"] == "cell-type networks" and rep.tokens["edges_kept"] > 0


def test_graph_spec_errors():
    with pytest.raises(ValueError, match="either a network .* or a networks folder"):
        GraphSpec(network="a", networks_dir="b").validate()
    with pytest.raises(ValueError, match="needs either cell_type_column"):
        GraphSpec(networks_dir="b").validate()
    with pytest.raises(ValueError, match="trained without graphs"):
        check_graph_matches_training(GraphSpec(network="a"), "none", "ckpt")
