"""Inference throughput: `grn-jax embed` end to end, and the exported artefact vs the live jitted model.

Setup (all in this run): the bundled PBMC counts (700 cells x 765 genes),
prepared as in the quickstart (max 511 genes per cell, sequence buckets
64..512) with a random one-way GRN prior (~4 regulators per target gene), and a
run directory holding a freshly initialised GREmLN (GDKA, adaptive Chebyshev
order; weights do not change the cost) saved with the pretraining Checkpointer.

Reported:
- per bucket batch [B, S]: compile time (`lower().compile()`) and median call
  time of the live `jax.jit` inference function and of the deserialized
  `jax.export` artefact (symbolic batch/edges), same inputs; their ratio is the
  serving overhead of the export;
- `embed` end to end (read h5ad in chunks, tokenise, bucket, run, write obsm/varm)
  at two batch sizes: cold (includes compiling each bucket shape) and warm
  (compiled) median over repeats, in cells/s.

    .venv/bin/python benchmarks/bench_embed.py            # d_model 128, 2 layers, 3 repeats
    .venv/bin/python benchmarks/bench_embed.py --quick    # d_model 32, 1 layer, 2 repeats

Writes benchmarks/results/embed.md and embed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    from grn_jax.machine import describe_machine

    return describe_machine()


def random_prior(genes, seed=0):
    from grn_jax.types import GeneNetwork

    rng = np.random.default_rng(seed)
    genes = np.asarray(genes)
    tfs = rng.choice(len(genes), size=len(genes) // 20, replace=False)
    reg, tgt = [], []
    for t in range(len(genes)):
        for r in rng.choice(tfs, size=4, replace=False):
            if r != t:
                reg.append(genes[r])
                tgt.append(genes[t])
    w = rng.uniform(0.1, 1.0, len(reg))
    return GeneNetwork(np.array(reg), np.array(tgt), w, np.zeros(len(reg)), {"method": "random prior (benchmark)"})


def make_run(root: Path, d_model: int, n_layers: int):
    from grn_jax.config import build_run_config, resolve_vocab_size
    from grn_jax.data import prepare
    from grn_jax.data.quickstart import quickstart_config
    from grn_jax.datasets.pbmc import pbmc68k
    from grn_jax.graphs.network_io import write_network
    from grn_jax.models import build_model, example_batch
    from grn_jax.train import sharding as sh
    from grn_jax.train.checkpoint import Checkpointer
    from grn_jax.train.data import open_train_data
    from grn_jax.train.optim import make_optimizer
    from grn_jax.train.state import init_sharded_state

    adata = pbmc68k()
    prior = random_prior(list(adata.var_names))
    write_network(prior, root / "prior.tsv")
    prepare(adata, root / "shards", quickstart_config(), graph=prior, overwrite=True)
    adata.uns.clear()
    adata.write_h5ad(root / "pbmc.h5ad")
    cfg = build_run_config({"name": "bench", "data": {"shards": str(root / "shards")},
                            "model": {"preset": "tiny", "n_bins": 100, "d_model": d_model, "n_layers": n_layers,
                                      "n_heads": 4, "mlp_dim": 4 * d_model},
                            "train": {"run_dir": str(root / "run"), "tensorboard": False, "progress": False},
                            "mesh": {"data": 1}})
    data = open_train_data(cfg, process_index=0, process_count=1, log=lambda m: None)
    cfg = resolve_vocab_size(cfg, data.vocab_size)
    model = build_model(cfg.model)
    batch = example_batch(cfg.model, batch_size=1, seq_len=8, num_edges=8)
    mesh = sh.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    init = init_sharded_state(lambda r: model.init({"params": r}, batch, deterministic=True)["params"],
                              make_optimizer(cfg.train), mesh, jax.random.key(0))
    ckpt = Checkpointer(root / "run" / "checkpoints", every=1, async_save=False)
    ckpt.save(1, init.state, data_state={}, config={**cfg.to_dict(), "tokenization": data.tokenization},
              vocab=data.vocab, force=True)
    ckpt.close()
    return root / "run", root / "pbmc.h5ad", root / "prior.tsv", root / "shards"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    d_model, n_layers, repeats = (32, 1, 2) if args.quick else (128, 2, 3)

    from grn_jax.data import ShardStore, collate
    from grn_jax.inference import GraphSpec, batch_arrays, embed, export_model, load_export, load_pretrained
    from grn_jax.inference.model_fn import make_inference_fn
    from grn_jax.models import build_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    t0 = time.perf_counter()
    run, h5ad, prior, shards = make_run(tmp, d_model, n_layers)
    setup_s = time.perf_counter() - t0
    pre = load_pretrained(run)
    export_model(pre, tmp / "export", platforms=("cpu",), log=lambda m: None)
    served = load_export(tmp / "export")
    store = ShardStore(shards)

    # model-only comparison on the most used bucket, B = 32 cells
    lengths = np.array([len(store.cell(i)["gene_ids"]) for i in range(len(store))])
    s_used = [int(store.seq_buckets[np.searchsorted(store.seq_buckets, n + 1)]) for n in lengths]
    bucket = max(set(s_used), key=s_used.count)
    cells = [store.cell(i) for i in np.flatnonzero(np.array(s_used) == bucket)[:32]]
    batch = collate(cells, store.bin_spec, store.seq_buckets, store.edge_buckets, batch_size=32)
    arrays = batch_arrays(batch.tokens, False)
    live = jax.jit(make_inference_fn(build_model(pre.model_config), False))
    t = time.perf_counter()
    compiled = live.lower(pre.params, *arrays).compile()
    live_compile = time.perf_counter() - t
    live_s = median_time(lambda: compiled(pre.params, *arrays), repeats + 2)
    t = time.perf_counter()
    jax.block_until_ready(served(*arrays))
    exp_first = time.perf_counter() - t
    exp_s = median_time(lambda: served(*arrays), repeats + 2)
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(served(*arrays), compiled(pre.params, *arrays)))
    model_rows = [{"batch": 32, "seq_len": bucket, "edges": int(arrays[3].shape[1]),
                   "live_compile_s": live_compile, "live_median_s": live_s,
                   "export_first_call_s": exp_first, "export_median_s": exp_s,
                   "export_over_live": exp_s / live_s, "max_abs_diff": diff}]

    # embed end to end, warm (first run per batch size compiles the bucket shapes)
    embed_rows = []
    graph = GraphSpec(network=str(prior))
    for bs in (16, 64):
        kw = dict(graph=graph, batch_size=bs, overwrite=True, progress=False, log=lambda m: None)
        t = time.perf_counter()
        embed(pre, h5ad, tmp / "out.h5ad", **kw)
        cold = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            embed(pre, h5ad, tmp / "out.h5ad", **kw)
            times.append(time.perf_counter() - t)
        warm = statistics.median(times)
        embed_rows.append({"batch_size": bs, "cells": len(store), "cold_s": cold, "warm_median_s": warm,
                           "cells_per_s": len(store) / warm})

    result = {"machine": machine(), "config": {"d_model": d_model, "n_layers": n_layers, "repeats": repeats,
                                               "quick": args.quick, "setup_s": setup_s},
              "model": model_rows, "embed": embed_rows}
    name = "embed_quick" if args.quick else "embed"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
    m = result["machine"]
    lines = [f"# Inference throughput ({'quick' if args.quick else 'full'})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, jax {m['jax']} ({m['backend']}), 1-min load average "
             f"{m['load_average_1min']:.1f} when it ran (the machine was shared: timings are noisy).",
             f"Model: GREmLN GDKA, d_model {d_model}, {n_layers} layers; data: 700 PBMCs, random prior GRN.",
             f"Command: `.venv/bin/python benchmarks/bench_embed.py{' --quick' if args.quick else ''}`", "",
             "## Live jitted model vs exported artefact (same batch)", "",
             "| B | S | E | live compile s | live median ms | export 1st call s | export median ms | export/live | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in model_rows:
        lines.append(f"| {r['batch']} | {r['seq_len']} | {r['edges']} | {r['live_compile_s']:.2f} | "
                     f"{1e3 * r['live_median_s']:.1f} | {r['export_first_call_s']:.2f} | {1e3 * r['export_median_s']:.1f} | "
                     f"{r['export_over_live']:.2f} | {r['max_abs_diff']:.1e} |")
    lines += ["", "## `embed` end to end (h5ad in, h5ad out)", "",
              "| batch size | cells | cold s (compiles) | warm median s | cells/s |", "|---|---|---|---|---|"]
    for r in embed_rows:
        lines.append(f"| {r['batch_size']} | {r['cells']} | {r['cold_s']:.2f} | {r['warm_median_s']:.2f} | "
                     f"{r['cells_per_s']:.0f} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
