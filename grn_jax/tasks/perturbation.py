"""Perturbation tasks on knockouts: reverse prediction (GREmLN §4.5) and response prediction (GRNFormer §4.2).

Data: an AnnData with a condition column (`condition_key`): `control` for
unperturbed cells, otherwise the knocked-out gene's name (the simulator's
`obs["perturbation"]`, or a user's Perturb-seq h5ad with `obs["condition"]`).

**Reverse perturbation** — given a perturbed cell, which gene was knocked out.
Control cells are left out (counted); conditions with fewer than
`min_cells_per_condition` cells are left out (counted). On `n_splits` random
stratified splits of the cells: accuracy, macro-F1 and top-k AUC of
- `grn_jax_frozen`: logistic regression on the frozen mean-pooled embedding;
- `vanilla_frozen`: the same on a vanilla-attention checkpoint, when given;
- `grn_jax_finetuned`: `grn_jax.inference.finetune` (classification head, encoder
  trained) on the split's training cells only, scored on its test cells, when asked;
- `lasso_logreg`: L1 logistic regression on log-normalised expression (the baseline).

**Response prediction** — predict the mean post-knockout expression change from
control cells and the target gene. The model's prediction: knock the gene out *in
silico* (its counts set to zero in the control cells), embed those cells with the
frozen model, and take the shift of the mean embedding; a ridge regression fitted
on the training perturbations maps that shift to the expression change. Scored on
held-out perturbations (whole conditions, `group_splits`) by PCC_delta: the
Pearson correlation, over genes other than the target, of predicted and true
change of the mean log-normalised expression vs control. Baseline `mean_shift`:
the mean change of the training perturbations, the same for every test gene.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import anndata
import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import Ridge

from grn_jax.inference.checkpoint import Pretrained
from grn_jax.inference.graph_sources import GraphSpec
from grn_jax.tasks.classifiers import linear_classifier
from grn_jax.tasks.features import (cell_embeddings, graph_for, load_checkpoint, log_normalized, obs_column,
                                    read_data)
from grn_jax.tasks.metrics import classification_scores, pcc_delta, summarize, top_k_auc
from grn_jax.tasks.results import TaskResult
from grn_jax.tasks.splits import check_disjoint, group_splits, min_count_filter, stratified_splits

REVERSE_METRICS = ("accuracy", "macro_f1", "top_k_auc")


def reverse_scores(features: dict, labels, *, n_splits: int = 3, test_fraction: float = 0.2, seed: int = 0,
                   lasso_methods=(), extra: Optional[Callable] = None) -> tuple[dict, dict]:
    """Score each feature matrix ({method: [cells, F]}) at predicting `labels` on the same splits.

    Methods in `lasso_methods` use L1 logistic regression. `extra(split, train_idx,
    test_idx) -> {method: (pred, scores, classes)}` adds methods that are not a
    classifier on fixed features (fine-tuning). Returns (table, details).
    """
    labels = np.asarray(labels)
    splits = stratified_splits(labels, n_splits=n_splits, test_fraction=test_fraction, seed=seed)
    per: dict = {}
    for s, (tr, te) in enumerate(splits):
        check_disjoint(tr, te)
        outs = {m: linear_classifier(x[tr], labels[tr], x[te], l1=m in lasso_methods, seed=seed + s)
                for m, x in features.items()}
        if extra is not None:
            outs.update(extra(s, tr, te))
        for m, (pred, scores, classes) in outs.items():
            row = per.setdefault(m, {k: [] for k in REVERSE_METRICS})
            sc = classification_scores(labels[te], pred)
            row["accuracy"].append(sc["accuracy"])
            row["macro_f1"].append(sc["macro_f1"])
            row["top_k_auc"].append(top_k_auc(labels[te], scores, classes))
    table = {m: {k: summarize(v) for k, v in d.items()} for m, d in per.items()}
    return table, {"classes": np.unique(labels).tolist(),
                   "split_sizes": [[int(len(tr)), int(len(te))] for tr, te in splits]}


def _finetuned_predictions(pre: Pretrained, adata: anndata.AnnData, labels: np.ndarray, graph: GraphSpec,
                           out_dir: Path, steps: int, batch_size: int, seed: int, log) -> Callable:
    """`extra` for `reverse_scores`: fine-tune on the split's training cells, predict its test cells."""
    from grn_jax.tasks.finetuned import finetune_and_predict

    def extra(split, tr, te):
        return {"grn_jax_finetuned": finetune_and_predict(
            pre, adata, labels, tr, te, graph=graph, out_dir=out_dir / f"split{split}", steps=steps,
            batch_size=batch_size, seed=seed + split, log=log)}

    return extra


