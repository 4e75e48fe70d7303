"""Per-device memory of the compiled train step: remat policies, blocked attention, FSDP vs data parallel.

Every figure is read from the compiled step exactly as `grn-jax pretrain --compile-only` builds it
(`grn_jax.train.compile.compile_only`: abstract sharded state and batch, `memory_analysis()`), on fake
CPU devices, so sizes reflect CPU layouts and XLA:CPU's scheduler. Three tables:
  1. gremln_base (d 512, 3 GDKA layers) on mesh fsdp=8: temp bytes for attention_impl xla | blocked
     x remat none | attention | block, at sequence length --seq-len;
  2. the same global batch on FSDP-8 vs data-parallel-8 (tiny and gremln_base): temp and argument bytes;
  3. FLOPs counted from the traced step (loops x trip count) vs XLA's cost_analysis, 2 vs 4 layers and
     grad_accum 1 vs 2 at the same micro-batch.

    .venv/bin/python benchmarks/bench_memory.py --quick   # S = 256
    .venv/bin/python benchmarks/bench_memory.py           # S = 1024

Writes benchmarks/results/memory.md and memory.json (machine described in both).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax

from grn_jax.train.main import use_cpu_devices

use_cpu_devices(8)  # 8 simulated CPU devices, before any backend is chosen

from grn_jax.config import load_run_config  # noqa: E402
from grn_jax.train.compile import compile_only  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
MIB = 1 << 20


def _compile(config: str, overrides: list, seq_len: int, num_edges: int):
    cfg = load_run_config(CONFIGS / config, ["model.gene_vocab_size=20003", *overrides])
    return compile_only(cfg, seq_len=seq_len, num_edges=num_edges, log=lambda _: None)


def _row(report) -> dict:
    m = report.memory
    return {"temp_MiB": m.get("temp_size_in_bytes", 0) / MIB, "argument_MiB": m.get("argument_size_in_bytes", 0) / MIB,
            "flops_counted_per_device": report.flops, "flops_xla_per_device": report.xla_flops,
            "compile_s": report.compile_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="S = 256 instead of 1024")
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--tables", default="remat,layouts,flops", help="comma-separated subset of remat,layouts,flops")
    ap.add_argument("--out", default=None, help="result name under benchmarks/results (default: memory[_quick])")
    args = ap.parse_args(argv)
    tables = set(args.tables.split(","))
    seq = args.seq_len or (256 if args.quick else 1024)
    edges = 4 * seq
    base = ["train.batch_size=8", "mesh.data=1", "mesh.fsdp=8", "mesh.tensor=1"]

    remat = []
    for impl in ("xla", "blocked") if "remat" in tables else ():
        for policy in ("none", "attention", "block"):
            r = _compile("gremln_base.yaml", base + [f"model.attention_impl={impl}", f"model.remat={policy}",
                                                     "model.attention_block=256"], seq, edges)
            remat.append({"attention_impl": impl, "remat": policy, **_row(r)})
            print(remat[-1], flush=True)

    layouts = []
    for config, model in (("tiny.yaml", ["model.d_model=64"]), ("gremln_base.yaml", [])) if "layouts" in tables else ():
        for name, mesh in (("fsdp8", ["mesh.data=1", "mesh.fsdp=8"]), ("dp8", ["mesh.data=8", "mesh.fsdp=1"])):
            r = _compile(config, ["train.batch_size=16", "mesh.tensor=1", *mesh, *model], 256, 1024)
            layouts.append({"config": config, "mesh": name, "param_MiB_per_device": r.param_bytes_per_device / MIB,
                            **_row(r)})
            print(layouts[-1], flush=True)

    flops = []
    for layers, bs, ga in ((2, 16, 1), (4, 16, 1), (2, 32, 2)) if "flops" in tables else ():
        r = _compile("tiny.yaml", [f"model.n_layers={layers}", f"train.batch_size={bs}", f"train.grad_accum={ga}",
                                   "mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1"], 128, 512)
        flops.append({"n_layers": layers, "batch_size": bs, "grad_accum": ga, **_row(r)})
        print(flops[-1], flush=True)

    from grn_jax.machine import describe_machine

    machine = describe_machine()
    machine["devices"] = f"{jax.device_count()} x {jax.devices()[0].device_kind} (fake CPU devices share the cores)"
    out = {"machine": machine, "command": "benchmarks/bench_memory.py " + " ".join(argv or sys.argv[1:]),
           "seq_len": seq, "num_edges": edges, "remat": remat, "layouts": layouts, "flops": flops}
    RESULTS.mkdir(exist_ok=True)
    name = args.out or ("memory_quick" if args.quick else "memory")
    _write(RESULTS / f"{name}.json", json.dumps(out, indent=1))
    _write(RESULTS / f"{name}.md", _markdown(out))
    return 0


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _markdown(out: dict) -> str:
    lines = [f"# Train-step memory (compile-only, `{out['command']}`)", "",
             f"Machine: {out['machine']}", ""]
    if out["remat"]:
        lines += _remat_table(out)
    if out["layouts"]:
        lines += _layout_table(out)
    if out["flops"]:
        lines += _flops_table(out)
    return "\n".join(lines) + "\n"


def _remat_table(out: dict) -> list:
    lines = [f"## gremln_base, mesh fsdp=8, batch 8 (1 cell per device), S = {out['seq_len']}, "
             f"E = {out['num_edges']}, attention_block 256", "",
             "| attention_impl | remat | temp MiB/device | arguments MiB/device | counted FLOPs/device | compile s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in out["remat"]:
        lines.append(f"| {r['attention_impl']} | {r['remat']} | {r['temp_MiB']:.1f} | {r['argument_MiB']:.1f} | "
                     f"{r['flops_counted_per_device']:.4g} | {r['compile_s']:.1f} |")
    return lines + [""]


def _layout_table(out: dict) -> list:
    lines = ["## FSDP-8 vs data-parallel-8, same global batch 16, S = 256", "",
              "| config | mesh | temp MiB/device | arguments MiB/device | parameters MiB/device |",
              "|---|---|---:|---:|---:|"]
    for r in out["layouts"]:
        lines.append(f"| {r['config']} | {r['mesh']} | {r['temp_MiB']:.2f} | {r['argument_MiB']:.2f} | "
                     f"{r['param_MiB_per_device']:.2f} |")
    return lines + [""]


def _flops_table(out: dict) -> list:
    lines = ["## FLOPs per step per device: counted (loops x trip count) vs XLA cost_analysis (tiny, data=8, "
              "S = 128)", "", "| n_layers | batch | grad_accum | counted | XLA cost_analysis | counted / XLA |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in out["flops"]:
        ratio = r["flops_counted_per_device"] / r["flops_xla_per_device"] if r["flops_xla_per_device"] else float("nan")
        lines.append(f"| {r['n_layers']} | {r['batch_size']} | {r['grad_accum']} | {r['flops_counted_per_device']:.4g} | "
                     f"{r['flops_xla_per_device']:.4g} | {ratio:.2f} |")
    return lines + [""]


if __name__ == "__main__":
    raise SystemExit(main())
