"""Run metrics: one JSON object per line in `metrics.jsonl`, TensorBoard scalars, a progress bar.

`metrics.jsonl` is the machine-readable record: `{"kind": "train", "step": i, "loss": ...}`
per optimiser step (step i = the i-th update, 0-based, taken from the state
after i updates), `{"kind": "val", ...}` per validation and `{"kind": "event", ...}`
for starts, resumes, checkpoints and stops. On resume, records after the
restored step are dropped so the file is the history of the state in hand.
Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Optional

import jax

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | os.PathLike, kind: Optional[str] = "train") -> list[dict]:
    """The records of `kind` (all if None) from a run directory's metrics.jsonl."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
    return out


def truncate_after(run_dir: str | os.PathLike, step: int) -> int:
    """Drop train/val records with step >= `step` (they came from a lost future); returns how many."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file() or jax.process_index() != 0:
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("kind") in ("train", "val") and rec.get("step", -1) >= step:
            dropped += 1
            continue
        kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return dropped


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # JSON has no NaN/inf; keep them readable
    return v


class MetricsWriter:
    """JSONL + TensorBoard + tqdm progress for one run directory."""

    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int, tensorboard: bool, progress: bool,
                 log=print):
        self.lead = jax.process_index() == 0
        self.path = Path(run_dir) / METRICS_FILE
        self._file = open(self.path, "a", buffering=1) if self.lead else None
        self._tb = None
        if tensorboard and self.lead:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                log("tensorboard: tensorboardX is not installed; scalars go to metrics.jsonl only "
                    "(pip install tensorboardX)")
            else:
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self._bar = None
        if progress and self.lead:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             file=sys.stderr)

    def write(self, record: dict) -> None:
        if not self.lead:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        if self._tb is not None and record.get("kind") in ("train", "val"):
            for k, v in record.items():
                if k not in ("kind", "step") and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def progress(self, n_steps: int, postfix: dict) -> None:
        if self._bar is not None:
            self._bar.update(n_steps)
            self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
