"""`grn-jax quickstart` (and `make quickstart`): bundled PBMC data -> shards -> tiny GREmLN pretraining.

The data stage is `grn_jax.data.quickstart`; this adds pretraining of the
`tiny` config (experiments/configs/tiny.yaml) on the prepared shards and
prints the loss curve, so a new user sees the whole path work on a laptop CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from grn_jax.resources import config_path

TINY_CONFIG = Path(str(config_path("tiny")))  # shipped in the wheel (grn_jax/resources/configs)


def loss_table(run_dir, n_rows: int = 6) -> list[str]:
    """Rows 'steps a-b: mean train loss, val loss' over the run's metrics.jsonl."""
    from grn_jax.train.metrics import read_metrics

    train = read_metrics(run_dir, "train")
    val = {r["step"]: r for r in read_metrics(run_dir, "val")}
    if not train:
        return []
    chunks = np.array_split(np.arange(len(train)), min(n_rows, len(train)))
    rows = []
    for idx in chunks:
        lo, hi = train[idx[0]]["step"], train[idx[-1]]["step"]
        mean = float(np.mean([train[i]["loss"] for i in idx]))
        v = [val[s] for s in sorted(val) if lo < s <= hi + 1]
        vtxt = f", val loss {v[-1]['val_loss']:.4f} (masked-bin acc {v[-1]['val_accuracy']:.3f})" if v else ""
        rows.append(f"steps {lo:4d}-{hi:4d}: mean train loss {mean:.4f}{vtxt}")
    return rows


def quickstart(out_dir="quickstart_out", *, overrides=(), config: Optional[str] = None,
               echo: Callable[[str], None] = print) -> dict:
    """Prepare the bundled PBMC data into `out_dir/shards`, then pretrain `tiny` into `out_dir/runs/tiny`."""
    from grn_jax.config import load_run_config
    from grn_jax.data.quickstart import quickstart as data_quickstart
    from grn_jax.train.loop import pretrain

    summary = data_quickstart(out_dir, echo=echo)
    config = Path(config or TINY_CONFIG)
    out = Path(out_dir)
    run_dir = out / "runs" / "tiny"
    cfg = load_run_config(config, [f"data.shards={out / 'shards'}", f"train.run_dir={run_dir}", *overrides])
    if run_dir.exists():
        echo(f"removing the previous quickstart run {run_dir} (the quickstart always trains from scratch)")
        shutil.rmtree(run_dir)
    echo(f"== pretraining '{cfg.name}' ({config}) for {cfg.train.steps} steps ==")
    result = pretrain(cfg, log=echo)
    rows = loss_table(run_dir)
    for row in rows:
        echo(row)
    echo(f"run directory {run_dir}: config.yaml, provenance.json, metrics.jsonl, tensorboard/, checkpoints/")
    return {"data": summary, "pretrain": result}
