"""`grn-jax quickstart --data FILE.h5ad --label-key COL`: the whole path on a user's own data, with controls.

1. Read and validate the data; split the cells (stratified by label, seeded) into
   a pretraining set and a held-out evaluation set that pretraining never sees.
2. GRN inference on the pretraining cells, one network per labelled type
   (GREmLN); regulators from the shipped TF list when enough of it matches the
   genes, else the most variable genes (said in the log).
3. `prepare` the pretraining cells with QC thresholds and a sequence budget that
   follow the data (logged with the reason).
4. Pretrain with a step count that fits `minutes`, from a measured step time.
5. Embed the held-out cells, each with a graph chosen WITHOUT its label (GREmLN's
   kNN graph integration against the pretraining cells), and run the annotation
   evaluation with its controls (random_init twin, PCA-50 + logistic regression,
   majority, chance), written to `out/eval/annotation.json`.
6. The report, then one verdict line: model vs PCA vs random init vs chance.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

MIN_MATCHED_TFS = 20  # fewer shipped TFs among the genes than this: regulators come from the data
HVG_REGULATORS = 300
HELD_OUT_FRACTION = 0.25
PROBE_STEPS = 12


def _read(path, label_key: str, layer: Optional[str]):
    from grn_jax.data.ingest import read_h5ad

    adata = read_h5ad(path, what="--data")
    p = Path(path)
    if label_key not in adata.obs.columns:
        raise ValueError(f"--label-key {label_key!r} is not a column of {p}'s obs; columns: "
                         f"{list(adata.obs.columns)[:20]}")
    if layer is not None:
        if layer not in adata.layers:
            raise ValueError(f"--layer {layer!r} is not in {p}; layers: {list(adata.layers)} (omit it to use X)")
        adata.X = adata.layers[layer]
    adata.layers.clear()
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()][:3].tolist()
        raise ValueError(f"--data {p}: cell names are not unique (e.g. {dup}); the held-out split and the "
                         "pretraining-cell check go by name: run adata.obs_names_make_unique() first")
    col = adata.obs[label_key]
    missing = col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy()
    return adata, missing


def split_held_out(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool mask of held-out cells: `fraction` of every label (at least 1 cell of each label with >= 2 cells)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        if len(idx) < 2:
            raise ValueError(f"--label-key: label {lab!r} has only {len(idx)} cell; every label needs >= 2 "
                             "(one to pretrain on, one to evaluate); merge or drop it, or choose another column")
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        held[rng.choice(idx, size=k, replace=False)] = True
    return held


def data_qc(adata, echo) -> "object":
    """QC bounds that follow the data: GREmLN's (>= 1,000 UMIs, >= 500 genes) capped at the 2nd percentile.

    `adata` holds the vocabulary genes only (min_genes counts those); totals are
    then over those genes too, a lower bound on the cell's total, so no cell is
    dropped for a total it actually has.
    """
    import scipy.sparse as sp

    from grn_jax.data.config import QCConfig

    x = sp.csr_matrix(adata.X)
    genes = np.diff(x.indptr)
    totals = np.asarray(x.sum(axis=1)).ravel()
    g2, t2 = float(np.percentile(genes, 2)), float(np.percentile(totals, 2))
    min_genes = int(min(500, max(1, math.floor(g2))))
    min_counts = float(min(1000.0, max(1.0, math.floor(t2))))
    echo(f"QC: min_genes {min_genes}, min_counts {min_counts:g} (GREmLN's 500 / 1,000 capped at the data's 2nd "
         f"percentiles {g2:.0f} genes / {t2:.0f} UMIs, so a targeted panel or shallow data keeps its cells); "
         "no upper bound")
    return QCConfig(min_counts=min_counts, max_counts=None, keep_middle=None, min_genes=min_genes)


def choose_regulators(gene_names, echo):
    """The shipped human TF list if >= MIN_MATCHED_TFS of it matches (case-insensitive), else hvg:N."""
    from grn_jax.resources import human_tfs

    tfs = {g.upper() for g in human_tfs()}
    matched = [g for g in gene_names if str(g).upper() in tfs]
    if len(matched) >= MIN_MATCHED_TFS:
        echo(f"regulators: {len(matched)} of the shipped transcription factors match the genes")
        return matched
    n = min(HVG_REGULATORS, len(gene_names))
    echo(f"regulators: only {len(matched)} shipped transcription factors match the genes (need "
         f"{MIN_MATCHED_TFS}); using the {n} most variable genes instead (hvg:{n})")
    return f"hvg:{n}"


def select_genes(adata, n_top: int, echo) -> list:
    """The `n_top` most variable genes (`graphs.variable_genes`: scanpy 'seurat' dispersion), in the data's order.

    Tokens are then the cell's most expressed of these genes: without the
    selection the top-`max_genes` expressed genes of every cell are mostly the
    same abundant, uninformative genes.
    """
    from grn_jax.graphs.celltype_networks import variable_genes

    if adata.n_vars <= n_top:
        echo(f"genes: all {adata.n_vars} genes are in the vocabulary (<= {n_top})")
        return list(adata.var_names)
    chosen = set(variable_genes(adata, n_top))
    echo(f"genes: the {len(chosen)} most variable of {adata.n_vars} genes form the vocabulary (scanpy 'seurat' "
         "dispersion); the other genes still count in each cell's total")
    return [g for g in adata.var_names if g in chosen]


def quickstart_on_data(data, label_key: str, out_dir, *, layer: Optional[str] = None, minutes: float = 10.0,
                       seed: int = 0, max_genes: int = 127, n_bins: int = 51, n_top_genes: int = 1024, overrides=(),
                       steps: Optional[int] = None, echo: Callable[[str], None] = print) -> dict:
    """Run the module docstring's path on `data`; return a summary dict (also written to out/summary.json).

    `steps` fixes the number of pretraining steps instead of fitting them to
    `minutes`; `overrides` are run-config `section.field=value` settings.
    """
    from grn_jax.data.config import DataConfig, IngestConfig, TokenizeConfig
    from grn_jax.data.pipeline import format_summary, prepare
    from grn_jax.graphs import infer_cell_type_networks, write_cell_type_networks
    from grn_jax.inference.graph_sources import GraphSpec
    from grn_jax.tasks import evaluate_annotation

    t_start = time.perf_counter()
    if not minutes > 0:
        raise ValueError(f"--minutes must be > 0, got {minutes}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder")
    adata, missing = _read(data, label_key, layer)
    if missing.any():
        echo(f"{int(missing.sum())} of {adata.n_obs} cells have no {label_key!r} label: left out of everything")
        adata = adata[~missing].copy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    if len(np.unique(labels)) < 2:
        raise ValueError(f"--label-key {label_key!r} has a single label; annotation needs >= 2 cell types")
    held = split_held_out(labels, HELD_OUT_FRACTION, seed)
    train_ad, eval_ad = adata[~held].copy(), adata[held].copy()
    echo(f"== {adata.n_obs} cells x {adata.n_vars} genes, {len(np.unique(labels))} labels: "
         f"{int((~held).sum())} to pretrain, {int(held.sum())} held out for evaluation (never seen) ==")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "data"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    train_h5ad, eval_h5ad = work / "pretrain_cells.h5ad", work / "held_out_cells.h5ad"
    train_ad.write_h5ad(train_h5ad)
    eval_ad.write_h5ad(eval_h5ad)

    # 2. networks per labelled type, on pretraining cells only
    t0 = time.perf_counter()
    regulators = choose_regulators(list(train_ad.var_names), echo)
    inferred = infer_cell_type_networks(train_ad, cell_type_key=label_key, regulators=regulators)
    net_dir = out / "networks"
    if net_dir.exists():
        shutil.rmtree(net_dir)
    write_cell_type_networks(inferred, net_dir, cell_names=list(train_ad.obs_names))
    edges = {t: int(n.num_edges) for t, n in inferred.networks.items()}
    echo(inferred.report())
    echo(f"networks: {min(edges.values())}-{max(edges.values())} edges each, in {net_dir} "
         f"[{time.perf_counter() - t0:.0f} s]")

    # 3. shards of the pretraining cells
    from grn_jax.data.vocab import GeneVocab

    vocab_genes = select_genes(train_ad, n_top_genes, echo)
    vocab = GeneVocab(vocab_genes)
    qc = data_qc(train_ad[:, vocab_genes], echo)  # prepare counts expressed VOCABULARY genes
    tok = TokenizeConfig(n_bins=n_bins, max_genes=max_genes)
    echo(f"tokens: the {max_genes} most expressed genes of each cell (median expressed: "
         f"{int(np.median(np.diff(train_ad.X.tocsr().indptr)))}), {n_bins} rank bins over the kept tokens")
    shards = out / "shards"
    summary = prepare(train_ad, shards, vocab=vocab, config=DataConfig(ingest=IngestConfig(cell_type_column=label_key), qc=qc,
                                                   tokenize=tok).validate(),
                      graph=inferred.networks, overwrite=True, dataset_name=str(data))
    echo(format_summary(summary))

    # 4. pretraining that fits the budget
    run_dir = out / "runs" / "model"
    cfg_over = [f"data.shards={shards}", f"model.n_bins={n_bins}", f"train.seed={seed}", *overrides]
    if steps is None:
        spent = time.perf_counter() - t_start
        step_s = _measure_step_seconds(out, cfg_over, echo)
        reserve = _reserve_seconds(eval_ad.n_obs, train_ad.n_obs)
        steps = int((minutes * 60.0 - (time.perf_counter() - t_start) - reserve) / step_s)
        if steps < 20:
            need = math.ceil((spent + 20 * step_s + reserve) / 60) + 1
            raise ValueError(f"--minutes {minutes:g} leaves time for {max(steps, 0)} training steps at "
                             f"{step_s:.2f} s per step after {spent:.0f} s of data preparation; pass --minutes "
                             f"{need} or more (or --steps N)")
    else:
        step_s = None
    result = _pretrain(run_dir, cfg_over + [f"train.steps={steps}"], echo)
    echo(f"pretrained {result.final_step} steps into {run_dir}")

    # 5. evaluation on held-out cells, graphs by kNN integration (label-free for the evaluated cells)
    graph = GraphSpec(networks_dir=str(net_dir), reference=str(train_h5ad))
    ev = evaluate_annotation(str(run_dir), eval_ad, label_key=label_key, graph=graph, log=echo)
    eval_dir = out / "eval"
    ev.write(eval_dir)
    verdict = verdict_line(ev.metrics["all"], eval_ad.obs[label_key].astype(str).to_numpy())
    summary_out = {"cells": {"pretrain": int((~held).sum()), "held_out": int(held.sum())},
                   "steps": int(result.final_step), "step_seconds": step_s, "networks": edges,
                   "annotation": {m: r["macro_f1"]["mean"] for m, r in ev.metrics["all"].items()},
                   "verdict": verdict, "seconds": time.perf_counter() - t_start}
    _atomic_json(out / "summary.json", summary_out)
    try:
        from grn_jax.reporting import write_report

        write_report(run_dir, out_dir=out / "report", eval_dir=eval_dir, label_key=label_key, log=echo)
    except Exception as e:  # the report is a convenience; the evaluation above is the result
        echo(f"report not written: {type(e).__name__}: {e}")
    echo(verdict)
    return summary_out


def _reserve_seconds(n_eval: int, n_train: int) -> float:
    """Time kept for embedding + kNN integration + the annotation evaluation (measured ~0.05 s a cell on 2 cores)."""
    return 30.0 + 0.06 * (2 * n_eval) + 0.01 * n_train


def _load_cfg(overrides):
    from grn_jax.config import load_run_config
    from grn_jax.resources import config_path

    return load_run_config(Path(str(config_path("own_data"))), overrides)


def _measure_step_seconds(out: Path, overrides, echo) -> float:
    """Median seconds per step after compilation, from a short probe run (deleted afterwards)."""
    from grn_jax.train.loop import pretrain
    from grn_jax.train.metrics import read_metrics

    probe = out / "runs" / "step_time_probe"
    if probe.exists():
        shutil.rmtree(probe)
    cfg = _load_cfg([*overrides, f"train.run_dir={probe}", f"train.steps={PROBE_STEPS}", "train.log_every=4",
                     "train.eval_every=0", f"train.checkpoint_every={PROBE_STEPS}", "train.progress=false",
                     "train.tensorboard=false"])
    pretrain(cfg, log=lambda m: None)
    rates = [r["cells_per_s"] for r in read_metrics(probe, "train") if "cells_per_s" in r][1:]
    shutil.rmtree(probe)
    if not rates:
        raise ValueError("could not measure the step time (no timed steps in the probe run)")
    step_s = cfg.train.batch_size / float(np.median(rates))
    echo(f"measured step time: {step_s * 1000:.0f} ms ({PROBE_STEPS}-step probe, compile excluded)")
    return step_s


def _pretrain(run_dir: Path, overrides, echo):
    from grn_jax.train.loop import pretrain

    if run_dir.exists():
        shutil.rmtree(run_dir)
    cfg = _load_cfg([*overrides, f"train.run_dir={run_dir}", "train.progress=false"])
    return pretrain(cfg, log=echo)


def verdict_line(table: dict, labels: np.ndarray) -> str:
    """One plain line: model vs PCA vs random init vs chance (macro-F1 means over splits, with their spread)."""
    def f(m):
        r = table.get(m)
        return (r["macro_f1"]["mean"], float(np.std(r["macro_f1"]["values"]))) if r else (float("nan"), 0.0)

    model, pca, rnd = f("grn_jax"), f("pca_logreg"), f("random_init")
    n_classes = len(np.unique(labels))
    chance = table["chance"]["macro_f1"]["mean"] if "chance" in table else 1.0 / n_classes
    spread = pca[1] + model[1]
    word = ("beats" if model[0] > pca[0] + spread else
            "is within split spread of" if model[0] >= pca[0] - spread else "is below")
    return (f"VERDICT held-out macro-F1: grn_jax {model[0]:.3f} (+-{model[1]:.3f}) {word} PCA-50 {pca[0]:.3f} "
            f"(+-{pca[1]:.3f}); random-init twin {rnd[0]:.3f}; chance {chance:.3f} (uniform guess, {n_classes} types); "
            f"model/PCA = {model[0] / pca[0]:.2f}, model - random init = {model[0] - rnd[0]:+.3f}")


def _atomic_json(path: Path, obj) -> None:
    from grn_jax._io import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, default=float))
