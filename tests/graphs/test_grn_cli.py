"""`grn-jax grn infer` and `grn-jax grn assign` end to end on simulated data."""

import json

import numpy as np
import pandas as pd
import pytest

from grn_jax.cli import main
from grn_jax.datasets import simulate
from grn_jax.graphs import read_cell_type_networks, read_network


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("grn_cli")
    s = simulate(n_cells=600, n_genes=120, n_cell_types=2, knockouts=0, seed=5)
    ad = s.adata
    ad.obs["cell_type"] = ad.obs["cell_type"].astype(str)
    train, query = ad[:480].copy(), ad[480:].copy()
    truth = query.obs["cell_type"].to_numpy()
    del query.obs["cell_type"]  # assignment must not need (or see) query labels
    train.write_h5ad(d / "train.h5ad")
    query.write_h5ad(d / "query.h5ad")
    (d / "tfs.txt").write_text("# simulated TFs\n" + "\n".join(ad.var_names[ad.var.is_tf]) + "\nNOT_IN_DATA\n")
    return d, truth


def test_infer_then_assign(files, capsys):
    d, truth = files
    out = d / "nets"
    rc = main(["grn", "infer", str(d / "train.h5ad"), "--cell-type-key", "cell_type", "--out", str(out),
               "--regulators", str(d / "tfs.txt"), "--method", "aracne", "--bootstraps", "3", "--min-cells", "40",
               "--format", "parquet"])
    assert rc == 0 and "inferred" in capsys.readouterr().out
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert sorted(summary["cell_type"]) == ["type_0", "type_1"] and (summary["n_edges"] > 0).all()
    meta = json.loads((out / "summary.json").read_text())
    assert meta["params"]["n_regulators_missing"] == 1 and meta["params"]["aracne"]["n_bootstraps"] == 3
    net = read_network(out / summary["file"][0])
    assert net.params["n_bootstraps"] == 3 and net.num_edges == summary["n_edges"][0]
    nets, labels = read_cell_type_networks(out)
    assert set(nets) == {"type_0", "type_1"} and len(labels) == 480

    rc = main(["grn", "assign", str(d / "query.h5ad"), "--networks", str(out), "--train", str(d / "train.h5ad"),
               "--out", str(d / "assigned"), "--k", "10"])
    assert rc == 0
    post = pd.read_csv(d / "assigned" / "posterior.tsv", sep="\t", index_col="cell")
    np.testing.assert_allclose(post.sum(axis=1), 1.0, rtol=1e-12)
    assert np.mean(post.idxmax(axis=1).to_numpy() == truth) > 0.8
    edges = pd.read_parquet(d / "assigned" / "cell_edges.parquet")
    assert len(edges) > 0 and set(edges["cell"]) <= set(post.index)
    # Each query cell's edges lie among its expressed genes.
    import anndata as ad

    q = ad.read_h5ad(d / "query.h5ad")
    expressed = {c: set(q.var_names[(q[c].X.toarray() > 0)[0]]) for c in edges["cell"].unique()[:10]}
    for c, genes in expressed.items():
        e = edges[edges["cell"] == c]
        assert set(e["regulator"]) <= genes and set(e["target"]) <= genes


def test_infer_reports_bad_input(files, tmp_path, capsys):
    """Bad input ends in exit code 2 and one line naming the problem (the CLI's contract)."""
    d, _ = files
    cases = [
        (["grn", "infer", str(d / "train.h5ad"), "--cell-type-key", "nope", "--out", str(tmp_path),
          "--regulators", str(d / "tfs.txt")], "cell_type_key 'nope' is not an obs column"),
        (["grn", "infer", str(d / "train.h5ad"), "--cell-type-key", "cell_type", "--out", str(tmp_path)],
         "none of the 1639 regulators"),
        (["grn", "assign", str(d / "query.h5ad"), "--networks", str(tmp_path / "x"), "--train",
          str(d / "train.h5ad"), "--out", str(tmp_path / "y")], "no summary.json"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("grn-jax grn: error: ") and msg in err, err