def evaluate_reverse_perturbation(checkpoint: Union[str, Path, Pretrained], data: Union[str, Path, anndata.AnnData],
                                  *, condition_key: str = "condition", control: str = "control",
                                  graph: GraphSpec = GraphSpec(), vanilla: Union[str, Path, Pretrained, None] = None,
                                  vanilla_graph: Optional[GraphSpec] = None,
                                  finetune_dir: Union[str, Path, None] = None,
                                  finetune_steps: int = 100, n_splits: int = 3, test_fraction: float = 0.2,
                                  min_cells_per_condition: int = 5, pooling: str = "mean",
                                  layer: Optional[str] = None, batch_size: int = 32, seed: int = 0,
                                  log: Callable[[str], None] = print) -> TaskResult:
    """Reverse perturbation prediction (module docstring); `finetune_dir` set = also fine-tune there."""
    adata = read_data(data)
    cond, has_cond = obs_column(adata, condition_key, "reverse perturbation --condition-key")
    pre = load_checkpoint(checkpoint)
    perturbed = (cond != control) & has_cond
    if not perturbed.any():
        raise ValueError(f"reverse perturbation: every cell has obs[{condition_key!r}] == {control!r}; no "
                         "perturbed cell to classify")
    keep, small = min_count_filter(cond[perturbed], min_cells_per_condition)
    idx = np.flatnonzero(perturbed)[keep]
    sub = adata[idx].copy()
    labels = cond[idx]
    emb, ok = cell_embeddings(pre, sub, graph=graph, pooling=pooling, batch_size=batch_size)
    feats = {"grn_jax_frozen": emb}
    van = load_checkpoint(vanilla)
    if van is not None:
        feats["vanilla_frozen"], v_ok = cell_embeddings(van, sub, graph=vanilla_graph or graph_for(van, graph),
                                        pooling=pooling,
                                                        batch_size=batch_size)
        ok &= v_ok
    feats["lasso_logreg"] = log_normalized(sub, layer=layer)
    counts = {"cells": int(adata.n_obs), "cells_without_condition": int((~has_cond).sum()),
              "control_cells_left_out": int(((cond == control) & has_cond).sum()),
              "conditions_too_small": small, "cells_in_small_conditions": int(sum(small.values())),
              "cells_without_embedding": int((~ok).sum()), "cells_used": int(ok.sum())}
    sub, labels = sub[ok].copy(), labels[ok]
    feats = {m: x[ok] for m, x in feats.items()}
    if len(np.unique(labels)) < 2:
        raise ValueError(f"reverse perturbation: fewer than 2 conditions with >= {min_cells_per_condition} cells "
                         f"remain; counts: {counts}")
    extra = None
    if finetune_dir is not None:
        extra = _finetuned_predictions(pre, sub, labels, graph, Path(finetune_dir), finetune_steps, batch_size,
                                       seed, log)
    table, details = reverse_scores(feats, labels, n_splits=n_splits, test_fraction=test_fraction, seed=seed,
                                    lasso_methods=("lasso_logreg",), extra=extra)
    settings = {"checkpoint": pre.run_dir, "vanilla": None if van is None else van.run_dir,
                "condition_key": condition_key, "control": control, "finetune_dir": finetune_dir and str(finetune_dir),
                "finetune_steps": finetune_steps, "n_splits": n_splits, "test_fraction": test_fraction,
                "min_cells_per_condition": min_cells_per_condition, "pooling": pooling, "seed": seed,
                "top_k_auc": "mean over k = 1..C of top-k accuracy", "baseline": "lasso_logreg: L1 logistic "
                "regression (C=1) on standardised log1p(CP10k)"}
    return TaskResult("reverse_perturbation", {"perturbed_cells": table}, counts, settings, details)


