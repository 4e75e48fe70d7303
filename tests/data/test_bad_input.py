"""Bad input to `grn-jax prepare`: one line on stderr, exit 2, no traceback, nothing half-written."""

import json

import numpy as np
import pytest

from grn_jax.cli import main
from grn_jax.data import DataConfig, GeneVocab, ShardStore, load_config, prepare
from grn_jax.data.binning import row_ranks

from ._helpers import toy_adata
from tests._cli import fails_in_one_line

QC_OFF = ["--min-counts", "0", "--min-genes", "1"]


_fails = fails_in_one_line


@pytest.fixture
def h5ad(tmp_path):
    path = tmp_path / "in.h5ad"
    toy_adata().write_h5ad(path)
    return path


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated"])
def test_unreadable_h5ad_is_one_line(tmp_path, h5ad, capsys, kind):
    bad = tmp_path / f"{kind}.h5ad"
    content = {"empty": b"", "garbage": b"not an hdf5 file" * 64, "truncated": h5ad.read_bytes()[:5000]}[kind]
    bad.write_bytes(content)
    for backed in ([], ["--backed"]):
        _fails(capsys, ["prepare", str(bad), "--out", str(tmp_path / "out"), *backed], str(bad))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("yaml_text, needle", [
    ("tokenize: {max_genes: 300.7}\n", "tokenize.max_genes"),
    ("qc: {min_genes: '5'}\n", "qc.min_genes"),
    ("ingest: {use_raw: 1}\n", "ingest.use_raw"),
    ("- qc\n- tokenize\n", "must hold a mapping"),
    ("qc: [1, 2]\n", "'qc' must be a mapping"),
    ("data: [1]\n", "`data:` must be a mapping"),
    ("qc: {min_genes: [\n", "not valid YAML"),
])
def test_config_yaml_wrong_types_are_refused(tmp_path, h5ad, capsys, yaml_text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ValueError) as e:
        load_config(str(cfg))
    assert needle in str(e.value)
    _fails(capsys, ["prepare", str(h5ad), "--out", str(tmp_path / "out"), "--config", str(cfg)], needle)


def test_config_accepts_the_right_types():
    cfg = DataConfig.from_dict({"tokenize": {"max_genes": 300, "seq_buckets": [64, 512]},
                                "qc": {"min_counts": 10, "max_counts": None}})
    assert cfg.tokenize.max_genes == 300 and cfg.tokenize.seq_buckets == (64, 512)
    assert cfg.qc.min_counts == 10.0 and isinstance(cfg.qc.min_counts, float)


@pytest.mark.parametrize("text, needle", [
    ('{"special_tokens": ["<pad>", "<mask>", "<cls>"]}', "no 'genes' list"),
    ('["g0", "g1"]', "JSON object"),
    ('{"genes": ["g0", ', "not valid JSON"),
])
def test_vocab_json_without_genes_or_invalid_names_the_file(tmp_path, h5ad, capsys, text, needle):
    vocab = tmp_path / "vocab.json"
    vocab.write_text(text)
    with pytest.raises(ValueError, match=needle):
        GeneVocab.load(vocab)
    _fails(capsys, ["prepare", str(h5ad), "--out", str(tmp_path / "out"), "--vocab", str(vocab)], needle, str(vocab))


def test_out_pointing_at_an_existing_file(tmp_path, h5ad, capsys):
    out = tmp_path / "taken"
    out.write_text("keep me")
    _fails(capsys, ["prepare", str(h5ad), "--out", str(out)], "existing file", str(out))
    assert out.read_text() == "keep me"


def test_row_ranks_of_a_block_without_entries():
    for method in ("auto", "hist", "sort"):
        less, equal = row_ranks(np.zeros(4, np.int64), np.zeros(0, np.float32), method=method)
        assert less.shape == equal.shape == (0,)


