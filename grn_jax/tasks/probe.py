"""Expression reconstruction linear probe (papers/gremln.txt A.7): how much expression the embedding keeps.

A linear regression (ridge, alpha=1, on standardised features) from the frozen
mean-pooled cell embedding to the cell's log-normalised expression of the
`n_genes` most variable genes (chosen on the training cells). R² on held-out
cells over `n_splits` random splits: sklearn's variance-weighted R² over genes
and the pooled R² of all (cell, gene) values (the paper's scatter plot).

Baseline in the same run: the same probe from the top-D principal components of
the expression itself (D = the embedding width, PCA fitted on the training cells)
— what a linear code of the same size keeps. Control: `random_init`, the same
architecture and seed at initialisation (`grn_jax.tasks.controls`). Only cells
pretraining never trained on are probed, and no cell's graph is chosen by an obs
label (pooled network or kNN graph integration).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import anndata
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import ShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from grn_jax.inference.checkpoint import Pretrained
from grn_jax.inference.graph_sources import GraphSpec
from grn_jax.tasks.controls import (RANDOM_INIT, check_label_free_graph, check_reference_disjoint,
                                    random_init_model, unseen_mask)
from grn_jax.tasks.features import cell_embeddings, graph_for, load_checkpoint, log_normalized, read_data
from grn_jax.tasks.metrics import summarize
from grn_jax.tasks.results import TaskResult
from grn_jax.tasks.splits import check_disjoint


def pooled_r2(y_true, y_pred) -> float:
    """1 - SS_res / SS_tot over all values flattened (the R² of a predicted-vs-true scatter)."""
    return float(r2_score(np.ravel(y_true), np.ravel(y_pred)))


def probe_scores(features: dict, expression, *, n_genes: int = 50, n_splits: int = 3, test_fraction: float = 0.2,
                 seed: int = 0, pca_baseline_dim: Optional[int] = None) -> tuple[dict, dict]:
    """Ridge probe from each feature matrix ({method: [cells, F]}) to expression [cells, genes].

    With `pca_baseline_dim`, adds the method "expression_pca" (PCA of the training
    expression). Returns ({method: {"r2": ..., "r2_pooled": ...}}, details).
    """
    expression = np.asarray(expression, np.float64)
    n = expression.shape[0]
    splitter = ShuffleSplit(n_splits=n_splits, test_size=test_fraction, random_state=seed)
    methods = list(features) + (["expression_pca"] if pca_baseline_dim else [])
    per = {m: {"r2": [], "r2_pooled": []} for m in methods}
    genes_used = []
    for tr, te in splitter.split(np.zeros(n)):
        check_disjoint(tr, te)
        var = expression[tr].var(axis=0)
        genes = np.argsort(-var, kind="stable")[:min(n_genes, int((var > 0).sum()))]
        if len(genes) == 0:
            raise ValueError("probe: no gene varies across the training cells")
        genes_used.append(genes.tolist())
        y_tr, y_te = expression[tr][:, genes], expression[te][:, genes]
        for m in methods:
            if m == "expression_pca":
                k = min(pca_baseline_dim, len(tr) - 1, expression.shape[1])
                model = make_pipeline(StandardScaler(), PCA(n_components=k, random_state=seed), Ridge(alpha=1.0))
                x_tr, x_te = expression[tr], expression[te]
            else:
                model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
                x_tr, x_te = features[m][tr], features[m][te]
            pred = model.fit(x_tr, y_tr).predict(x_te)
            per[m]["r2"].append(float(r2_score(y_te, pred, multioutput="variance_weighted")))
            per[m]["r2_pooled"].append(pooled_r2(y_te, pred))
    return {m: {k: summarize(v) for k, v in d.items()} for m, d in per.items()}, {"genes_split0": genes_used[0]}


def evaluate_probe(checkpoint: Union[str, Path, Pretrained], data: Union[str, Path, anndata.AnnData], *,
                   graph: GraphSpec = GraphSpec(), vanilla: Union[str, Path, Pretrained, None] = None,
                   vanilla_graph: Optional[GraphSpec] = None, n_genes: int = 50, n_splits: int = 3,
                   test_fraction: float = 0.2, pooling: str = "mean", layer: Optional[str] = None,
                   batch_size: int = 64, seed: int = 0, random_init: bool = True,
                   pretraining_cells=None, log: Callable[[str], None] = print) -> TaskResult:
    """Expression probe (see the module docstring); returns a `TaskResult` named "probe".

    `pretraining_cells`: names of the cells the checkpoint trained on, when its shards
    are not at hand (default: read from the run). `random_init=False` drops that row.
    """
    check_label_free_graph(graph, "probe")
    if vanilla_graph is not None:
        check_label_free_graph(vanilla_graph, "probe (vanilla_graph)")
    adata = read_data(data)
    n_input = int(adata.n_obs)
    pre = load_checkpoint(checkpoint)
    unseen, seen_report = unseen_mask(pre, adata.obs_names, pretraining_cells)
    if not unseen.any():
        raise ValueError(f"probe: all {n_input} cells of the data were in the pretraining set of {pre.run_dir}; "
                         "evaluate on cells it never saw")
    if not unseen.all():
        log(f"probe: {int((~unseen).sum())} of {n_input} cells were in the pretraining set; left out")
        adata = adata[unseen].copy()
    check_reference_disjoint(graph, adata.obs_names, "probe")
    emb, ok = cell_embeddings(pre, adata, graph=graph, pooling=pooling, batch_size=batch_size)
    feats = {"grn_jax": emb}
    if random_init:
        feats[RANDOM_INIT], r_ok = cell_embeddings(random_init_model(pre), adata, graph=graph, pooling=pooling,
                                                   batch_size=batch_size)
        ok &= r_ok
    van = load_checkpoint(vanilla)
    if van is not None:
        feats["vanilla"], v_ok = cell_embeddings(van, adata, graph=vanilla_graph or graph_for(van, graph),
                                        pooling=pooling,
                                                 batch_size=batch_size)
        ok &= v_ok
    expr = log_normalized(adata, layer=layer)
    idx = np.flatnonzero(ok)
    table, details = probe_scores({m: x[idx] for m, x in feats.items()}, expr[idx], n_genes=n_genes,
                                  n_splits=n_splits, test_fraction=test_fraction, seed=seed,
                                  pca_baseline_dim=emb.shape[1])
    details["gene_names_split0"] = adata.var_names[details["genes_split0"]].tolist()
    counts = {"cells": n_input, "cells_seen_in_pretraining": seen_report["cells_seen_in_pretraining"],
              "cells_without_embedding": int((~ok).sum()), "cells_used": int(len(idx))}
    settings = {"checkpoint": pre.run_dir, "vanilla": None if van is None else van.run_dir, "n_genes": n_genes,
                "n_splits": n_splits, "test_fraction": test_fraction, "pooling": pooling, "seed": seed,
                "probe": "standardise + ridge (alpha=1) -> log1p(CP10k) of the most variable genes",
                "baseline": f"expression_pca: top-{emb.shape[1]} PCs of the expression, same probe",
                "random_init": bool(random_init), "pretraining_cells": seen_report}
    return TaskResult("probe", {"reconstruction": table}, counts, settings, details)
