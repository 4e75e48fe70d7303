"""Training-step throughput: the full compiled pretraining step (masking, forward, backward, AdamW).

Three comparisons, each within the same run:
  1. `tiny` and `gremln_base` model configs, GDKA (diffusion) vs vanilla attention;
  2. the `tiny` GDKA step on a 1-device mesh vs the same global batch on 8 fake CPU devices
     (mesh data=8 and data=2 x fsdp=2 x tensor=2): the overhead of SPMD partitioning
     and collectives when the devices share one CPU.
The step is exactly the one `grn-jax pretrain` runs (`make_train_step` + `jit_train_step`
with shardings and donation) on synthetic cells with GRN-like subgraphs (each gene has
1 + Poisson(2) regulators among ~5 % TF positions; edge budget padded to a power of two).

Reported per case: compile time (AOT `lower().compile()`, separate), median step time over
--repeats timed steps after one warm-up step, steps/s, cells/s and tokens/s.

    .venv/bin/python benchmarks/bench_train.py --quick   # CPU smoke sizes (< 3 min)
    .venv/bin/python benchmarks/bench_train.py           # batch 8, S = 512 for gremln_base

Writes benchmarks/results/train.md and train.json (machine described in both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

from grn_jax.train.main import use_cpu_devices

use_cpu_devices(8)  # 8 simulated CPU devices, before any backend is chosen

from grn_jax.data.collate import CellBatch  # noqa: E402
from grn_jax.data.masking import mask_bins  # noqa: E402
from grn_jax.models import build_model, example_batch, gremln_base, tiny  # noqa: E402
from grn_jax.train import sharding as sh  # noqa: E402
from grn_jax.train.config import MeshConfig, TrainConfig  # noqa: E402
from grn_jax.train.optim import make_optimizer  # noqa: E402
from grn_jax.train.state import init_sharded_state  # noqa: E402
from grn_jax.train.step import jit_train_step, make_train_step  # noqa: E402
from grn_jax.types import GENE_CLS, GENE_PAD, BinSpec, GraphBatch, TokenBatch  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VOCAB = 2003


def machine() -> dict:
    from grn_jax.machine import describe_machine

    info = describe_machine()
    info["devices"] = f"{jax.device_count()} x {jax.devices()[0].device_kind} (fake CPU devices share the cores)"
    return info


def synthetic_cells(rng: np.random.Generator, batch: int, seq_len: int, n_bins: int) -> CellBatch:
    """`batch` full-length cells with GRN-like one-way edges among their gene positions."""
    spec = BinSpec(n_bins)
    genes = seq_len - 1
    gene_ids = np.full((batch, seq_len), GENE_PAD, np.int32)
    bins = np.full((batch, seq_len), spec.pad_id, np.int32)
    gene_ids[:, 0], bins[:, 0] = GENE_CLS, spec.cls_id
    edges = []
    for b in range(batch):
        gene_ids[b, 1:] = 3 + rng.choice(VOCAB - 3, genes, replace=False)
        bins[b, 1:] = rng.integers(0, n_bins, genes)
        n_tf = max(1, genes // 20)
        tfs = 1 + rng.choice(genes, n_tf, replace=False)
        n_reg = 1 + rng.poisson(2.0, genes)
        dst = np.repeat(np.arange(1, seq_len), n_reg)
        src = tfs[rng.integers(0, n_tf, len(dst))]
        keep = src != dst
        edges.append((src[keep], dst[keep]))
    e = 1 << int(np.ceil(np.log2(max(len(s) for s, _ in edges))))
    snd = np.ones((batch, e), np.int32)
    rcv = np.ones((batch, e), np.int32)
    w = np.zeros((batch, e), np.float32)
    m = np.zeros((batch, e), bool)
    for b, (s, d) in enumerate(edges):
        snd[b, :len(s)], rcv[b, :len(s)], w[b, :len(s)], m[b, :len(s)] = s, d, rng.uniform(0.1, 1, len(s)), True
    tokens = TokenBatch(gene_ids=gene_ids, bins=bins, targets=np.zeros_like(bins),
                        loss_mask=np.zeros((batch, seq_len), bool), token_mask=np.ones((batch, seq_len), bool),
                        graph=GraphBatch(snd, rcv, w, m))
    return CellBatch(tokens=tokens, cell_index=np.arange(batch, dtype=np.int32), cell_mask=np.ones(batch, bool))


def compile_train_step(model_cfg, tcfg: TrainConfig, mesh, cells: CellBatch):
    """The pretraining step exactly as `grn-jax pretrain` builds it, AOT-compiled on `mesh`.

    Returns (compiled step, initial sharded state, the global batch, compile seconds).
    """
    model = build_model(model_cfg)
    tx = make_optimizer(tcfg)
    init_batch = example_batch(model_cfg, batch_size=1, seq_len=8, num_edges=8)

    def init_params(rng):
        return model.init({"params": rng}, init_batch, deterministic=True)["params"]

    def apply_fn(params, batch, *, deterministic, rngs):
        return model.apply({"params": params}, batch, deterministic=deterministic, rngs=rngs).bin_logits

    def mask_fn(key, batch):
        return mask_bins(key, batch.tokens, 0.3, model_cfg.bin_spec, cell_ids=batch.cell_index)

    init = init_sharded_state(init_params, tx, mesh, jax.random.key(0))
    step = jit_train_step(make_train_step(apply_fn, mask_fn, tx, tcfg), init.shardings, cells, mesh)
    batch = sh.global_batch(cells, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(init.state, batch).compile()
    return compiled, init.state, batch, time.perf_counter() - t0


def time_step(model_cfg, mesh_cfg: MeshConfig, n_devices: int, cells: CellBatch, repeats: int) -> dict:
    """Compile (AOT, timed apart) and time the sharded train step on `n_devices` devices."""
    tcfg = TrainConfig(steps=1000, batch_size=cells.cell_index.shape[0])
    mesh = sh.make_mesh(mesh_cfg, jax.devices()[:n_devices])
    compiled, state, batch, compile_s = compile_train_step(model_cfg, tcfg, mesh, cells)
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    b, s = cells.tokens.gene_ids.shape
    return {"compile_s": round(compile_s, 2), "median_step_s": round(med, 4), "steps_per_s": round(1 / med, 3),
            "cells_per_s": round(b / med, 1), "tokens_per_s": round(b * s / med, 0),
            "loss_finite": bool(np.isfinite(float(metrics["loss"]))), "repeats": repeats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a busy CPU (< 3 minutes)")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    quick = args.quick
    repeats = args.repeats or (3 if quick else 10)
    rng = np.random.default_rng(0)
    sizes = {"tiny": (8, 128) if quick else (16, 256), "gremln_base": (2, 128) if quick else (8, 512)}
    configs = {
        "tiny": lambda attn: tiny(VOCAB, n_bins=100, d_model=64, n_layers=2, n_heads=4, mlp_dim=128, attention=attn),
        "gremln_base": lambda attn: gremln_base(VOCAB, attention=attn),
    }
    rows = []
    one = MeshConfig(1, 1, 1)
    for name, make in configs.items():
        b, s = sizes[name]
        cells = synthetic_cells(rng, b, s, 100)
        pair = {}
        for attn in ("diffusion", "vanilla"):
            r = time_step(make(attn), one, 1, cells, repeats)
            pair[attn] = r
            rows.append({"case": f"{name} {attn}", "config": name, "attention": attn, "mesh": "1 device",
                         "batch": b, "seq_len": s, "edges": int(cells.tokens.graph.senders.shape[1]), **r})
            print(json.dumps(rows[-1]), flush=True)
        rows[-1]["gdka_over_vanilla"] = round(pair["diffusion"]["median_step_s"] / pair["vanilla"]["median_step_s"],
                                              3)
    b, s = sizes["tiny"]
    cells = synthetic_cells(rng, b, s, 100)
    base = None
    for label, mesh_cfg, n in (("1 device", one, 1), ("8 devices data=8", MeshConfig(8, 1, 1), 8),
                               ("8 devices 2x2x2", MeshConfig(2, 2, 2), 8)):
        r = time_step(configs["tiny"]("diffusion"), mesh_cfg, n, cells, repeats)
        base = base or r["median_step_s"]
        rows.append({"case": f"tiny diffusion, {label}", "config": "tiny", "attention": "diffusion", "mesh": label,
                     "batch": b, "seq_len": s, "edges": int(cells.tokens.graph.senders.shape[1]), **r,
                     "over_1_device": round(r["median_step_s"] / base, 3)})
        print(json.dumps(rows[-1]), flush=True)

    info = machine()
    os.makedirs(RESULTS, exist_ok=True)
    out = {"benchmark": "train", "quick": quick, "machine": info, "command": " ".join(["benchmarks/bench_train.py"]
                                                                                      + sys.argv[1:]), "rows": rows}
    with open(os.path.join(RESULTS, "train.json"), "w") as f:
        json.dump(out, f, indent=1)
    lines = ["# Training-step throughput (`benchmarks/bench_train.py`)", "",
             f"Command: `.venv/bin/python {out['command']}`  ", f"Machine: {info['cpu']}, {info['cores']} cores, "
             f"JAX {info['jax']}, backend {info['backend']}, {info['devices']}.  ",
             f"Median of {repeats} timed steps after one warm-up; compile time (AOT) separate. The step is the "
             "one `grn-jax pretrain` runs: masking, forward, backward, clip + AdamW, NaN guard.", "",
             "| case | mesh | batch x S (edges) | compile s | step s | steps/s | cells/s | tokens/s | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("gdka_over_vanilla")
        ratio = f"GDKA/vanilla {ratio}" if ratio is not None else (
            f"vs 1 device {r['over_1_device']}" if "over_1_device" in r else "")
        lines.append(f"| {r['case']} | {r['mesh']} | {r['batch']} x {r['seq_len']} ({r['edges']}) | {r['compile_s']} "
                     f"| {r['median_step_s']} | {r['steps_per_s']} | {r['cells_per_s']} | {r['tokens_per_s']:.0f} "
                     f"| {ratio} |")
    lines += ["", "The 8 fake CPU devices share the same cores as the 1-device run, so the sharded rows measure "
              "partitioning and collective overhead, not a speed-up. Timings from a shared, busy machine are noisy."]
    with open(os.path.join(RESULTS, "train.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