# ----------------------------------------------------------------------------- response prediction

def knockout_copies(adata: anndata.AnnData, genes, *, layer: Optional[str] = None) -> anndata.AnnData:
    """The cells of `adata` once as they are, then once per gene with that gene's counts set to zero.

    obs["in_silico_ko"] says which copy ("control" for the unmodified one).
    """
    x = sp.csr_matrix(adata.layers[layer] if layer is not None else adata.X)
    blocks, names, tags = [x], [f"{n}|control" for n in adata.obs_names], ["control"] * adata.n_obs
    for g in genes:
        col = adata.var_names.get_loc(g)
        ko = x.tolil(copy=True)
        ko[:, col] = 0
        blocks.append(sp.csr_matrix(ko))
        names += [f"{n}|ko_{g}" for n in adata.obs_names]
        tags += [g] * adata.n_obs
    stacked = sp.vstack(blocks).tocsr()
    stacked.eliminate_zeros()
    import pandas as pd

    obs = pd.DataFrame({"in_silico_ko": tags}, index=names)
    if layer is not None:
        return anndata.AnnData(X=stacked.copy(), obs=obs, var=adata.var.copy(), layers={layer: stacked})
    return anndata.AnnData(X=stacked, obs=obs, var=adata.var.copy())


def response_scores(shift_PxD, delta_PxG, targets_P, *, n_splits: int = 3, test_fraction: float = 0.25,
                    seed: int = 0, ridge_alpha: float = 1.0) -> tuple[dict, dict]:
    """PCC_delta of the ridge(shift -> delta) predictor and the mean-shift baseline on held-out perturbations.

    shift_PxD: embedding shift per perturbation; delta_PxG: true expression change;
    targets_P: the knocked-out gene's column in delta (excluded from its PCC).
    """
    shift_PxD, delta_PxG = np.asarray(shift_PxD, np.float64), np.asarray(delta_PxG, np.float64)
    p = delta_PxG.shape[0]
    splits = group_splits(np.arange(p), n_splits=n_splits, test_fraction=test_fraction, seed=seed)
    per = {"grn_jax_in_silico": [], "mean_shift": []}
    undefined = 0
    for tr, te in splits:
        check_disjoint(tr, te, "perturbations")
        preds = {"grn_jax_in_silico": Ridge(alpha=ridge_alpha).fit(shift_PxD[tr], delta_PxG[tr]).predict(
                     shift_PxD[te]),
                 "mean_shift": np.broadcast_to(delta_PxG[tr].mean(0), (len(te), delta_PxG.shape[1]))}
        for m, pred in preds.items():
            vals = []
            for row, j in enumerate(te):
                others = np.arange(delta_PxG.shape[1]) != targets_P[j]
                v = pcc_delta(pred[row, others], delta_PxG[j, others])
                undefined += int(np.isnan(v))
                vals.append(v)
            per[m].append(float(np.nanmean(vals)) if not np.all(np.isnan(vals)) else float("nan"))
    table = {m: {"pcc_delta": summarize(v)} for m, v in per.items()}
    return table, {"splits": [[tr.tolist(), te.tolist()] for tr, te in splits], "undefined_pcc": undefined}


