"""Aggregation of ablation runs into `experiments/results/<name>.md|.json`: mean ± sd over seeds.

Kept apart from the runner (experiments/ablations.py) so it can be checked on toy
input: a row is one (variant, seed) run with its metrics; a metric a run could not
produce is None and is counted as missing, never averaged as zero.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def summarize(values: Sequence[Optional[float]]) -> dict:
    """{"mean", "sd" (ddof=1; 0 for one value), "n", "missing"} over the non-missing values (None/NaN)."""
    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    out = {"n": len(present), "missing": len(values) - len(present)}
    if not present:
        return {**out, "mean": None, "sd": None}
    v = np.asarray(present, np.float64)
    return {**out, "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def aggregate(rows: Sequence[dict], metrics: Sequence[str]) -> dict:
    """{variant: {metric: summary}} over rows {"variant", "seed", metric: value, ...}, variants in first-seen order."""
    variants: dict = {}
    for r in rows:
        if "variant" not in r:
            raise ValueError(f"aggregate: row {r} has no 'variant'")
        variants.setdefault(r["variant"], []).append(r)
    return {v: {m: summarize([r.get(m) for r in rs]) for m in metrics} for v, rs in variants.items()}


def fmt(summary: dict, digits: int = 3) -> str:
    """'mean ± sd (n=k)', or '–' when no run produced the metric."""
    if summary["mean"] is None:
        return "–"
    miss = f", {summary['missing']} missing" if summary["missing"] else ""
    return f"{summary['mean']:.{digits}f} ± {summary['sd']:.{digits}f} (n={summary['n']}{miss})"


def finding(table: dict, metrics: Sequence[str]) -> str:
    """Per metric: the range of the variants' means against the largest seed sd (is any difference resolved?)."""
    parts = []
    for m in metrics:
        rows = {v: r[m] for v, r in table.items() if r[m]["mean"] is not None}
        if len(rows) < 2:
            continue
        means = {v: r["mean"] for v, r in rows.items()}
        spread = max(means.values()) - min(means.values())
        sd = max(r["sd"] for r in rows.values())
        hi = max(means, key=means.get)
        verdict = ("within seed noise (range <= 2 x the largest sd): no ranking" if spread <= 2 * sd else
                   f"range exceeds 2 x the largest sd; highest mean: {hi}")
        parts.append(f"{m}: means span {spread:.3f}, largest sd {sd:.3f}, {verdict}")
    return "; ".join(parts) if parts else "fewer than two variants produced a metric"


def results_markdown(title: str, table: dict, metrics: Sequence[str], *, command: str, setup: str,
                     paper: str, notes: Sequence[str], machine: dict, seconds: float) -> str:
    """The results page: what was run (exact command), the table, and how it differs from the paper."""
    lines = [f"# {title}", "", f"Command: `{command}`", "", setup, "",
             "| variant | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += [f"| {v} | " + " | ".join(fmt(row[m]) for m in metrics) + " |" for v, row in table.items()]
    lines += ["", "Finding: " + finding(table, metrics), "", f"Paper: {paper}", "",
              "## How these numbers differ from the paper's, and why", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "## Machine", "", ", ".join(f"{k}: {v}" for k, v in machine.items())
              + f"; wall time {seconds:.0f} s (shared, heavily loaded machine: timings are not comparable).", ""]
    return "\n".join(lines)
