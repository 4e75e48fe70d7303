"""`grn-jax report` renders from a tiny real run directory.

Fast tests: the simulated-data tiny model (tests/tasks/_toy.py: 30 genes, one
bucket) pretrains a few real steps, so metrics.jsonl holds real train and val
records; the UMAP input is an .h5ad whose obsm holds log-expression, and the
evaluation results are `TaskResult`s built from `annotation_scores` and from toy
scores (ROC / PR from sklearn, TF importances) — the renderer's inputs, not a model's
quality. The slow test runs the whole chain: `embed` and the three task functions.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.tasks._toy import data_config, simulated

STEPS = 3


def _pretrain(root: Path, sim) -> Path:
    """A real `pretrain` of the toy model for STEPS steps with one validation; returns the run directory."""
    from grn_jax.config import build_run_config
    from grn_jax.data import prepare
    from grn_jax.train.loop import pretrain

    prepare(sim.adata, root / "shards", data_config(), graph=sim.network, overwrite=True)
    run_dir = root / "run"
    cfg = build_run_config({
        "name": "report_toy", "data": {"shards": str(root / "shards"), "shuffle": False},
        "model": {"preset": "tiny", "n_bins": 8, "d_model": 16, "n_layers": 1, "n_heads": 2, "mlp_dim": 16},
        "train": {"run_dir": str(run_dir), "steps": STEPS, "batch_size": 8, "eval_every": STEPS,
                  "eval_batches": 1, "val_fraction": 0.2, "log_every": 1, "checkpoint_every": STEPS,
                  "tensorboard": False, "progress": False, "async_checkpoint": False},
        "mesh": {"data": -1},
    })
    pretrain(cfg, log=lambda s: None)
    return run_dir


def _toy_results(sim, eval_dir: Path) -> None:
    """annotation (real `annotation_scores` on expression features), edge prediction and attention (toy scores)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    from grn_jax.tasks import TaskResult, annotation_scores

    x = np.log1p(np.asarray(sim.adata.X.todense(), np.float32))
    labels = sim.adata.obs["cell_type"].astype(str).to_numpy()
    table, details = annotation_scores({"grn_jax": x, "pca_logreg": x}, labels, pca_methods=("pca_logreg",))
    TaskResult("annotation", {"all": table}, {"cells": len(labels)}, {}, {"all": details}).write(eval_dir)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    curves = {}
    for m, shift in (("grn_jax", 1.0), ("graph_only", 0.2)):
        s = rng.normal(size=100) + shift * y
        fpr, tpr, _ = roc_curve(y, s)
        prec, rec, _ = precision_recall_curve(y, s)
        curves[m] = {"roc": np.stack([fpr, tpr], 1).tolist(), "pr": np.stack([rec, prec], 1).tolist()}
    edge = {"held_out_cells": {"grn_jax": {"auroc": {"value": 0.75, "ci": [0.7, 0.8]}},
                               "graph_only": {"auroc": {"value": 0.55, "ci": [0.5, 0.6]}}}}
    TaskResult("edge_prediction", edge, {}, {}, {"curves": curves}).write(eval_dir)
    att = {"tf_enrichment": {"grn_jax": {"rho": 1.25, "p_value": 0.02}}}
    TaskResult("attention", att, {}, {}, {"phi": rng.uniform(0.01, 1, 30).tolist(),
                                          "is_tf": [i < 6 for i in range(30)]}).write(eval_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import anndata

    root = tmp_path_factory.mktemp("report_run")
    sim = simulated(n_cells=120, seed=1)
    run_dir = _pretrain(root, sim)
    _toy_results(sim, run_dir / "eval")
    emb = anndata.AnnData(obs=sim.adata.obs[["cell_type"]].copy())
    emb.obsm["X_grn_mean"] = np.log1p(np.asarray(sim.adata.X.todense(), np.float32))
    embedded = root / "embedded.h5ad"
    emb.write_h5ad(embedded)
    return {"run_dir": run_dir, "embedded": embedded}


def test_report_sections_and_figures(run):
    from grn_jax.reporting import write_report

    rep = write_report(run["run_dir"], embedded=run["embedded"], log=lambda s: None)
    out = run["run_dir"] / "report"
    assert rep.missing == []
    assert rep.sections == ["training curves", "umap", "annotation", "edge_prediction", "attention"]
    for fig in ("training_curves.png", "umap.png", "confusion_all.png", "roc_pr.png", "tf_attention.png"):
        assert fig in rep.figures
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for heading in ("## Training curves", "## Cell embeddings (UMAP)", "## Evaluation: annotation",
                    "## Evaluation: edge_prediction", "## Evaluation: attention"):
        assert heading in md
    for fig in rep.figures:
        assert f"]({fig})" in md and f"src='{fig}'" in page
    # the numbers in the page are the run's and the evaluations' own
    train = [json.loads(line) for line in (run["run_dir"] / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("kind") == "train"]
    assert len(train) == STEPS
    assert f"train loss {train[0]['loss']:.4f} -> {train[-1]['loss']:.4f}" in md
    ann = json.loads((run["run_dir"] / "eval" / "annotation.json").read_text())
    f1 = ann["metrics"]["all"]["grn_jax"]["macro_f1"]
    assert f"{f1['mean']:.3f} ± {f1['sd']:.3f}" in md
    edge = json.loads((run["run_dir"] / "eval" / "edge_prediction.json").read_text())
    auroc = edge["metrics"][next(iter(edge["metrics"]))]["grn_jax"]["auroc"]
    assert f"{auroc['value']:.3f} [{auroc['ci'][0]:.3f}, {auroc['ci'][1]:.3f}]" in md
    assert "<table>" in page and "<h2>Training curves</h2>" in page


def test_missing_parts_are_named_with_the_command(run, tmp_path):
    from grn_jax.reporting import write_report

    rep = write_report(run["run_dir"], out_dir=tmp_path / "r", eval_dir=tmp_path / "none", log=lambda s: None)
    assert rep.missing == ["umap", "annotation", "edge_prediction", "attention"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "not available: run `grn-jax eval edge_prediction DATA --checkpoint" in md
    assert "not available: pass --embedded" in md


def test_bad_inputs_are_refused(run, tmp_path):
    from grn_jax.reporting import write_report

    with pytest.raises(ValueError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no training records"):
        write_report(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"no obsm\['X_nope'\]"):
        write_report(run["run_dir"], out_dir=tmp_path / "r", embedded=run["embedded"], embedding_key="X_nope")
    with pytest.raises(ValueError, match=r"no obs\['kind'\]"):
        write_report(run["run_dir"], out_dir=tmp_path / "r", embedded=run["embedded"], label_key="kind")


def test_cli_report(run, tmp_path, capsys):
    from grn_jax.cli import main

    assert main(["report", str(run["run_dir"]), "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "report.html").is_file()
    assert "report:" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "grn-jax report: error: report: run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_report_from_the_whole_chain(tmp_path):
    """pretrain -> embed -> annotation, edge prediction, attention evaluations -> report (many compiles)."""
    from grn_jax.graphs.network_io import write_network
    from grn_jax.inference import GraphSpec
    from grn_jax.inference.embed import embed
    from grn_jax.reporting import write_report
    from grn_jax.tasks import evaluate_annotation, evaluate_attention, evaluate_edge_prediction

    sim = simulated(n_cells=120, seed=1)
    run_dir = _pretrain(tmp_path, sim)
    net, h5ad, embedded = tmp_path / "net.tsv", tmp_path / "cells.h5ad", tmp_path / "embedded.h5ad"
    write_network(sim.network, net)
    graph = GraphSpec(network=str(net))
    sim.adata.write_h5ad(h5ad)
    embed(run_dir, h5ad, embedded, graph=graph, batch_size=40, progress=False, log=lambda s: None)
    quiet = {"log": lambda s: None}
    evaluate_annotation(run_dir, h5ad, label_key="cell_type", graph=graph, batch_size=40, **quiet).write(
        run_dir / "eval")
    evaluate_edge_prediction(run_dir, h5ad, graph=graph, n_boot=20, batch_size=40, **quiet).write(run_dir / "eval")
    evaluate_attention(run_dir, h5ad, graph=graph, tf_column="is_tf", n_perm=50, batch_size=40, **quiet).write(
        run_dir / "eval")
    rep = write_report(run_dir, embedded=embedded, log=lambda s: None)
    assert rep.missing == []
    assert {"umap.png", "confusion_all.png", "roc_pr.png", "tf_attention.png"} <= set(rep.figures)
