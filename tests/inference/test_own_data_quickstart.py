"""`grn-jax quickstart --data`: the whole path on a small simulated h5ad, and its one-line refusals."""

import json

import numpy as np
import pytest

from grn_jax.cli import main
from grn_jax.datasets.simulate import simulate
from grn_jax.inference.own_data import split_held_out

TINY = ["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.mlp_dim=32", "train.batch_size=8",
        "train.eval_every=10", "train.log_every=5", "train.checkpoint_every=10"]


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    sim = simulate(n_cells=240, n_genes=60, n_cell_types=3, knockouts=0, seed=1, mean_library_size=1500.0)
    ad = sim.adata
    ad.obs = ad.obs[["cell_type"]].copy()
    ad.obs_names = [f"cell_{i}" for i in range(ad.n_obs)]
    path = tmp_path_factory.mktemp("own") / "cells.h5ad"
    ad.write_h5ad(path)
    return path


def test_quickstart_on_own_data_end_to_end(h5ad, tmp_path, capsys):
    out = tmp_path / "qs"
    rc = main(["quickstart", "--data", str(h5ad), "--label-key", "cell_type", "--out", str(out), "--steps", "20",
               *sum((["--set", o] for o in TINY), [])])
    assert rc == 0
    text = capsys.readouterr().out
    verdict = [line for line in text.splitlines() if line.startswith("VERDICT")]
    assert len(verdict) == 1 and "PCA-50" in verdict[0] and "random-init" in verdict[0] and "chance" in verdict[0]
    ann = json.loads((out / "eval" / "annotation.json").read_text())
    methods = ann["metrics"]["all"]
    assert {"grn_jax", "random_init", "pca_logreg"} <= set(methods)
    for m in ("grn_jax", "random_init", "pca_logreg"):
        assert 0.0 <= methods[m]["macro_f1"]["mean"] <= 1.0
    # only held-out cells are scored: the pretraining cells file and the evaluated cells are disjoint
    import anndata

    pre = set(anndata.read_h5ad(out / "data" / "pretrain_cells.h5ad").obs_names)
    held = set(anndata.read_h5ad(out / "data" / "held_out_cells.h5ad").obs_names)
    assert not pre & held and len(pre) + len(held) == 240
    assert ann["counts"]["all"]["cells"] <= len(held)
    # the regulators came from the data (the simulated gene names match no shipped TF) and the log says so
    assert "most variable genes" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["cells"]["held_out"] == len(held)


def test_split_holds_out_every_label_and_is_seeded():
    labels = np.array(["a"] * 10 + ["b"] * 3 + ["c"] * 2)
    held = split_held_out(labels, 0.25, seed=0)
    for lab in "abc":
        k = held[labels == lab].sum()
        assert 1 <= k < (labels == lab).sum()
    assert np.array_equal(held, split_held_out(labels, 0.25, seed=0))
    with pytest.raises(ValueError, match="only 1 cell"):
        split_held_out(np.array(["a", "a", "b"]), 0.25, seed=0)


@pytest.mark.parametrize("args,match", [
    (["--label-key", "nope"], "'nope' is not a column"),
    ([], "--data needs --label-key"),
    (["--label-key", "cell_type", "--steps", "0"], "--steps must be >= 1"),
])
def test_bad_arguments_are_one_line_errors(h5ad, tmp_path, capsys, args, match):
    rc = main(["quickstart", "--data", str(h5ad), "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and "Traceback" not in err


def test_missing_file_is_refused(tmp_path, capsys):
    rc = main(["quickstart", "--data", str(tmp_path / "none.h5ad"), "--label-key", "c", "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
