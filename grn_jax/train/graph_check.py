"""At pretraining start: does the graph reach the model? Diagnostics over training cells, and `diffusion_beta: auto`.

`check_graphs(cfg, data)` runs `grn_jax.graphs.diagnostics` over (a seeded
sample of) the training cells' graphs, resolves `model.diffusion_beta: auto` to
GREmLN's default 1 / lambda_min (papers/gremln.txt A.5; lambda_min = the median
over sampled cells of each cell's smallest non-zero Laplacian eigenvalue),
logs both and returns the config with a number in place of "auto" (so the saved
config and every checkpoint record the beta actually used) plus the report.
Validation cells are never read.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from grn_jax.graphs.diagnostics import GraphDiagnostics, beta_from_lambda_min, format_graph_diagnostics

# 1/lambda_min is unbounded for long chain-like graphs; beyond this the heat kernel is a
# near-projection onto each component's constant vector and the Chebyshev order grows (58 at beta 100)
MAX_AUTO_BETA = 100.0


def _diagnose(store, indices: np.ndarray, prefix: str, sample_cells: int, seed: int) -> GraphDiagnostics:
    diag = GraphDiagnostics(sample_cells=sample_cells, seed=seed)
    for chunk in np.array_split(indices, max(1, len(indices) // 512)):
        cells = [store.cell(int(i)) for i in chunk]
        lengths = np.array([len(c["gene_ids"]) for c in cells], np.int64)
        per = [len(c[f"{prefix}src"]) for c in cells]
        ptr = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
        cat = lambda k, dt: np.concatenate([np.asarray(c[f"{prefix}{k}"], dt) for c in cells])  # noqa: E731
        diag.add(lengths, ptr, cat("src", np.int64), cat("dst", np.int64), cat("weight", np.float64))
    return diag


def check_graphs(cfg, data, *, max_cells: int = 4096, sample_cells: int = 32,
                 log: Callable[[str], None] = print):
    """(cfg with diffusion_beta resolved, report dict); `data` is a `grn_jax.train.data.TrainData`."""
    rng = np.random.default_rng(cfg.train.seed)
    idx = np.asarray(data.train_idx, np.int64)
    if len(idx) > max_cells:
        idx = np.sort(rng.choice(idx, max_cells, replace=False))
    stored = data.store.manifest.get("summary", {}).get("graph_diagnostics", {})
    graphs = {"graph": "edge_"}
    if data.store.with_cell_graph:
        graphs["cell_graph"] = "cell_edge_"
    diags = {k: _diagnose(data.store, idx, p, sample_cells, cfg.train.seed) for k, p in graphs.items()}
    model = cfg.model
    beta = model.diffusion_beta
    report = {"train_cells_read": int(len(idx))}
    if beta == "auto":
        lm = diags["graph"].summary()["lambda_min_nonzero"]
        if lm is None:
            raise ValueError("model.diffusion_beta: auto needs training cells with edges, but none of the "
                             f"{len(idx)} read has any; give a number (e.g. model.diffusion_beta=0.1)")
        raw = beta_from_lambda_min([lm["median"]])
        beta = min(raw, MAX_AUTO_BETA)
        report["diffusion_beta_auto"] = {"lambda_min_median": lm["median"], "one_over_lambda_min": raw,
                                         "beta": beta, "capped_at": MAX_AUTO_BETA if raw > MAX_AUTO_BETA else None,
                                         "sample_cells": lm["cells"]}
        log(f"model.diffusion_beta: auto -> {beta:.4g} (1 / median lambda_min {lm['median']:.4g} over "
            f"{lm['cells']} training cells" + (f", capped at {MAX_AUTO_BETA:g})" if raw > MAX_AUTO_BETA else ")"))
        cfg = dataclasses.replace(cfg, model=model.replace(diffusion_beta=float(beta)))
    for k, d in diags.items():
        report[k] = d.summary(beta=float(beta), fell_back=stored.get(k, {}).get("fell_back_to_pooled", ()))
        log(format_graph_diagnostics(report[k], f"{k} (training cells)"))
    return cfg, report
