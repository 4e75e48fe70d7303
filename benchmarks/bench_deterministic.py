"""What train.deterministic_reductions costs: step time and per-device memory, flag off vs on.

The `tiny` GDKA pretraining step (exactly `make_train_step` + `jit_train_step`) on 8 simulated CPU
devices, on the meshes data=2 x fsdp=2 x tensor=2 and data=4 x fsdp=2, with the batch-shard sums
left to XLA's all-reduce (off) or gathered and added in shard order with the optimiser update on
every device (on). Reported per case: AOT compile time, the fastest and the median of --repeats timed
steps after one warm-up (on and off alternate step by step, so both see the same load on a shared
CPU), `memory_analysis()` temp and argument bytes per device, and whether the on/off losses of the
first step are bitwise equal (they need not be: the sums run in another order).

    .venv/bin/python benchmarks/bench_deterministic.py --quick   # batch 8, S = 128 (< 3 min on 2 cores)
    .venv/bin/python benchmarks/bench_deterministic.py           # batch 16, S = 256

Writes benchmarks/results/deterministic[_quick].md and .json (machine described in both). Fake CPU
devices share the cores, so step times show the extra work and traffic, not a pod's wall clock.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import RESULTS, VOCAB, compile_train_step, machine, synthetic_cells  # noqa: E402
from grn_jax.models import tiny  # noqa: E402
from grn_jax.train import sharding as sh  # noqa: E402
from grn_jax.train.config import MeshConfig, TrainConfig  # noqa: E402


def compile_case(mesh_cfg: MeshConfig, deterministic: bool, cells) -> dict:
    """The compiled step, its state and batch, AOT compile time and memory_analysis() of one case."""
    model_cfg = tiny(VOCAB, n_bins=100, d_model=64, n_layers=2, n_heads=4, mlp_dim=128, attention="diffusion")
    tcfg = TrainConfig(steps=1000, batch_size=cells.cell_index.shape[0], deterministic_reductions=deterministic)
    compiled, state, batch, compile_s = compile_train_step(model_cfg, tcfg, sh.make_mesh(mesh_cfg), cells)
    mem = compiled.memory_analysis()
    state, metrics = compiled(state, batch)  # warm-up
    return {"step": compiled, "state": state, "batch": batch, "first_loss": float(metrics["loss"]),
            "compile_s": round(compile_s, 2), "temp_bytes": int(mem.temp_size_in_bytes),
            "argument_bytes": int(mem.argument_size_in_bytes), "times": []}


def time_alternating(cases: dict, repeats: int) -> None:
    """One timed step of each case in turn, `repeats` rounds: both see the same load on a shared CPU."""
    for _ in range(repeats):
        for c in cases.values():
            t0 = time.perf_counter()
            c["state"], metrics = c["step"](c["state"], c["batch"])
            jax.block_until_ready((c["state"], metrics))
            c["times"].append(time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 8, S = 128")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 20)
    b, s = (8, 128) if args.quick else (16, 256)
    cells = synthetic_cells(np.random.default_rng(0), b, s, 100)
    rows = []
    for label, mesh_cfg in (("data=2 fsdp=2 tensor=2", MeshConfig(2, 2, 2)), ("data=4 fsdp=2", MeshConfig(4, 2, 1))):
        cases = {det: compile_case(mesh_cfg, det, cells) for det in (False, True)}
        time_alternating(cases, repeats)
        for det, c in cases.items():
            rows.append({"mesh": label, "deterministic_reductions": det, "batch": b, "seq_len": s,
                         "compile_s": c["compile_s"], "median_step_s": round(statistics.median(c["times"]), 4),
                         "min_step_s": round(min(c["times"]), 4), "temp_bytes": c["temp_bytes"],
                         "argument_bytes": c["argument_bytes"], "first_loss": c["first_loss"], "repeats": repeats})
            print(json.dumps(rows[-1]), flush=True)
        off, on = rows[-2], rows[-1]
        on["min_step_on_over_off"] = round(on["min_step_s"] / off["min_step_s"], 3)
        on["temp_on_over_off"] = round(on["temp_bytes"] / off["temp_bytes"], 3)
        on["first_loss_bitwise_equal_to_off"] = on["first_loss"] == off["first_loss"]
    name = "deterministic_quick" if args.quick else "deterministic"
    info = machine()
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    lines = [f"# train.deterministic_reductions: cost (tiny GDKA, batch {b}, S = {s}, 8 fake CPU devices)", "",
             f"Machine: {info}", "",
             "| mesh | deterministic | compile s | min step s | median step s | temp MiB/device | args MiB/device "
             "| first loss |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mesh']} | {r['deterministic_reductions']} | {r['compile_s']} | {r['min_step_s']} | "
                     f"{r['median_step_s']} | "
                     f"{r['temp_bytes'] / 2**20:.1f} | {r['argument_bytes'] / 2**20:.2f} | {r['first_loss']!r} |")
    lines.append("")
    for r in rows:
        if "min_step_on_over_off" in r:
            lines.append(f"- {r['mesh']}: fastest step on/off {r['min_step_on_over_off']}, temp memory on/off "
                         f"{r['temp_on_over_off']}, first loss bitwise equal: {r['first_loss_bitwise_equal_to_off']}")
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
