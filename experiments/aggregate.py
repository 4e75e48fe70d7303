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


def diff_se(a: dict, b: dict) -> Optional[float]:
    """Standard error of the difference of two summaries' means over seeds (None below 2 runs each)."""
    if a["mean"] is None or b["mean"] is None or a["n"] < 2 or b["n"] < 2:
        return None
    return math.sqrt(a["sd"] ** 2 / a["n"] + b["sd"] ** 2 / b["n"])


def _noise(a: dict, b: dict) -> str:
    se = diff_se(a, b)
    if se is None:
        return "(too few seeds to judge)"
    d = abs(a["mean"] - b["mean"])
    return (f"inside seed noise (<= 2 s.e. = {2 * se:.4f})" if d <= 2 * se else
            f"outside seed noise (> 2 s.e. = {2 * se:.4f})")


def headline(table: dict, loss: str = "val_loss", f1: str = "annot_f1", acc_key: str = "val_acc",
             trivial: str = "val_best_trivial") -> str:
    """One sentence: the best variant on `loss` against the runner-up and the worst (inside seed noise or not),
    the masked-bin accuracy against the trivial predictor, then the spread of annotation macro-F1 against the
    same evaluation's random-init and PCA-50 controls."""
    rows = {v: r for v, r in table.items() if r[loss]["mean"] is not None}
    if len(rows) < 2:
        return "fewer than two variants produced a validation loss"
    order = sorted(rows, key=lambda v: rows[v][loss]["mean"])
    best, second, worst = order[0], order[1], order[-1]
    b, s2, w = rows[best][loss], rows[second][loss], rows[worst][loss]
    out = (f"{best} has the lowest {loss} ({b['mean']:.4f} ± {b['sd']:.4f}); its lead over {second} "
           f"({s2['mean'] - b['mean']:+.4f}) is {_noise(b, s2)}")
    if worst != second:
        out += f" and over the worst, {worst} ({w['mean'] - b['mean']:+.4f}), {_noise(b, w)}"
    acc = {v: r[acc_key]["mean"] for v, r in table.items() if acc_key in r and r[acc_key]["mean"] is not None}
    triv = [r[trivial]["mean"] for r in table.values() if trivial in r and r[trivial]["mean"] is not None]
    if acc and triv:
        out += (f"; masked-bin accuracy {min(acc.values()):.3f}-{max(acc.values()):.3f} against "
                f"{np.mean(triv):.3f} for the best trivial predictor")
    fr = {v: r[f1] for v, r in table.items() if f1 in r and r[f1]["mean"] is not None}
    if len(fr) >= 1:
        hi, lo = max(fr, key=lambda v: fr[v]["mean"]), min(fr, key=lambda v: fr[v]["mean"])
        out += (f"; held-out annotation macro-F1 spans {fr[lo]['mean']:.3f} ({lo}) to {fr[hi]['mean']:.3f} ({hi})"
                + (f", {_noise(fr[hi], fr[lo])}" if hi != lo else ""))
        ctrl = []
        for key, label in (("random_init_f1", "random init"), ("pca_f1", "PCA-50")):
            vals = [r[key]["mean"] for r in table.values() if key in r and r[key]["mean"] is not None]
            if vals:
                ctrl.append(f"{label} {np.mean(vals):.3f}")
        if ctrl:
            out += f", against {' and '.join(ctrl)} (same evaluations, mean over variants)"
    return out + "."


def paired(rows: Sequence[dict], metric: str, a: str, b: str) -> dict:
    """a - b per seed where both ran (same validation cells and masks within a seed): diffs, mean, s.e. over seeds."""
    va = {r.get("seed"): r.get(metric) for r in rows if r["variant"] == a and r.get(metric) is not None}
    vb = {r.get("seed"): r.get(metric) for r in rows if r["variant"] == b and r.get(metric) is not None}
    d = [float(va[k] - vb[k]) for k in sorted(set(va) & set(vb), key=str)]
    se = float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None
    return {"a": a, "b": b, "diffs": d, "mean": float(np.mean(d)) if d else None, "se": se}


def paired_lines(rows: Sequence[dict], table: dict, metric: str = "val_loss") -> list:
    """Markdown: every variant against the one with the lowest mean `metric`, paired by seed."""
    have = {v: r[metric]["mean"] for v, r in table.items() if r[metric]["mean"] is not None}
    if len(have) < 2:
        return []
    best = min(have, key=have.get)
    lines = [f"Paired by seed against {best} ({metric}: other - {best}; same validation cells and masks within a "
             "seed; s.e. over seeds, a rough screen with 2-3 seeds):", "",
             "| variant | mean diff | per seed | s.e. | > 2 s.e. |", "|---|---|---|---|---|"]
    for v in have:
        if v == best:
            continue
        p = paired(rows, metric, v, best)
        if p["mean"] is None:
            continue
        se = "-" if p["se"] is None else f"{p['se']:.4f}"
        out = "-" if p["se"] is None else ("yes" if abs(p["mean"]) > 2 * p["se"] else "no")
        lines.append(f"| {v} | {p['mean']:+.4f} | {', '.join(f'{x:+.4f}' for x in p['diffs'])} | {se} | {out} |")
    return lines + [""]


def results_markdown(title: str, table: dict, metrics: Sequence[str], *, command: str, setup: str,
                     paper: str, notes: Sequence[str], machine: dict, seconds: float,
                     headline: Optional[str] = None, graphs: Optional[dict] = None,
                     rows: Optional[Sequence[dict]] = None) -> str:
    """The results page: what was run (exact command), the table, and how it differs from the paper.

    `headline`: the one-sentence finding, shown first; `graphs`: per graph kind its prepare diagnostics."""
    lines = [f"# {title}", ""]
    if headline:
        lines += [f"**Finding:** {headline}", ""]
    lines += [f"Command: `{command}`", "", setup, "",
              "| variant | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += [f"| {v} | " + " | ".join(fmt(row[m]) for m in metrics) + " |" for v, row in table.items()]
    lines += ["", ("Per metric (range of means vs the largest seed sd): " if headline else "Finding: ")
              + finding(table, metrics), ""]
    if rows:
        lines += paired_lines(rows, table)
    if graphs:
        lines += ["Graphs in the shards (prepare's diagnostics):", "",
                  "| kind | graph | gene tokens with >= 1 edge | edges per cell (median, p10, p90) |", "|---|---|---|---|"]
        for kind, d in graphs.items():
            for which, g in d.items():
                e = g.get("edges_per_cell") or {}
                frac = g.get("gene_tokens_with_edge_fraction")
                num = lambda x: f"{x:.3g}" if isinstance(x, (int, float)) else "-"  # noqa: E731
                lines.append(f"| {kind} | {which} | {'-' if frac is None else f'{100 * frac:.1f} %'} | "
                             f"{num(e.get('median'))}, {num(e.get('p10'))}, {num(e.get('p90'))} |")
        lines.append("")
    lines += [f"Paper: {paper}", "",
              "## How these numbers differ from the paper's, and why", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "## Machine", "", ", ".join(f"{k}: {v}" for k, v in machine.items())
              + f"; wall time {seconds:.0f} s (shared, heavily loaded machine: timings are not comparable).", ""]
    return "\n".join(lines)
