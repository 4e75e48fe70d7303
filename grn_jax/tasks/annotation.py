"""Cell-type annotation from frozen embeddings (papers/gremln.txt §4.2, Table 1/2).

Mean-pooled frozen cell embeddings -> standardise -> logistic regression; precision,
recall and macro-F1 on the test cells of `n_splits` random stratified splits
(mean ± sd). In the same run, on the same cells and splits:

- `pca_logreg`: PCA-50 (fitted on the training cells) of log-normalised expression
  + logistic regression;
- `vanilla`: the same classifier on the embeddings of a vanilla-attention checkpoint
  (the graph ablation), when one is given;
- `random_init`: the same architecture and seed with the parameters exactly at
  initialisation (`grn_jax.tasks.controls.random_init_model`): what training added;
- `majority` (always the most common training class) and `chance` (a uniform random
  guess over the training classes): the floor every method must clear.

Only cells pretraining never trained on are scored (matched by name against the
run's training split, `grn_jax.tasks.controls.unseen_mask`; the others are left out
and counted), and no cell's graph is chosen by its label: cell-type networks only
through GREmLN's kNN graph integration with a reference of other cells, or one
pooled network (`check_label_free_graph`).

Zero-shot (GREmLN's held-out non-immune cohort): cells of `heldout_types` — types the
encoder never saw in pretraining, which the caller asserts — form their own setting,
evaluated with the same protocol; the other cells form the `in_domain` setting.
Types with fewer than `min_cells_per_type` cells and cells without an embedding are
left out and counted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import anndata
import numpy as np
from sklearn.metrics import confusion_matrix

from grn_jax.inference.checkpoint import Pretrained
from grn_jax.inference.graph_sources import GraphSpec
from grn_jax.tasks.classifiers import linear_classifier
from grn_jax.tasks.controls import (RANDOM_INIT, TRIVIAL, check_label_free_graph, check_reference_disjoint,
                                    random_init_model, trivial_predictions, unseen_mask)
from grn_jax.tasks.features import (cell_embeddings, graph_for, load_checkpoint, log_normalized, obs_column,
                                    read_data)
from grn_jax.tasks.metrics import classification_scores, summarize
from grn_jax.tasks.results import TaskResult
from grn_jax.tasks.splits import check_disjoint, min_count_filter, stratified_splits

METRICS = ("precision", "recall", "macro_f1", "accuracy")


def annotation_scores(features: dict, labels, *, n_splits: int = 3, test_fraction: float = 0.2, seed: int = 0,
                      pca_methods: Sequence[str] = ()) -> tuple[dict, dict]:
    """Score every feature matrix in `features` ({method: [cells, F]}) on the same stratified splits.

    Methods in `pca_methods` get PCA-50 before the classifier; the trivial rows
    `majority` and `chance` (`controls.trivial_predictions`) are scored on the same
    splits. Returns ({method: {metric: summary}}, details with the splits and the
    first split's confusion matrices).
    """
    labels = np.asarray(labels)
    splits = stratified_splits(labels, n_splits=n_splits, test_fraction=test_fraction, seed=seed)
    classes = np.unique(labels)
    per = {m: {k: [] for k in METRICS} for m in (*features, *TRIVIAL)}
    confusion = {}
    for s, (tr, te) in enumerate(splits):  # 3 sklearn fits per method: host-side
        check_disjoint(tr, te)
        for method, x in features.items():
            pred, _, _ = linear_classifier(x[tr], labels[tr], x[te], seed=seed + s,
                                           pca_components=50 if method in pca_methods else None)
            for k, v in classification_scores(labels[te], pred).items():
                per[method][k].append(v)
            if s == 0:
                confusion[method] = confusion_matrix(labels[te], pred, labels=classes).tolist()
        for method, pred in trivial_predictions(labels[tr], len(te), seed + s).items():
            for k, v in classification_scores(labels[te], pred).items():
                per[method][k].append(v)
    table = {m: {k: summarize(v) for k, v in d.items()} for m, d in per.items()}
    details = {"classes": classes.tolist(), "confusion_split0": confusion,
               "split_sizes": [[int(len(tr)), int(len(te))] for tr, te in splits]}
    return table, details


def evaluate_annotation(checkpoint: Union[str, Path, Pretrained], data: Union[str, Path, anndata.AnnData], *,
                        label_key: str, graph: GraphSpec = GraphSpec(),
                        vanilla: Union[str, Path, Pretrained, None] = None, vanilla_graph: Optional[GraphSpec] = None,
                        heldout_types: Sequence[str] = (), n_splits: int = 3, test_fraction: float = 0.2,
                        min_cells_per_type: int = 5, pooling: str = "mean", layer: Optional[str] = None,
                        batch_size: int = 64, seed: int = 0, random_init: bool = True,
                        pretraining_cells: Optional[Sequence[str]] = None,
                        log: Callable[[str], None] = print) -> TaskResult:
    """Cell-type annotation (see the module docstring); returns a `TaskResult` named "annotation".

    `pretraining_cells`: names of the cells the checkpoint trained on, when its shards
    are not at hand (default: read from the run). `random_init=False` drops that row.
    """
    check_label_free_graph(graph, "annotation")
    if vanilla_graph is not None:
        check_label_free_graph(vanilla_graph, "annotation (vanilla_graph)")
    adata = read_data(data)
    n_input = int(adata.n_obs)
    obs_column(adata, label_key, "annotation --label-key")  # a missing column fails before any model runs
    pre = load_checkpoint(checkpoint)
    unseen, seen_report = unseen_mask(pre, adata.obs_names, pretraining_cells)
    if not unseen.any():
        raise ValueError(f"annotation: all {n_input} cells of the data were in the pretraining set of "
                         f"{pre.run_dir}; evaluate on cells it never saw (e.g. its validation cells, or a "
                         f"held-out file)")
    if not unseen.all():
        log(f"annotation: {int((~unseen).sum())} of {n_input} cells were in the pretraining set; left out")
        adata = adata[unseen].copy()
    check_reference_disjoint(graph, adata.obs_names, "annotation")
    labels_all, labelled = obs_column(adata, label_key, "annotation --label-key")
    emb, ok = cell_embeddings(pre, adata, graph=graph, pooling=pooling, batch_size=batch_size)
    feats = {"grn_jax": emb}
    if random_init:
        feats[RANDOM_INIT], r_ok = cell_embeddings(random_init_model(pre), adata, graph=graph, pooling=pooling,
                                                   batch_size=batch_size)
        ok &= r_ok
    van = load_checkpoint(vanilla)
    if van is not None:
        v_emb, v_ok = cell_embeddings(van, adata, graph=vanilla_graph or graph_for(van, graph),
                                        pooling=pooling,
                                      batch_size=batch_size)
        feats["vanilla"] = v_emb
        ok &= v_ok
    feats["pca_logreg"] = log_normalized(adata, layer=layer)
    unknown = sorted(set(heldout_types) - set(labels_all))
    if unknown:
        raise ValueError(f"annotation: heldout_types {unknown} are not values of obs[{label_key!r}] "
                         f"(values: {sorted(set(labels_all))[:20]})")
    counts = {"cells": n_input, "cells_seen_in_pretraining": seen_report["cells_seen_in_pretraining"],
              "cells_without_label": int((~labelled).sum()),
              "cells_without_embedding": int((~ok).sum())}
    ok &= labelled
    settings_cells = {"in_domain" if len(heldout_types) else "all": ~np.isin(labels_all, heldout_types),
                      "zero_shot": np.isin(labels_all, heldout_types)}
    metrics, details = {}, {}
    for setting, member in settings_cells.items():
        if setting == "zero_shot" and not len(heldout_types):
            continue
        keep, small = min_count_filter(labels_all[member & ok], min_cells_per_type)
        idx = np.flatnonzero(member & ok)[keep]
        counts[setting] = {"cells": int(len(idx)), "types_too_small": small,
                           "cells_in_small_types": int(sum(small.values()))}
        if len(np.unique(labels_all[idx])) < 2:
            counts[setting]["skipped"] = "fewer than 2 cell types with enough cells"
            log(f"annotation: {setting} skipped: fewer than 2 cell types with >= {min_cells_per_type} cells")
            continue
        metrics[setting], details[setting] = annotation_scores(
            {m: x[idx] for m, x in feats.items()}, labels_all[idx], n_splits=n_splits,
            test_fraction=test_fraction, seed=seed, pca_methods=("pca_logreg",))
        details[setting]["cells"] = adata.obs_names[idx].astype(str).tolist()
    if not metrics:
        raise ValueError(f"annotation: no setting has >= 2 cell types with >= {min_cells_per_type} cells in "
                         f"obs[{label_key!r}]; counts: {counts}")
    settings = {"checkpoint": pre.run_dir, "vanilla": None if van is None else van.run_dir,
                "label_key": label_key, "heldout_types": list(heldout_types), "n_splits": n_splits,
                "test_fraction": test_fraction, "min_cells_per_type": min_cells_per_type, "pooling": pooling,
                "classifier": "standardise + logistic regression (L2, C=1)", "baseline": "PCA-50 + logistic "
                "regression on log1p(CP10k)", "seed": seed, "random_init": bool(random_init),
                "pretraining_cells": seen_report, "graph": dataclasses.asdict(graph),
                "trivial": "majority: the most common training class; chance: uniform random over the training "
                           "classes"}
    return TaskResult("annotation", metrics, counts, settings, details)
