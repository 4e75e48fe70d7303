"""Validation during pretraining: every held-out cell, the trivial masked-bin predictors, the standard error.

One real 2-step `pretrain` on the tiny random shards (tests/train/shards.py). Oracles:
the masked-token count of all validation cells from their lengths (mask_bins masks
round(rate * n) of a cell's n genes, at least 1), and the trivial predictors refitted
with a Counter and scored cell by cell on masks drawn one cell at a time.
"""

import collections
import math

import numpy as np
import pytest

from grn_jax.config import build_run_config
from grn_jax.data.collate import collate
from grn_jax.data.masking import mask_bins
from grn_jax.data.shards import ShardStore
from grn_jax.train.data import split_cells
from grn_jax.train.loop import pretrain
from grn_jax.train.metrics import read_metrics
from grn_jax.train.trivial import accuracy_se, eval_mask_key
from tests.train.shards import N_BINS, make_shards

VAL_FRACTION, BATCH, SEED, RATE = 0.25, 8, 3, 0.3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    shards = make_shards(root / "shards")
    cfg = build_run_config({
        "name": "val-test", "data": {"shards": str(shards), "shuffle": False},
        "model": {"preset": "tiny", "n_bins": N_BINS, "d_model": 16, "n_layers": 1, "n_heads": 2, "mlp_dim": 16},
        "train": {"run_dir": str(root / "run"), "steps": 2, "batch_size": BATCH, "eval_every": 2,
                  "eval_batches": 1, "val_fraction": VAL_FRACTION, "seed": SEED, "mask_rate": RATE,
                  "checkpoint_every": 2, "progress": False, "tensorboard": False, "async_checkpoint": False},
        "mesh": {"data": -1},
    })
    logs = []
    pretrain(cfg, log=logs.append)
    return ShardStore(shards), read_metrics(root / "run", "val"), logs


def _mode(counter: collections.Counter, fallback: int) -> int:
    return min(counter, key=lambda b: (-counter[b], b)) if counter else fallback


def test_validation_covers_every_held_out_cell_beside_the_trivial_predictors(run):
    store, val, logs = run
    (rec,) = val
    train_idx, val_idx = split_cells(len(store), VAL_FRACTION)
    assert len(val_idx) == 24 > BATCH  # more than the one batch train.eval_batches=1 would have given
    lengths = [len(store.cell(int(i))["gene_ids"]) for i in val_idx]
    assert rec["val_masked"] == sum(max(1, math.floor(RATE * n + 0.5)) for n in lengths)
    assert rec["val_trivial_masked"] == rec["val_masked"]  # the very same tokens
    assert rec["val_accuracy_se"] == pytest.approx(accuracy_se(rec["val_accuracy"], rec["val_masked"]))
    assert rec["val_accuracy_se"] == pytest.approx(
        math.sqrt(rec["val_accuracy"] * (1 - rec["val_accuracy"]) / rec["val_masked"]))

    # oracle: Counter fits on the training cells, masks drawn one cell at a time
    per_gene, overall = collections.defaultdict(collections.Counter), collections.Counter()
    for i in train_idx:
        c = store.cell(int(i))
        for g, b in zip(c["gene_ids"].tolist(), c["bins"].tolist()):
            per_gene[g][b] += 1
            overall[b] += 1
    majority = _mode(overall, 0)
    gene_ok = major_ok = n = 0
    for k, i in enumerate(val_idx):
        one = collate([store.cell(int(i))], store.bin_spec, store.seq_buckets, store.edge_buckets)
        m = mask_bins(eval_mask_key(SEED, k // BATCH), one.tokens, RATE, store.bin_spec, cell_ids=one.cell_index)
        sel = np.asarray(m.loss_mask)
        genes, targets = np.asarray(m.gene_ids)[sel], np.asarray(m.targets)[sel]
        gene_ok += sum(_mode(per_gene[g], majority) == t for g, t in zip(genes.tolist(), targets.tolist()))
        major_ok += int((targets == majority).sum())
        n += len(targets)
    assert n == rec["val_masked"] and rec["trivial_majority_bin"] == majority
    assert rec["val_gene_mode_accuracy"] == pytest.approx(gene_ok / n)
    assert rec["val_majority_bin_accuracy"] == pytest.approx(major_ok / n)
    best = max(gene_ok, major_ok) / n
    assert rec["val_best_trivial_accuracy"] == pytest.approx(best)
    assert rec["val_accuracy_over_best_trivial"] == pytest.approx(rec["val_accuracy"] - best)
    assert rec["trivial_fit_cells"] == len(train_idx)
    assert any("trivial predictors" in line and "24 held-out cells" in line for line in logs)


def test_report_states_the_validation_beside_its_controls(run):
    from grn_jax.reporting import val_controls_line

    _, val, _ = run
    rec = val[-1]
    line = val_controls_line(rec)
    assert f"{rec['val_accuracy']:.4f} ± {rec['val_accuracy_se']:.4f}" in line
    assert f"{rec['val_gene_mode_accuracy']:.4f}" in line and f"{rec['val_majority_bin_accuracy']:.4f}" in line
    margin = (rec["val_accuracy"] - rec["val_best_trivial_accuracy"]) / rec["val_accuracy_se"]
    assert f"({margin:+.1f} SE)" in line
    assert val_controls_line({"step": 1, "val_accuracy": 0.5, "val_masked": 10}) is None
