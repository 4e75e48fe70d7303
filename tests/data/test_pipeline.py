"""prepare(): shards + manifest; identical tokens from every way of supplying the same counts."""

import json

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from grn_jax.data import (DataConfig, IngestConfig, QCConfig, ShardConfig, ShardStore, TokenizeConfig,
                          load_config, prepare)
from grn_jax.types import GeneNetwork

from ._helpers import toy_adata

CFG = DataConfig(qc=QCConfig(min_counts=50, max_counts=None, min_genes=10),
                 tokenize=TokenizeConfig(n_bins=20, max_genes=15, min_seq_bucket=8, min_edge_bucket=4))


def _cells(store):
    return [store.cell(i) for i in range(len(store))]


def _same_cells(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_manifest_and_summary(tmp_path):
    a = toy_adata(n_cells=60)
    x = a.X.toarray()
    x[0] = 0  # an empty cell: filtered, counted
    a.X = sp.csr_matrix(x)
    s = prepare(a, tmp_path / "out", CFG)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["vocab"]["genes"] == [f"g{i}" for i in range(40)]
    assert m["bin_spec"] == {"n_bins": 20}
    assert m["summary"]["cells"]["filtered_by"]["total_counts_below_min"] >= 1
    assert s["cells"]["cells_kept"] + s["cells"]["cells_filtered"] == 60
    assert m["config"]["qc"]["min_counts"] == 50 and len(m["content_hash"]) == 64
    store = ShardStore(tmp_path / "out", verify=True)
    assert len(store) == s["cells"]["cells_kept"]
    table = store.cells_table()
    assert table["dataset_row"].tolist() == [store.cell(i)["dataset_row"] for i in range(len(store))]
    assert 0 not in table["dataset_row"].tolist()
    lengths = [len(c["gene_ids"]) for c in _cells(store)]
    assert max(lengths) == 15 and s["tokens"]["cells_truncated"] > 0  # max_genes truncation counted


def test_deterministic_and_independent_of_chunking_and_sharding(tmp_path):
    a = toy_adata()
    s1 = prepare(a, tmp_path / "a", CFG)
    s2 = prepare(a, tmp_path / "b", CFG)
    assert s1["content_hash"] == s2["content_hash"]
    cfg = DataConfig(qc=CFG.qc, tokenize=CFG.tokenize, shards=ShardConfig(cells_per_shard=7, chunk_cells=5))
    s3 = prepare(a, tmp_path / "c", cfg)
    assert s3["shards"] > 1
    _same_cells(_cells(ShardStore(tmp_path / "a")), _cells(ShardStore(tmp_path / "c")))


def test_backed_layer_raw_csc_dense_give_identical_tokens(tmp_path):
    a = toy_adata()
    ref = _cells(ShardStore(prepare(a, tmp_path / "ref", CFG)["out_dir"]))
    # backed .h5ad, counts in a layer (X holds something else)
    b = a.copy()
    b.layers["counts"] = b.X.copy()
    b.X = sp.csr_matrix(np.log1p(b.X.toarray()))
    b.raw = a.copy()
    b.write_h5ad(tmp_path / "in.h5ad")
    for ingest in (IngestConfig(layer="counts", backed=True), IngestConfig(use_raw=True, backed=True),
                   IngestConfig(layer="counts", backed=False)):
        cfg = DataConfig(ingest=ingest, qc=CFG.qc, tokenize=CFG.tokenize, shards=ShardConfig(chunk_cells=16))
        s = prepare(tmp_path / "in.h5ad", tmp_path / f"o{ingest.layer}{ingest.use_raw}{ingest.backed}", cfg)
        assert s["backed"] == bool(ingest.backed)
        _same_cells(ref, _cells(ShardStore(s["out_dir"])))
    for X in (sp.csc_matrix(a.X), a.X.toarray()):
        c = anndata.AnnData(X, obs=a.obs, var=a.var)
        _same_cells(ref, _cells(ShardStore(prepare(c, tmp_path / f"x{type(X).__name__}", CFG)["out_dir"])))


def test_ensembl_gene_column_and_networks(tmp_path):
    a = toy_adata()
    cfg = DataConfig(ingest=IngestConfig(gene_column="ensembl", cell_type_column="cell_type"), qc=CFG.qc,
                     tokenize=CFG.tokenize)
    net = GeneNetwork(np.array(["ENSG00000", "ENSG00001"]), np.array(["ENSG00001", "ENSG00002"]),
                      np.array([1.0, 2.0]), np.zeros(2))
    s = prepare(a, tmp_path / "o", cfg, graph={"t0": net, "t1": net, "t2": net})
    store = ShardStore(tmp_path / "o")
    assert store.vocab.genes[0] == "ENSG00000"
    for c in _cells(store):  # every edge joins two of the cell's tokens
        assert np.all((c["edge_src"] >= 1) & (c["edge_src"] <= len(c["gene_ids"])))
        genes = [store.vocab.tokens[c["gene_ids"][p - 1]] for p in c["edge_src"]]
        assert set(genes) <= {"ENSG00000", "ENSG00001"}
    assert s["tokens"]["edges_kept"] > 0


def test_tampering_detected_and_overwrite_guard(tmp_path):
    prepare(toy_adata(), tmp_path / "o", CFG)
    bins = tmp_path / "o" / "shard_00000" / "bins.npy"
    arr = np.load(bins)
    arr[0] += 1
    np.save(bins, arr)
    with pytest.raises(ValueError, match="content hash mismatch"):
        ShardStore(tmp_path / "o", verify=True)
    with pytest.raises(ValueError, match="exists and is not empty"):
        prepare(toy_adata(), tmp_path / "o", CFG)
    prepare(toy_adata(), tmp_path / "o", CFG, overwrite=True)
    ShardStore(tmp_path / "o", verify=True)


def test_yaml_config_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  qc:\n    min_genes: 7\n  tokenize:\n    n_bins: 51\n")
    cfg = load_config(str(path), {"qc.min_counts": 10.0, "tokenize.max_genes": None})
    assert cfg.qc.min_genes == 7 and cfg.tokenize.n_bins == 51 and cfg.qc.min_counts == 10.0
    assert cfg.tokenize.max_genes == TokenizeConfig().max_genes