def evaluate_perturbation_response(checkpoint: Union[str, Path, Pretrained], data: Union[str, Path, anndata.AnnData],
                                   *, condition_key: str = "condition", control: str = "control",
                                   graph: GraphSpec = GraphSpec(), min_cells_per_condition: int = 5,
                                   max_control_cells: int = 200, n_splits: int = 3, test_fraction: float = 0.25,
                                   pooling: str = "mean", layer: Optional[str] = None, batch_size: int = 32,
                                   seed: int = 0, log: Callable[[str], None] = print) -> TaskResult:
    """Perturbation response prediction (module docstring); returns a `TaskResult` "perturbation_response"."""
    adata = read_data(data)
    cond, has_cond = obs_column(adata, condition_key, "perturbation response --condition-key")
    pre = load_checkpoint(checkpoint)
    cond = np.where(has_cond, cond, "")  # no condition: neither control nor a knockout (counted below)
    is_ctrl = cond == control
    if is_ctrl.sum() < 2:
        raise ValueError(f"perturbation response: {int(is_ctrl.sum())} control cells (obs[{condition_key!r}] == "
                         f"{control!r}); need >= 2")
    ko = ~is_ctrl & has_cond
    keep, small = min_count_filter(cond[ko], min_cells_per_condition)
    genes = sorted(set(cond[ko][keep]))
    not_genes = [g for g in genes if g not in adata.var_names]
    if not_genes:
        raise ValueError(f"perturbation response: conditions {not_genes[:5]} are not gene names of the data "
                         "(var_names); response prediction needs single-gene knockouts named by their gene")
    if len(genes) < 3:
        raise ValueError(f"perturbation response: {len(genes)} knockouts with >= {min_cells_per_condition} cells; "
                         "need >= 3 to hold some out")
    expr = log_normalized(adata, layer=layer).astype(np.float64)
    ctrl_mean = expr[is_ctrl].mean(0)
    delta_PxG = np.stack([expr[cond == g].mean(0) - ctrl_mean for g in genes])
    ctrl_idx = np.flatnonzero(is_ctrl)
    rng = np.random.default_rng(seed)
    if len(ctrl_idx) > max_control_cells:
        ctrl_idx = np.sort(rng.choice(ctrl_idx, max_control_cells, replace=False))
    copies = knockout_copies(adata[ctrl_idx], genes, layer=layer)
    emb, ok = cell_embeddings(pre, copies, graph=graph, pooling=pooling, batch_size=batch_size)
    n = len(ctrl_idx)
    ok_cells = ok.reshape(len(genes) + 1, n).all(axis=0)  # same control cells in every copy
    if not ok_cells.any():
        raise ValueError("perturbation response: no control cell has an embedding (none expresses a vocabulary gene)")
    emb_KxNxD = emb.reshape(len(genes) + 1, n, -1)[:, ok_cells]
    shift_PxD = emb_KxNxD[1:].mean(1) - emb_KxNxD[0].mean(0)
    targets = np.array([adata.var_names.get_loc(g) for g in genes])
    table, details = response_scores(shift_PxD, delta_PxG, targets, n_splits=n_splits, test_fraction=test_fraction,
                                     seed=seed)
    details["perturbations"] = genes
    counts = {"cells": int(adata.n_obs), "cells_without_condition": int((~has_cond).sum()),
              "control_cells": int(is_ctrl.sum()), "control_cells_used": int(ok_cells.sum()),
              "control_cells_without_embedding": int((~ok_cells).sum()), "perturbations": len(genes),
              "conditions_too_small": small, "undefined_pcc_left_out": details.pop("undefined_pcc")}
    settings = {"checkpoint": pre.run_dir, "condition_key": condition_key, "control": control,
                "min_cells_per_condition": min_cells_per_condition, "max_control_cells": max_control_cells,
                "n_splits": n_splits, "test_fraction": test_fraction, "pooling": pooling, "seed": seed,
                "predictor": "ridge (alpha=1) from the in-silico-knockout shift of the mean embedding",
                "baseline": "mean_shift: the mean change of the training perturbations",
                "pcc_delta": "Pearson over genes other than the target, mean over test perturbations"}
    return TaskResult("perturbation_response", {"held_out_perturbations": table}, counts, settings, details)
