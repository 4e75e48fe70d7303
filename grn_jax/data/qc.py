"""Cell QC (GREmLN A.2): total-UMI bounds, optional keep-middle fraction, min expressed genes.

Every removed cell is attributed to the first criterion it fails, in the order
below, and the counts are reported; nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from grn_jax.data.config import QCConfig


@dataclasses.dataclass(frozen=True)
class QCResult:
    keep: np.ndarray  # bool [N]
    reason: np.ndarray  # int8 [N]: index into REASONS, -1 = kept
    report: dict


REASONS = ("total_counts_below_min", "total_counts_above_max", "outside_keep_middle", "too_few_genes")


def qc_cells(totals: np.ndarray, n_genes: np.ndarray, cfg: QCConfig, *, counts_are_raw: bool = True) -> QCResult:
    """Decide which cells pass QC.

    totals: float [N] total counts per cell (all genes); n_genes: int [N] expressed
    vocabulary genes per cell. With `counts_are_raw=False` (normalised input) the
    total-count criteria are not applied, and the report says so.
    """
    cfg.validate()
    totals = np.asarray(totals, np.float64)
    n_genes = np.asarray(n_genes)
    n = len(totals)
    lo, hi = cfg.min_counts, cfg.max_counts
    middle_bounds = None
    fails = np.zeros((len(REASONS), n), bool)
    if counts_are_raw:
        if lo is not None:
            fails[0] = totals < lo
        if hi is not None:
            fails[1] = totals > hi
        if cfg.keep_middle is not None and n > 0:
            tail = round((1.0 - cfg.keep_middle) / 2.0, 12)  # 0.9 -> exactly 0.05
            q_lo, q_hi = np.quantile(totals, [tail, 1.0 - tail])
            middle_bounds = [float(q_lo), float(q_hi)]
            fails[2] = (totals < q_lo) | (totals > q_hi)
    fails[3] = n_genes < cfg.min_genes
    any_fail = fails.any(axis=0)
    reason = np.where(any_fail, np.argmax(fails, axis=0), -1).astype(np.int8)
    report = {
        "cells_in": int(n),
        "cells_kept": int((~any_fail).sum()),
        "cells_filtered": int(any_fail.sum()),
        "filtered_by": {r: int((reason == i).sum()) for i, r in enumerate(REASONS)},
        "params": dataclasses.asdict(cfg),
        "total_count_bounds_applied": bool(counts_are_raw),
        "keep_middle_bounds": middle_bounds,
    }
    if not counts_are_raw:
        report["note"] = "input is normalised: total-count bounds and keep_middle were not applied"
    return QCResult(~any_fail, reason, report)