def test_prepare_outcome_does_not_depend_on_chunk_size_with_empty_cells(tmp_path):
    a = toy_adata(n_cells=12)
    x = a.X.tolil()
    x[[0, 5, 6]] = 0  # cells with no counts: a chunk of 1 (or of cells 5-6) holds only them
    a.X = x.tocsr()
    hashes = set()
    for chunk in (1, 2, 5, 64):
        cfg = DataConfig.from_dict({"qc": {"min_counts": None, "max_counts": None, "min_genes": 0},
                                    "shards": {"chunk_cells": chunk}})
        summary = prepare(a, tmp_path / f"c{chunk}", cfg)
        assert summary["cells"]["cells_kept"] == 12 and summary["tokens"]["per_cell_min"] == 0
        hashes.add(summary["content_hash"])
    assert len(hashes) == 1
    store = ShardStore(tmp_path / "c1", verify=True)
    assert [len(store.cell(i)["gene_ids"]) for i in (0, 5, 6)] == [0, 0, 0]


def _net(tmp_path, pairs):
    path = tmp_path / "net.tsv"
    path.write_text("regulator\ttarget\tmi\tpvalue\n" + "".join(f"{r}\t{t}\t0.5\t0.01\n" for r, t in pairs))
    return path


def test_network_without_usable_edge_fails_unless_allowed(tmp_path, h5ad, capsys):
    net = _net(tmp_path, [("ENSG1", "ENSG2"), ("ENSG3", "ENSG1")])  # no gene of the data
    out = tmp_path / "out"
    argv = ["prepare", str(h5ad), "--out", str(out), "--network", str(net), *QC_OFF]
    _fails(capsys, argv, "no edge", "--allow-empty-graph")
    assert not out.exists()
    assert main(argv + ["--allow-empty-graph"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "graph-less" in captured.err and "WARNING" in captured.out
    m = json.loads((out / "manifest.json").read_text())
    assert m["summary"]["tokens"]["edges_kept"] == 0 and len(m["summary"]["warnings"]) == 1


def test_network_whose_edges_no_cell_expresses_fails(tmp_path, capsys):
    a = toy_adata(n_cells=10)
    x = a.X.tolil()
    x[:, 0] = 0  # g0 is never expressed: the only edge g0-g1 reaches no cell
    a.X = x.tocsr()
    a.write_h5ad(tmp_path / "in.h5ad")
    net = _net(tmp_path, [("g0", "g1")])
    argv = ["prepare", str(tmp_path / "in.h5ad"), "--out", str(tmp_path / "out"), "--network", str(net),
            *QC_OFF]
    _fails(capsys, argv, "no cell has an edge")
    assert not (tmp_path / "out").exists()  # the shards written before the check are removed
    assert main(argv + ["--allow-empty-graph"]) == 0


def test_a_failed_prepare_leaves_no_shards(tmp_path):
    a = toy_adata(n_cells=20)
    cfg = DataConfig.from_dict({"qc": {"min_counts": 0, "max_counts": None, "min_genes": 1},
                                "shards": {"chunk_cells": 4, "cells_per_shard": 4}})

    class Exploding:  # a graph source that fails on the third chunk, after two shards were written
        report = {}
        calls = 0

        def cell_edges(self, cell_idx, genes):
            Exploding.calls += 1
            if Exploding.calls == 3:
                raise ValueError("boom")
            from grn_jax.data import CellEdges

            return CellEdges.empty(len(cell_idx))

        def cell_neighbours(self, cell_idx, genes):
            raise AssertionError("not used")

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="boom"):
        prepare(a, out, cfg, graph=Exploding())
    assert Exploding.calls == 3 and not out.exists()


def test_a_corrupt_manifest_names_the_file(tmp_path, capsys):
    a = toy_adata(n_cells=10)
    cfg = DataConfig.from_dict({"qc": {"min_counts": 0, "max_counts": None, "min_genes": 1}})
    prepare(a, tmp_path / "shards", cfg)
    manifest = tmp_path / "shards" / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(ValueError, match="manifest.json.*not valid JSON"):
        ShardStore(tmp_path / "shards")
