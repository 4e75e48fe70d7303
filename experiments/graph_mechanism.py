"""Does GDKA use the graph? True vs degree-preserving random vs no GRN, where the truth is known (issue #14, item 5).

    nice -n 10 .venv/bin/python experiments/graph_mechanism.py [--seeds 3] [--steps 300] [--adapter]
    .venv/bin/python experiments/graph_mechanism.py --report-from experiments/results/graph_mechanism.json

Data: `grn_jax.datasets.simulate` (known GRN), 4,000 cells x 200 genes, 30 TFs, 4 cell
types, no knockouts, 95 % of non-TF genes regulated (`unregulated_fraction=0.05`) and a
10,000-count mean library (less Poisson noise, so a target's bin follows its regulators
more closely). Prepared three times over the same cells: with the true network, with the
edges' targets permuted (`adapter_true_vs_random._rewired`: every regulator keeps its
out-degree, every target its in-degree) and with no edge at all.

Model: the pretraining recipe of `grn_jax/resources/configs/own_data.yaml` (cell head on,
its `train.cell_loss_weight` and head output, read from the preset; peak lr 5e-3, 5 % warm-up, batch 32, mask rate 0.3) at a small
size (d 64, 1 layer as in own_data.yaml (--layers), 4 heads, MLP 128, 16 bins). Variants, all at equal steps on the
same held-out cells (fixed split) with the same evaluation masks within a seed:

* vanilla attention (the graph never reaches the model);
* GDKA at beta 0.1 (the default; `--beta` sets another) over the true / random graph;
* the design change: GDKA at beta = auto (1 / lambda_min over the true graph's training
  cells; `grn_jax.train.graph_check`) over the true graph, and at that same beta over the
  random graph and over the empty graph (every node isolated: L = I, so GDKA is vanilla
  attention with queries scaled by exp(-beta) -- the temperature-only control);
* with --values: GDKA diffusing the values too (`model.diffusion_operands: queries_values`, not the
  paper's design) over the true / random graph, at the fixed beta;
* with --adapter: the GRNFormer adapter (last layer, vanilla backbone) over true / random.

Reported: the final validation masked-bin loss over ALL validation cells; its standard
error over seeds; and, because every variant of a seed sees the same cells and masks,
the paired difference true - other per seed, with (a) its SE over seeds and (b) a
within-seed SE clustered over validation batches (the per-batch loss sums are recorded
by wrapping the evaluation function the training loop uses). Writes
experiments/results/graph_mechanism.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from adapter_true_vs_random import _rewired  # noqa: E402

from grn_jax.models.config import ModelConfig  # noqa: E402
from grn_jax.resources import config_path  # noqa: E402

SIM = dict(n_cells=4000, n_genes=200, n_tfs=30, n_cell_types=4, knockouts=0, seed=0,
           unregulated_fraction=0.05, mean_library_size=10000.0)
N_BINS = 16
# the shipped own-data preset: this experiment's cell objective follows it
RECIPE = yaml.safe_load(config_path("own_data").read_text())
HEAD_OUTPUT = RECIPE["model"].get("cell_head_output", ModelConfig.cell_head_output)  # the preset's, else the default


class _BatchRecorder:
    """Wraps the loop's eval function: keeps each validation batch's (loss_sum, n_masked) of the last evaluation."""

    def __init__(self):
        self.batches: list[tuple[float, float]] = []

    def install(self):
        import jax

        from grn_jax.train import loop

        orig = loop._evaluate

        def evaluate(eval_fn, params, val_batches, mesh):
            self.batches = []

            def recording(*a):
                out = eval_fn(*a)
                o = jax.device_get(out)
                self.batches.append((float(o["loss_sum"]), float(o["n_masked"])))
                return out

            return orig(recording, params, val_batches, mesh)

        loop._evaluate = evaluate


def _tree(shards, run_dir, seed, steps, attention: str, beta, adapter: bool = False, n_layers: int = 1):
    operands = "queries_values" if attention == "diffusion_qv" else "queries"  # --values rows: V diffused too
    model = {"preset": "tiny", "n_bins": N_BINS, "d_model": 64, "n_layers": n_layers, "n_heads": 4, "mlp_dim": 128,
             "attention": "diffusion" if attention == "diffusion_qv" else attention, "diffusion_beta": beta,
             "diffusion_operands": operands, "cell_head": True, "cell_head_output": HEAD_OUTPUT}
    if adapter:
        model["adapter"] = {"fusion_heads": 2, "fanout": 10, "node_features": "gene"}
    return {"name": "graph-mechanism", "data": {"shards": str(shards), "fixed_shape": True}, "model": model,
            "train": {"run_dir": str(run_dir), "steps": steps, "batch_size": 32, "seed": seed, "mask_rate": 0.3,
                      "cell_loss_weight": RECIPE["train"]["cell_loss_weight"],
                      "optim": {"peak_lr": 5.0e-3, "warmup_fraction": 0.05, "weight_decay": 0.01, "clip_norm": 1.0},
                      "log_every": steps, "eval_every": steps, "eval_batches": 1000, "val_fraction": 0.1,
                      "checkpoint_every": steps, "keep_last": 1, "progress": False, "tensorboard": False},
            "mesh": {"data": -1, "fsdp": 1, "tensor": 1}}


def _se(x) -> float | None:
    x = np.asarray(x, float)
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None


def _paired_batch_se(a, b) -> tuple[float, float]:
    """(difference of pooled losses a - b, its SE clustered over validation batches); same batches and masks."""
    la, n = np.array([x[0] for x in a]), np.array([x[1] for x in a])
    lb, nb = np.array([x[0] for x in b]), np.array([x[1] for x in b])
    if not np.array_equal(n, nb):
        raise ValueError("paired runs saw different masked counts per validation batch; masks are not shared")
    d = (la - lb)
    r = d.sum() / n.sum()
    resid = d - r * n
    k = len(d)
    return float(r), float(np.sqrt(k / (k - 1) * (resid ** 2).sum()) / n.sum())


def write_report(out: dict, res_dir: Path, stem: str) -> None:
    """experiments/results/<stem>.md from the result record (the table, the paired comparisons, the graphs)."""
    rows, g = out["rows"], out["graphs"]
    m = out["machine"]
    lines = ["# The graph mechanism where the truth is known: GDKA over true vs random vs no GRN (simulated)", "",
             f"`{out['command']}` ({out['total_seconds'] / 60:.0f} min). Code: {out.get('code', 'this commit')}.",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', m.get('cpu_count', '?'))} cores, load average at the "
             f"end {m.get('load_average_1min', '?')}, JAX {m.get('jax', m.get('jax_version', '?'))} "
             f"({m.get('backend', '?')}).", "",
             f"Data: `simulate({', '.join(f'{k}={v}' for k, v in out['simulate'].items())})`; 10 % of cells held out "
             f"(the same cells for every run). Model: d 64, 4 heads, MLP 128, 16 bins, cell head on "
             f"({out.get('recipe', 'cell_loss_weight 5, bins head')}), the own_data.yaml optimiser; equal steps.", "",
             "Final validation masked-bin loss on all validation cells, mean ± s.e. over seeds "
             "(token accuracy ± its binomial s.e. from the loop, seed 0):", "",
             "| variant | beta | val loss | per seed | accuracy (seed 0) |", "|---|---|---|---|---|"]
    for k, r in rows.items():
        se = f" ± {r['se']:.4f}" if r["se"] is not None else ""
        b = f"{r['beta'][0]:.3g}" if k.startswith(("gdka_", "auto_", "qv_")) else "-"
        lines.append(f"| {r['label']} | {b} | {r['mean']:.4f}{se} | {', '.join(f'{v:.4f}' for v in r['val_loss'])} "
                     f"| {r['val_accuracy'][0]:.4f} ± {r['val_accuracy_se'][0]:.4f} |")
    gm = out["per_run"][next(iter(out["per_run"]))][0].get("val_gene_mode_accuracy")
    if gm is not None:
        lines += ["", f"Trivial control: each gene's most common bin scores accuracy {gm:.4f} on the same masks (seed 0)."]
    lines += ["", "Paired differences (A - B, negative = A better; same cells and masks within a seed). "
              "s.e. over seeds, and the within-seed s.e. clustered over validation batches, pooled over seeds:", "",
              "| A | B | mean diff | per seed | s.e. (seeds) | s.e. (within) | A better by > 2 s.e. (the larger) |",
              "|---|---|---|---|---|---|---|"]
    for c in out["comparisons"]:
        sse = f"{c['se_over_seeds']:.4f}" if c["se_over_seeds"] is not None else "-"
        lines.append(f"| {rows[c['a']]['label']} | {rows[c['b']]['label']} | {c['mean_diff']:+.4f} | "
                     f"{', '.join(f'{d:+.4f}' for d in c['diff_per_seed'])} | {sse} | "
                     f"{c['pooled_within_seed_se']:.4f} | {'yes' if c['a_better_by_more_than_2se'] else 'no'} |")
    lines += ["", "Graphs over the training cells:", "", "| graph | gene tokens with an edge | edges per cell (median) "
              "| lambda_min (median) | query change at the fixed beta / auto |", "|---|---|---|---|---|"]
    qc = {}
    for k, rs in out["per_run"].items():
        qc[k] = rs[0].get("query_rel_change")
    q = {"true": (qc.get("gdka_true"), qc.get("auto_true")), "random": (qc.get("gdka_random"), qc.get("auto_random")),
         "empty": (None, qc.get("auto_empty"))}
    for k, d in g.items():
        lm = d.get("lambda_min_nonzero") or {}
        f = lambda x: f"{100 * x:.1f} %" if isinstance(x, (int, float)) else "-"  # noqa: E731
        lines.append(f"| {k} | {100 * d['gene_tokens_with_edge_fraction']:.1f} % | {d['edges_per_cell']['median']:g} | "
                     f"{lm.get('median', float('nan')):.4f} | {f(q.get(k, (None, None))[0])} / {f(q.get(k, (None, None))[1])} |")
    if out.get("finding"):
        lines += ["", "## Finding", "", out["finding"]]
    for note in out.get("notes", []):
        lines += ["", note]
    tmp = res_dir / f"{stem}.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, res_dir / f"{stem}.md")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--layers", type=int, default=1, help="transformer layers (own_data.yaml has 1)")
    p.add_argument("--only", default=None, help="comma-separated variant keys to run (development)")
    p.add_argument("--adapter", action="store_true", help="also the GRNFormer adapter over true / random")
    p.add_argument("--no-auto", action="store_true", help="skip the beta = auto rows")
    p.add_argument("--beta", type=float, default=0.1, help="beta of the fixed-beta GDKA rows (default 0.1)")
    p.add_argument("--values", action="store_true",
                   help="also GDKA diffusing values as well as queries (model.diffusion_operands=queries_values)")
    p.add_argument("--cells", type=int, default=SIM["n_cells"], help="simulated cells (develop with fewer)")
    p.add_argument("--out-stem", default="graph_mechanism")
    p.add_argument("--report-from", default=None, help="only rewrite the .md from this results .json")
    args = p.parse_args(argv)
    if args.report_from:
        path = Path(args.report_from)
        write_report(json.loads(path.read_text()), path.parent, path.stem)
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="xla_cache_"))
    from grn_jax.config import build_run_config
    from grn_jax.data.config import DataConfig, QCConfig, TokenizeConfig
    from grn_jax.data.pipeline import prepare
    from grn_jax.datasets.simulate import simulate
    from grn_jax.machine import describe_machine
    from grn_jax.train.loop import pretrain
    from grn_jax.types import GeneNetwork

    t_start = time.time()
    sim_args = {**SIM, "n_cells": args.cells}
    sim = simulate(**sim_args)
    work = Path(tempfile.mkdtemp(prefix="graph_mechanism_"))
    cfg = DataConfig(qc=QCConfig(min_counts=1, max_counts=None, min_genes=5),
                     tokenize=TokenizeConfig(n_bins=N_BINS, max_genes=256)).validate()
    empty = GeneNetwork(np.zeros(0, object), np.zeros(0, object), np.zeros(0), np.zeros(0), params={"method": "none"})
    graphs = {"true": sim.network, "random": _rewired(sim.network, 1), "empty": empty}
    diag = {}
    for name, net in graphs.items():
        if name == "empty" and args.no_auto:
            continue
        s = prepare(sim.adata, work / name, cfg, graph=net, overwrite=True, allow_empty_graph=name == "empty")
        diag[name] = s["graph_diagnostics"]["graph"]

    rec = _BatchRecorder()
    rec.install()

    def run(key, data, seed, attention, beta, adapter=False):
        t0 = time.time()
        res = pretrain(build_run_config(_tree(work / data, work / f"run_{key}_{seed}", seed, args.steps, attention,
                                              beta, adapter, args.layers)), log=lambda _: None)
        v = res.val
        out = {"val_loss": float(v["val_loss"]), "val_accuracy": float(v["val_accuracy"]),
               "val_accuracy_se": float(v["val_accuracy_se"]), "val_masked": int(v["val_masked"]),
               "val_cell_loss": float(v["val_cell_loss"]) if "val_cell_loss" in v else None,
               "val_gene_mode_accuracy": float(v.get("val_gene_mode_accuracy", float("nan"))),
               "batches": list(rec.batches), "seconds": time.time() - t0}
        gd_path = Path(res.run_dir) / "graph_diagnostics.json"  # written by graph_check at start (GDKA runs)
        if gd_path.exists():
            gd = json.loads(gd_path.read_text())
            out["diffusion_beta_used"] = gd.get("graph", {}).get("diffusion", {}).get("beta", beta)
            out["query_rel_change"] = gd.get("graph", {}).get("diffusion", {}).get("query_rel_change")
        print(f"{key} seed {seed}: val {out['val_loss']:.4f} acc {out['val_accuracy']:.4f} "
              f"({out['seconds']:.0f} s)", flush=True)
        return out

    # variant key -> (label, shards, attention, beta, adapter); auto rows resolved per seed from the true graph
    variants = [("vanilla", "vanilla attention (no graph)", "true", "vanilla", 0.1, False),
                ("gdka_true", f"GDKA beta {args.beta:g}, true GRN", "true", "diffusion", args.beta, False),
                ("gdka_random", f"GDKA beta {args.beta:g}, random GRN", "random", "diffusion", args.beta, False)]
    if not args.no_auto:
        variants += [("auto_true", "GDKA beta auto, true GRN", "true", "diffusion", "auto", False),
                     ("auto_random", "GDKA beta auto(true), random GRN", "random", "diffusion", None, False),
                     ("auto_empty", "GDKA beta auto(true), no edges", "empty", "diffusion", None, False)]
    if args.values:
        variants += [("qv_true", f"GDKA Q+V beta {args.beta:g}, true GRN", "true", "diffusion_qv", args.beta, False),
                     ("qv_random", f"GDKA Q+V beta {args.beta:g}, random GRN", "random", "diffusion_qv", args.beta,
                      False)]
    if args.adapter:
        variants += [("adapter_true", "adapter (vanilla backbone), true GRN", "true", "vanilla", 0.1, True),
                     ("adapter_random", "adapter (vanilla backbone), random GRN", "random", "vanilla", 0.1, True)]
    if args.only:
        variants = [v for v in variants if v[0] in args.only.split(",")]
    runs = {k: [] for k, *_ in variants}
    for seed in range(args.seeds):
        auto_beta = None
        for key, _, data, attention, beta, adapter in variants:
            if beta is None:
                beta = auto_beta
            r = run(key, data, seed, attention, beta, adapter)
            if key == "auto_true":
                auto_beta = r.get("diffusion_beta_used")
                if not isinstance(auto_beta, (int, float)):
                    raise RuntimeError(f"could not read the resolved beta of the auto run: {auto_beta!r}")
            runs[key].append(r)

    labels = {k: lab for k, lab, *_ in variants}
    rows = {k: {"label": labels[k], "val_loss": [r["val_loss"] for r in rs], "mean": float(np.mean([r["val_loss"] for r in rs])),
                "se": _se([r["val_loss"] for r in rs]),
                "val_accuracy": [r["val_accuracy"] for r in rs], "val_accuracy_se": [r["val_accuracy_se"] for r in rs],
                "val_cell_loss": [r["val_cell_loss"] for r in rs],
                "beta": [r.get("diffusion_beta_used") for r in rs], "seconds": [r["seconds"] for r in rs]}
            for k, rs in runs.items()}
    pairs = [("gdka_true", "gdka_random"), ("gdka_true", "vanilla")]
    if not args.no_auto:
        pairs += [("auto_true", "auto_random"), ("auto_true", "auto_empty"), ("auto_true", "vanilla"),
                  ("auto_true", "gdka_true")]
    if args.values:
        pairs += [("qv_true", "qv_random"), ("qv_true", "vanilla"), ("qv_true", "gdka_true")]
    if args.adapter:
        pairs += [("adapter_true", "adapter_random"), ("adapter_true", "vanilla")]
    comparisons = []
    for a, b in [(a, b) for a, b in pairs if a in runs and b in runs]:
        diffs = [x["val_loss"] - y["val_loss"] for x, y in zip(runs[a], runs[b])]
        within = [_paired_batch_se(x["batches"], y["batches"]) for x, y in zip(runs[a], runs[b])]
        # pooled over seeds: mean difference, SE combining the within-seed SEs (independent seeds)
        w_se = float(np.sqrt(np.sum([s ** 2 for _, s in within])) / len(within))
        se_seeds = _se(diffs)
        m = float(np.mean(diffs))
        worst_se = max(w_se, se_seeds or 0.0)
        comparisons.append({"a": a, "b": b, "diff_per_seed": diffs, "mean_diff": m, "se_over_seeds": se_seeds,
                            "within_seed_batch_se": [s for _, s in within], "pooled_within_seed_se": w_se,
                            "a_better_by_more_than_2se": bool(m < -2 * worst_se)})
    machine = describe_machine()
    cmd = (f"nice -n 10 .venv/bin/python experiments/graph_mechanism.py --seeds {args.seeds} --steps {args.steps}"
           + (f" --layers {args.layers}" if args.layers != 1 else "") + (f" --only {args.only}" if args.only else "")
           + (" --adapter" if args.adapter else "") + (" --no-auto" if args.no_auto else "")
           + (f" --beta {args.beta:g}" if args.beta != 0.1 else "") + (" --values" if args.values else "")
           + (f" --cells {args.cells}" if args.cells != SIM["n_cells"] else "")
           + (f" --out-stem {args.out_stem}" if args.out_stem != "graph_mechanism" else ""))
    keep = ("gene_tokens_with_edge_fraction", "edges_per_cell", "lambda_min_nonzero", "diffusion_change")
    out = {"command": cmd, "simulate": sim_args,
           "recipe": (f"cell head {HEAD_OUTPUT}, "
                      f"cell_loss_weight {RECIPE['train']['cell_loss_weight']}"), "machine": machine, "total_seconds": time.time() - t_start,
           "graphs": {k: {x: v.get(x) for x in keep if x in v} for k, v in diag.items()},
           "rows": rows, "comparisons": comparisons,
           "per_run": {k: [{x: y for x, y in r.items() if x != "batches"} for r in rs] for k, rs in runs.items()}}
    res_dir = HERE / "results"
    res_dir.mkdir(exist_ok=True)
    tmp = res_dir / f"{args.out_stem}.json.tmp"
    tmp.write_text(json.dumps(out, indent=1, default=str))
    os.replace(tmp, res_dir / f"{args.out_stem}.json")
    write_report(out, res_dir, args.out_stem)
    print(json.dumps({"rows": {k: (r["mean"], r["se"]) for k, r in rows.items()}, "comparisons": comparisons},
                     indent=1, default=str))


if __name__ == "__main__":
    main()
