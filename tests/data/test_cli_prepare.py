"""`grn-jax prepare` through the CLI entry point, and the data stage of the quickstart."""

import json

import numpy as np
import pytest

from grn_jax.cli import main
from grn_jax.data import ShardStore, quickstart

from ._helpers import toy_adata


def test_prepare_command_with_network_and_overrides(tmp_path, capsys):
    a = toy_adata()
    a.write_h5ad(tmp_path / "in.h5ad")
    (tmp_path / "net.tsv").write_text("regulator\ttarget\tmi\tpvalue\ng0\tg1\t0.5\t0.01\ng2\tg3\t0.7\t0.01\n")
    rc = main(["prepare", str(tmp_path / "in.h5ad"), "--out", str(tmp_path / "out"), "--network",
               str(tmp_path / "net.tsv"), "--min-counts", "10", "--min-genes", "5", "--n-bins", "11",
               "--max-genes", "20"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "cells            60 in" in out and "vocabulary       43 tokens" in out
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["config"]["qc"]["min_counts"] == 10.0 and m["bin_spec"]["n_bins"] == 11
    assert m["summary"]["graph"]["network"]["edges_kept"] == 2
    store = ShardStore(tmp_path / "out", verify=True)
    assert max(len(store.cell(i)["gene_ids"]) for i in range(len(store))) <= 20
    assert sum(len(store.cell(i)["edge_src"]) for i in range(len(store))) == m["summary"]["tokens"]["edges_kept"] > 0


def test_quickstart_data_stage_prints_summary_and_writes_shards(tmp_path):
    lines = []
    summary = quickstart(tmp_path / "qs", networks=False, echo=lines.append)
    out = "\n".join(lines)
    for needle in ("700 in, 700 kept, 0 filtered", "765 in data", "vocabulary       768 tokens",
                   "100 expression bins", "seq buckets      [256, 512] used", "content hash"):
        assert needle in out
    store = ShardStore(tmp_path / "qs" / "shards", verify=True)
    assert len(store) == 700 and summary["cells"]["cells_kept"] == 700
    assert np.isin(store.cells_table()["cell_type"], ["Dendritic", "CD14+ Monocyte"]).sum() == 369


@pytest.mark.slow
def test_quickstart_data_stage_with_cell_type_networks(tmp_path):
    lines = []
    summary = quickstart(tmp_path / "qs", echo=lines.append)
    assert summary["networks"]["cell_types"] >= 10 and summary["tokens"]["edges_kept"] > 0
    net = summary["networks"]  # the count names types, not networks (the pooled one is not a type)
    assert net["cell_types"] == 10 == len(net["own_network"]) + len(net["pooled_fallback"])
    assert f"{len(net['own_network'])} of 10 types got their own network" in "\n".join(lines)
    store = ShardStore(tmp_path / "qs" / "shards", verify=True)
    cells = [store.cell(i) for i in range(len(store))]
    assert sum(len(c["edge_src"]) for c in cells) == summary["tokens"]["edges_kept"]
    for c in cells:
        if len(c["edge_src"]):
            assert min(c["edge_src"].min(), c["edge_dst"].min()) >= 1
            assert max(c["edge_src"].max(), c["edge_dst"].max()) <= len(c["gene_ids"])
