"""Curated prior networks: merge with inferred edges by hand, and `grn-jax prepare --prior`."""

import json

import numpy as np
import pandas as pd
import pytest

from grn_jax.cli import main
from grn_jax.graphs.prior import merge_with_prior, with_prior
from grn_jax.types import GeneNetwork
from tests.data._helpers import toy_adata


def _net(pairs, w=None):
    r, t = zip(*pairs)
    w = np.ones(len(pairs)) if w is None else np.asarray(w, float)
    return GeneNetwork(np.array(r, object), np.array(t, object), w, np.zeros(len(pairs)), params={"method": "x"})


def test_merge_keeps_inferred_weights_and_adds_prior_edges_at_the_median():
    inferred = _net([("A", "B"), ("B", "C"), ("C", "D")], [0.5, 0.3, 0.9])
    prior = _net([("A", "B"), ("D", "E"), ("E", "E"), ("X", "Y")])
    m = merge_with_prior(inferred, prior)
    got = {(r, t): w for r, t, w in zip(m.regulator, m.target, m.mi)}
    assert got == {("A", "B"): 0.5, ("B", "C"): 0.3, ("C", "D"): 0.9, ("D", "E"): 0.5, ("X", "Y"): 0.5}
    assert m.params["n_prior_added"] == 2 and m.params["n_prior_also_inferred"] == 2  # A->B and the self-loop
    assert np.isnan(m.pvalue[3:]).all() and (m.pvalue[:3] == 0).all()
    assert merge_with_prior(inferred, prior, prior_weight=2.0).mi[-1] == 2.0
    with pytest.raises(ValueError, match="prior_weight"):
        merge_with_prior(inferred, prior, prior_weight=0.0)


def test_with_prior_per_type_mapping_keeps_shared_networks_shared():
    pooled, own = _net([("A", "B")]), _net([("C", "D")])
    prior = _net([("A", "C")])
    out = with_prior({"t0": own, "t1": pooled, "t2": pooled}, prior)
    assert out["t1"] is out["t2"] and out["t0"] is not out["t1"]
    assert set(zip(out["t0"].regulator, out["t0"].target)) == {("C", "D"), ("A", "C")}
    assert with_prior(None, prior, "alone") is prior
    with pytest.raises(ValueError, match="alone"):
        with_prior(None, prior, "merge")
    with pytest.raises(ValueError, match="only network"):
        with_prior(own, prior, "alone")
    with pytest.raises(ValueError, match="prior mode"):
        with_prior(own, prior, "both")


def test_prepare_with_prior_alone_and_merged(tmp_path, capsys):
    a = toy_adata()
    a.write_h5ad(tmp_path / "in.h5ad")
    # an OmniPath-format table: two transcriptional edges among the data's genes, a complex, a PPI row
    pd.DataFrame({"source": ["g0", "g4", "COMPLEX:g1_g2", "g5"], "target": ["g1", "g5", "g3", "g6"],
                  "type": ["transcriptional", "transcriptional", "transcriptional", "post_translational"]}
                 ).to_parquet(tmp_path / "prior.parquet")
    (tmp_path / "net.tsv").write_text("regulator\ttarget\tmi\tpvalue\ng0\tg1\t0.5\t0.01\ng2\tg3\t0.7\t0.01\n")
    common = ["--min-counts", "10", "--min-genes", "5", "--n-bins", "11", "--max-genes", "20"]

    def run(out, *extra):
        assert main(["prepare", str(tmp_path / "in.h5ad"), "--out", str(tmp_path / out), *extra, *common]) == 0
        return json.loads((tmp_path / out / "manifest.json").read_text())["summary"]

    alone = run("alone", "--prior", str(tmp_path / "prior.parquet"), "--prior-mode", "alone")
    assert alone["graph"]["network"]["edges_kept"] == 2  # g0->g1, g4->g5
    merged = run("merged", "--network", str(tmp_path / "net.tsv"), "--prior", str(tmp_path / "prior.parquet"))
    assert merged["graph"]["network"]["edges_kept"] == 3  # g0->g1 (both), g2->g3, g4->g5
    inferred = run("inferred", "--network", str(tmp_path / "net.tsv"))
    cov = lambda s: s["graph_diagnostics"]["graph"]["gene_tokens_with_edge_fraction"]  # noqa: E731
    assert cov(merged) > cov(inferred) > 0
    assert "graph check" in capsys.readouterr().out
