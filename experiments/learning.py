"""Does pretraining learn? `grn-jax quickstart --data` on a labelled h5ad, summarised against its targets.

    python experiments/learning.py --data ../shared/data/zeisel.h5ad --label-key cell_type --minutes 20 \
        --out experiments/work/learning [--seeds 0 1 2] [--set section.field=value ...]

Runs `grn_jax.inference.own_data.quickstart_on_data` (held-out cells, kNN graphs, the
random-init twin, PCA-50, majority and chance in the same run), then writes
experiments/results/learning.md and .json: held-out macro-F1 of every method with its
spread over the annotation splits, the issue's targets (>= 0.95 x PCA-50, >= random_init
+ 0.20) checked, and the final validation masked-bin accuracy beside the best trivial
predictor with its standard error (target: a margin larger than 3 SE).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _val_record(run_dir: Path) -> dict:
    from grn_jax.train.metrics import read_metrics

    val = read_metrics(run_dir, "val")
    if not val:
        raise ValueError(f"{run_dir} has no validation record")
    return val[-1]


def summarise(out: Path, command: str, seconds: float) -> dict:
    from grn_jax.machine import describe_machine

    ann = json.loads((out / "eval" / "annotation.json").read_text())
    table = ann["metrics"]["all"]
    summary = json.loads((out / "summary.json").read_text())
    val = _val_record(out / "runs" / "model")
    rows = {m: {"mean": r["macro_f1"]["mean"], "sd": float(np.std(r["macro_f1"]["values"])),
                "values": r["macro_f1"]["values"]} for m, r in table.items()}
    model, pca, rnd = rows["grn_jax"]["mean"], rows["pca_logreg"]["mean"], rows["random_init"]["mean"]
    se = val.get("val_accuracy_se", float("nan"))
    margin = val["val_accuracy"] - val["val_best_trivial_accuracy"]
    targets = {
        "macro_f1 >= 0.95 x PCA-50": {"value": model / pca, "met": model >= 0.95 * pca},
        "macro_f1 >= random_init + 0.20": {"value": model - rnd, "met": model >= rnd + 0.20},
        "val masked-bin accuracy > best trivial + 3 SE": {"value": margin / se if se else float("nan"),
                                                           "met": bool(margin > 3 * se)},
        "beats PCA-50 outright (beyond split spread)": {"value": model - pca,
                                                         "met": model > pca + rows["pca_logreg"]["sd"]},
    }
    return {"command": command, "seconds": seconds, "machine": describe_machine(), "annotation": rows,
            "cells": summary["cells"], "steps": summary["steps"], "step_seconds": summary["step_seconds"],
            "validation": {k: val[k] for k in ("val_accuracy", "val_accuracy_se", "val_gene_mode_accuracy",
                                               "val_majority_bin_accuracy", "val_best_trivial_accuracy",
                                               "val_masked", "val_cell_accuracy") if k in val},
            "targets": targets, "verdict": summary["verdict"], "n_splits": len(rows["grn_jax"]["values"])}


def to_markdown(r: dict) -> str:
    lines = ["# Pretraining that learns: held-out annotation with controls", "",
             f"Command: `{r['command']}`", "",
             f"Machine: {r['machine']}", "",
             f"{r['cells']['pretrain']} cells pretrained on, {r['cells']['held_out']} held out (never seen); "
             f"{r['steps']} steps" + (f" at {r['step_seconds'] * 1000:.0f} ms (measured probe)" if r["step_seconds"] else "")
             + f"; whole run {r['seconds'] / 60:.1f} min.",
             "", f"## Held-out macro-F1 (mean and SD over {r['n_splits']} annotation splits of the held-out cells)", "",
             "| method | macro-F1 | SD | splits |", "|---|---|---|---|"]
    for m, row in sorted(r["annotation"].items(), key=lambda kv: -kv[1]["mean"]):
        lines.append(f"| {m} | {row['mean']:.3f} | {row['sd']:.3f} | {', '.join(f'{v:.3f}' for v in row['values'])} |")
    v = r["validation"]
    lines += ["", "## Validation masked-bin accuracy (all validation cells)", "",
              f"model {v['val_accuracy']:.4f} +- {v.get('val_accuracy_se', float('nan')):.4f} (SE) on {v['val_masked']} "
              f"masked tokens; each gene's most common bin {v.get('val_gene_mode_accuracy', float('nan')):.4f}; "
              f"majority bin {v.get('val_majority_bin_accuracy', float('nan')):.4f}.", "",
              "## Targets", "", "| target | value | met |", "|---|---|---|"]
    for name, t in r["targets"].items():
        lines.append(f"| {name} | {t['value']:.3f} | {'yes' if t['met'] else 'NO'} |")
    lines += ["", r["verdict"], "",
              "The SD in this section is over annotation splits of one pretraining seed; the spread between "
              "pretraining seeds is in the table across seeds, when several were run.", ""]
    return "\n".join(lines)


def across_seeds(per_seed: list) -> dict:
    """Mean and SD over pretraining seeds of every method's macro-F1 (each seed: its own split, model, training)."""
    methods = per_seed[0]["annotation"].keys()
    table = {}
    for m in methods:
        v = [r["annotation"][m]["mean"] for r in per_seed]
        table[m] = {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"),
                    "values": v}
    model, pca, rnd = (table[k]["mean"] for k in ("grn_jax", "pca_logreg", "random_init"))
    sd = table["grn_jax"]["sd"]
    ratios = [r["annotation"]["grn_jax"]["mean"] / r["annotation"]["pca_logreg"]["mean"] for r in per_seed]
    gaps = [r["annotation"]["grn_jax"]["mean"] - r["annotation"]["random_init"]["mean"] for r in per_seed]
    targets = {
        "macro_f1 >= 0.95 x PCA-50 (mean over seeds)": {"value": model / pca, "met": model >= 0.95 * pca,
                                                         "per_seed": ratios},
        "macro_f1 >= random_init + 0.20 (mean over seeds)": {"value": model - rnd, "met": model >= rnd + 0.20,
                                                              "per_seed": gaps},
        "val masked-bin accuracy > best trivial + 3 SE (every seed)": {
            "value": min(r["targets"]["val masked-bin accuracy > best trivial + 3 SE"]["value"] for r in per_seed),
            "met": all(r["targets"]["val masked-bin accuracy > best trivial + 3 SE"]["met"] for r in per_seed)},
        "beats PCA-50 outright (beyond seed spread)": {"value": model - pca,
                                                        "met": bool(model - pca > (sd if sd == sd else 0.0))},
    }
    return {"annotation": table, "targets": targets, "seeds": [r["seed"] for r in per_seed]}


