"""Does the GRNFormer adapter use the graph after training? True vs degree-preserving random GRN, simulated data.

    .venv/bin/python experiments/adapter_true_vs_random.py [--seeds 3] [--steps 300]

Data: `grn_jax.datasets.simulate` (known GRN; 2,000 cells x 200 genes, 30 TFs, 4 cell
types, no knockouts), prepared twice: with the true network, and with the same edges'
targets permuted (every regulator keeps its out-degree and every target its in-degree;
self-loops dropped). Model: the tiny ablation model (d 32, 2 layers) with a vanilla
backbone and the adapter as its last layer, so the graph reaches the model only through
the adapter; "no adapter" is the same 2-layer vanilla model without it. Equal steps,
the same validation cells (fixed split) for every run; final validation masked-bin loss.
Writes experiments/results/adapter_true_vs_random.{md,json}.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _rewired(net, seed):
    from grn_jax.types import GeneNetwork

    rng = np.random.default_rng(seed)
    tgt = np.asarray(net.target)[rng.permutation(net.num_edges)]
    keep = np.asarray(net.regulator) != tgt
    return GeneNetwork(np.asarray(net.regulator)[keep], tgt[keep], np.asarray(net.mi)[keep],
                       np.asarray(net.pvalue)[keep], params={"method": "target-permuted", "seed": seed})


def _tree(shards, run_dir, seed, steps, adapter: bool, node_features: str = "gene"):
    model = {"preset": "tiny", "n_bins": 16, "d_model": 32, "n_layers": 2, "n_heads": 2, "mlp_dim": 64,
             "attention": "vanilla"}
    if adapter:
        model["adapter"] = {"fusion_heads": 2, "fanout": 10, "node_features": node_features}
    return {"name": "adapter-graph", "data": {"shards": str(shards), "fixed_shape": True}, "model": model,
            "train": {"run_dir": str(run_dir), "steps": steps, "batch_size": 16, "seed": seed, "mask_rate": 0.3,
                      "optim": {"peak_lr": 3.0e-3, "warmup_fraction": 0.1, "weight_decay": 0.01, "clip_norm": 1.0},
                      "eval_every": steps, "eval_batches": 1000, "val_fraction": 0.15, "checkpoint_every": steps,
                      "keep_last": 1, "progress": False, "tensorboard": False},
            "mesh": {"data": -1, "fsdp": 1, "tensor": 1}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--node-features", choices=("gene", "token"), default="gene",
                   help="adapter.node_features of the adapter rows")
    p.add_argument("--no-baseline", action="store_true", help="skip the 'no adapter' rows")
    args = p.parse_args(argv)
    import jax

    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="xla_cache_"))
    from grn_jax.config import build_run_config
    from grn_jax.data.config import DataConfig, QCConfig, TokenizeConfig
    from grn_jax.data.pipeline import prepare
    from grn_jax.datasets.simulate import simulate
    from grn_jax.train.loop import pretrain

    sim = simulate(n_cells=2000, n_genes=200, n_tfs=30, n_cell_types=4, knockouts=0, seed=0)
    work = Path(tempfile.mkdtemp(prefix="adapter_graph_"))
    cfg = DataConfig(qc=QCConfig(min_counts=1, max_counts=None, min_genes=5),
                     tokenize=TokenizeConfig(n_bins=16, max_genes=256)).validate()
    graphs = {"true": sim.network, "random": _rewired(sim.network, 1)}
    diag = {}
    for name, net in graphs.items():
        s = prepare(sim.adata, work / name, cfg, graph=net, overwrite=True)
        diag[name] = s["graph_diagnostics"]["graph"]
    nf = args.node_features
    variants = [(f"adapter ({nf} features), true GRN", "true", True),
                (f"adapter ({nf} features), random GRN", "random", True)]
    if not args.no_baseline:
        variants.append(("no adapter", "true", False))
    rows = {}
    for label, data, adapter in variants:
        vals = []
        for seed in range(args.seeds):
            t0 = time.time()
            res = pretrain(build_run_config(_tree(work / data, work / f"run_{data}_{adapter}_{seed}", seed,
                                                  args.steps, adapter, nf)), log=lambda _: None)
            vals.append(float(res.val["val_loss"]))
            print(f"{label} seed {seed}: val {vals[-1]:.4f} ({time.time() - t0:.0f} s)", flush=True)
        rows[label] = {"val_loss": vals, "mean": float(np.mean(vals)),
                       "se": float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else None}
    out = {"command": f"experiments/adapter_true_vs_random.py --seeds {args.seeds} --steps {args.steps} "
                      f"--node-features {nf}" + (" --no-baseline" if args.no_baseline else ""),
           "graphs": {k: {x: v[x] for x in ("gene_tokens_with_edge_fraction", "edges_per_cell")}
                      for k, v in diag.items()}, "rows": rows}
    res_dir = HERE / "results"
    res_dir.mkdir(exist_ok=True)
    stem = "adapter_true_vs_random" + ("" if nf == "gene" else f"_{nf}")
    tmp = res_dir / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, res_dir / f"{stem}.json")
    lines = ["# Adapter: true vs degree-preserving random GRN (simulated, known network)", "",
             f"`.venv/bin/python {out['command']}`; final validation masked-bin loss, mean ± s.e. over seeds.", "",
             "| variant | val loss | per seed |", "|---|---|---|"]
    for k, r in rows.items():
        se = f" ± {r['se']:.4f}" if r["se"] is not None else ""
        lines.append(f"| {k} | {r['mean']:.4f}{se} | {', '.join(f'{v:.4f}' for v in r['val_loss'])} |")
    d = diag["true"]
    lines += ["", f"Graph: {100 * d['gene_tokens_with_edge_fraction']:.1f} % of gene tokens have an edge, "
              f"median {d['edges_per_cell']['median']:g} edges per cell (same counts for the random graph)."]
    tmp = res_dir / f"{stem}.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, res_dir / f"{stem}.md")


if __name__ == "__main__":
    main()
