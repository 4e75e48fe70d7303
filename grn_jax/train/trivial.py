"""The trivial masked-bin predictors every validation is reported beside, and its standard error.

A masked-bin accuracy means little on its own: per-cell quantile bins give most
cells the same bin histogram, so predicting a bin without looking at the cell
already scores well. Two predictors are fitted on the training cells (a seeded
sample of at most `max_cells` of them) and scored on exactly the validation
tokens the model is scored on (the eval step's masks: the same keys, the same
`mask_fn`, so the same positions):

- `gene_mode`: each gene's most common bin over the training cells (genes never
  seen there get the majority bin);
- `majority_bin`: the most common bin over all training tokens.

`accuracy_se(p, n)`: the binomial standard error sqrt(p (1 - p) / n) of an accuracy
over n masked tokens (tokens of one cell are not independent, so it is a floor).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from grn_jax.train.step import EVAL_SEED_OFFSET


@dataclasses.dataclass(frozen=True)
class BinPredictors:
    """gene_mode[vocab id] = that gene's most common training bin; majority = the most common bin overall."""

    gene_mode: np.ndarray
    majority: int
    n_cells: int
    n_tokens: int


def fit_bin_predictors(store, train_idx, vocab_size: int, n_bins: int, *, max_cells: int = 50_000,
                       seed: int = 0) -> BinPredictors:
    """Fit both predictors on the gene tokens of (a seeded sample of at most `max_cells`) training cells."""
    train_idx = np.asarray(train_idx, np.int64)
    if len(train_idx) > max_cells:
        train_idx = np.sort(np.random.default_rng(seed).choice(train_idx, max_cells, replace=False))
    counts = np.zeros(vocab_size * n_bins, np.int64)
    n_tokens, pending, n_pending = 0, [], 0

    def flush():
        if pending:
            counts[:] += np.bincount(np.concatenate(pending), minlength=vocab_size * n_bins)
            pending.clear()

    for i in train_idx:  # one bincount per ~4M tokens, not per cell (the table can be vocab x bins = 1M long)
        cell = store.cell(int(i))
        key = np.asarray(cell["gene_ids"], np.int64) * n_bins + np.asarray(cell["bins"], np.int64)
        pending.append(key)
        n_pending += len(key)
        n_tokens += len(key)
        if n_pending >= 4_000_000:
            flush()
            n_pending = 0
    flush()
    table = counts.reshape(vocab_size, n_bins)
    majority = int(np.argmax(table.sum(axis=0)))
    gene_mode = np.where(table.sum(axis=1) > 0, np.argmax(table, axis=1), majority).astype(np.int32)
    return BinPredictors(gene_mode=gene_mode, majority=majority, n_cells=int(len(train_idx)), n_tokens=n_tokens)


def eval_mask_key(seed: int, batch_index: int) -> jax.Array:
    """The masking key of validation batch `batch_index` (as `grn_jax.train.step.make_eval_step` draws it)."""
    return jax.random.fold_in(jax.random.key(seed + EVAL_SEED_OFFSET), batch_index)


def masked_val_tokens(val_batches, mask_fn, seed: int):
    """Yield (gene ids, true bins) of the masked positions of each local validation batch."""
    masker = jax.jit(mask_fn)
    for i, local in enumerate(val_batches):
        masked = jax.device_get(masker(eval_mask_key(seed, i), local))
        sel = np.asarray(masked.loss_mask) & np.asarray(local.cell_mask)[:, None]
        yield np.asarray(masked.gene_ids)[sel], np.asarray(masked.targets)[sel]


def _all_hosts_sum(values: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values)).reshape(-1, len(values)).sum(axis=0)


def accuracy_se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy `p` over `n` tokens (nan without tokens)."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 else float("nan")


def trivial_val_metrics(data, val_batches, mask_fn, seed: int, *, max_cells: int = 50_000) -> dict:
    """Accuracies (and standard errors) of the trivial predictors on the validation masked tokens.

    `data`: the run's `TrainData` (its store and training indices). Returns flat
    `val_*` entries for the metrics records, plus what the predictors were fitted on.
    """
    pred = fit_bin_predictors(data.store, data.train_idx, data.vocab_size, data.n_bins, max_cells=max_cells,
                              seed=seed)
    hits = np.zeros(3, np.int64)  # gene_mode correct, majority correct, masked tokens
    for genes, targets in masked_val_tokens(val_batches, mask_fn, seed):
        hits += [int((pred.gene_mode[genes] == targets).sum()), int((targets == pred.majority).sum()), len(targets)]
    gene_ok, major_ok, n = (int(v) for v in _all_hosts_sum(hits))
    out = {"val_trivial_masked": n, "trivial_fit_cells": pred.n_cells, "trivial_majority_bin": pred.majority}
    for name, ok in (("gene_mode", gene_ok), ("majority_bin", major_ok)):
        acc = ok / n if n else float("nan")
        out[f"val_{name}_accuracy"] = acc
        out[f"val_{name}_accuracy_se"] = accuracy_se(acc, n)
    return out


def with_controls(val: dict, trivial: dict) -> dict:
    """A validation record with its standard error, the trivial predictors and the margin over the best one."""
    out = {**val, "val_accuracy_se": accuracy_se(val["val_accuracy"], int(val["val_masked"]))}
    if trivial:
        best = max(trivial["val_gene_mode_accuracy"], trivial["val_majority_bin_accuracy"])
        out.update(trivial, val_best_trivial_accuracy=best, val_accuracy_over_best_trivial=val["val_accuracy"] - best)
    return out