def seeds_markdown(agg: dict, command: str) -> str:
    lines = [f"## Across pretraining seeds {agg['seeds']} (each seed: its own held-out split, model and training)",
             "", f"Command: `{command}`", "",
             "| method | macro-F1 mean | SD over seeds | per seed |", "|---|---|---|---|"]
    for m, row in sorted(agg["annotation"].items(), key=lambda kv: -kv[1]["mean"]):
        lines.append(f"| {m} | {row['mean']:.3f} | {row['sd']:.3f} | {', '.join(f'{v:.3f}' for v in row['values'])} |")
    lines += ["", "| target | value | met | per seed |", "|---|---|---|---|"]
    for name, t in agg["targets"].items():
        per = ", ".join(f"{v:.3f}" for v in t.get("per_seed", []))
        lines.append(f"| {name} | {t['value']:.3f} | {'yes' if t['met'] else 'NO'} | {per} |")
    return "\n".join(lines + [""])


def main(argv=None) -> int:
    from grn_jax.inference.own_data import quickstart_on_data

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--label-key", required=True)
    p.add_argument("--minutes", type=float, default=20.0, help="budget of each seed's run")
    p.add_argument("--out", default="experiments/work/learning")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="pretraining seeds, run one after the other (several: OUT/seed<N> each)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--results", default=str(RESULTS / "learning"), help="results path without suffix")
    args = p.parse_args(argv)
    command = "python " + " ".join(sys.argv)
    per_seed = []
    for seed in args.seeds:
        out = Path(args.out) if len(args.seeds) == 1 else Path(args.out) / f"seed{seed}"
        t0 = time.perf_counter()
        quickstart_on_data(args.data, args.label_key, out, minutes=args.minutes, seed=seed,
                           overrides=args.overrides)
        r = summarise(out, command, time.perf_counter() - t0)
        r["seed"] = seed
        per_seed.append(r)
    res = Path(args.results)
    res.parent.mkdir(parents=True, exist_ok=True)
    doc = {"per_seed": per_seed}
    text = "\n".join(to_markdown(r).replace("# Pretraining that learns: held-out annotation with controls",
                                           f"# Pretraining that learns: held-out annotation with controls (seed {r['seed']})")
                     for r in per_seed)
    if len(per_seed) > 1:
        doc["across_seeds"] = across_seeds(per_seed)
        text = seeds_markdown(doc["across_seeds"], command) + "\n" + text
        text = "# Pretraining that learns: held-out annotation with controls, several seeds\n\n" + text
    res.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=float))
    res.with_suffix(".md").write_text(text)
    print(f"wrote {res.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
