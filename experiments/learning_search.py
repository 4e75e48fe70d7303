"""Tabulate the design search behind the own-data defaults from its run folders (no figure typed by hand).

    python experiments/learning_search.py OUT_DIR [OUT_DIR ...] > experiments/results/learning_search.md

Each OUT_DIR is a `grn-jax quickstart --data` output (or experiments/learning.py --out); the table reads
its eval/annotation.json, summary.json and runs/model/config.yaml.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml


def row(out: Path) -> str:
    ann = json.loads((out / "eval" / "annotation.json").read_text())["metrics"]["all"]
    summ = json.loads((out / "summary.json").read_text())
    cfg = yaml.safe_load((out / "runs" / "model" / "config.yaml").read_text())
    m, t = cfg["model"], cfg["train"]
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    tok = manifest["config"]["tokenize"]
    vocab = len(manifest["vocab"]["genes"])

    def f(name):
        r = ann[name]["macro_f1"]
        return f"{r['mean']:.3f} ± {np.std(r['values']):.3f}"

    head = m.get("cell_head_output", "bins (code before cell_head_output)") if m.get("cell_head", True) else "none"
    return (f"| {out.name} | {m['d_model']} | {m['n_layers']} | {tok.get('max_genes', '?')} | {vocab} | {head} | "
            f"{t.get('cell_loss_weight', 0)} | {t['optim']['peak_lr']} | {summ['steps']} | {f('grn_jax')} | "
            f"{f('random_init')} | {f('pca_logreg')} |")


def main(argv) -> int:
    print("| run | d_model | layers | max_genes | vocabulary genes | cell head | cell_loss_weight | peak lr | steps | "
          "grn_jax macro-F1 | random_init | PCA-50 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in argv:
        print(row(Path(d)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
