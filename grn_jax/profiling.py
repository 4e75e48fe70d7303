"""Profile training steps: a `jax.profiler` trace plus a per-op time table and roofline figures.

`profile_training(cfg, steps=N, out_dir=...)` builds the configured model,
sharded train state and compiled step exactly as training does, runs one
warm-up step, then N traced steps on a fixed example batch of the configured
bucket shape (the data pipeline is not part of the profile). It writes a
TensorBoard/Perfetto trace under `out_dir` and reports:

* per-op device/executor time, aggregated from the trace over the HLO
  instructions of the compiled step (so it names fusions and Pallas kernels
  as XLA sees them);
* FLOPs per step counted from the traced step with every loop body times
  its trip count (`grn_jax.train.flops`; per device = all / devices), the
  achieved FLOP/s at the measured median step time and, against a stated
  peak, the MFU; XLA's `cost_analysis()` FLOPs (loop bodies counted once)
  beside them, and its bytes accessed per step.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import re
import statistics
import time
from typing import Callable, Optional

import jax


@dataclasses.dataclass
class OpTime:
    name: str
    total_ms: float  # summed over all traced steps and threads/streams
    count: int

    @property
    def nested(self) -> bool:
        """Control-flow ops (while / conditional / call, by HLO name) whose time includes the ops they run."""
        return self.name.startswith(_CONTROL_FLOW)


@dataclasses.dataclass
class ProfileReport:
    backend: str
    n_devices: int
    batch_shape: dict
    compile_s: float
    step_s: list[float]
    flops: Optional[float]  # per step, per device program
    bytes_accessed: Optional[float]
    ops: list[OpTime]
    trace_dir: str
    perfetto_trace: Optional[str]
    xla_flops: Optional[float] = None  # cost_analysis() per device program (each loop body once)
    peak_flops_per_s: Optional[float] = None  # per device; the MFU denominator
    peak_source: str = ""

    @property
    def mfu(self) -> Optional[float]:
        """Model FLOPs utilisation: achieved FLOP/s per device over the stated peak."""
        if self.flops is None or not self.peak_flops_per_s:
            return None
        return self.achieved_flops_per_s / self.peak_flops_per_s

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def achieved_flops_per_s(self) -> Optional[float]:
        return None if self.flops is None else self.flops / self.median_step_s

    @property
    def achieved_bytes_per_s(self) -> Optional[float]:
        return None if self.bytes_accessed is None else self.bytes_accessed / self.median_step_s

    def format(self, top: int = 15) -> str:
        n = len(self.step_s)
        lines = [f"profiled {n} train step(s) on {self.n_devices} {self.backend} device(s); batch {self.batch_shape}",
                 f"compile: {self.compile_s:.2f} s; step time median {self.median_step_s * 1e3:.2f} ms "
                 f"(min {min(self.step_s) * 1e3:.2f} ms)"]
        if self.flops is not None:
            lines.append(f"FLOPs/step (counted, every layer and micro-batch): {self.flops:.4g} per device -> "
                         f"achieved {self.achieved_flops_per_s:.4g} FLOP/s per device")
            if self.mfu is not None:
                lines.append(f"MFU: {self.mfu:.2%} of {self.peak_flops_per_s:.4g} FLOP/s per device "
                             f"({self.peak_source})")
            else:
                lines.append("MFU: no peak known for this device; state one (grn-jax profile --peak-tflops T, "
                             "or peak_flops_per_s)")
        if self.xla_flops is not None:
            lines.append(f"cost_analysis: {self.xla_flops:.4g} FLOPs/step per device (counts each loop body once)")
        if self.bytes_accessed is not None:
            lines.append(f"cost_analysis: {self.bytes_accessed:.4g} bytes accessed/step -> achieved "
                         f"{self.achieved_bytes_per_s:.4g} B/s")
        leaf_ms = sum(o.total_ms for o in self.ops if not o.nested)
        lines.append(f"per-op time from the trace ({len(self.ops)} ops; summed over {n} steps and all "
                     f"devices/threads; {leaf_ms / max(n, 1):.2f} ms/step in leaf ops; share = of leaf time; "
                     f"* = control flow, includes its nested ops):")
        lines.append(f"  {'op':<48} {'ms/step':>9} {'share':>7} {'calls':>6}")
        for o in self.ops[:top]:
            share = f"{o.total_ms / leaf_ms:>6.1%}" if leaf_ms and not o.nested else f"{'*':>6}"
            lines.append(f"  {o.name[:48]:<48} {o.total_ms / n:>9.3f} {share:>7} {o.count:>6}")
        lines.append(f"trace: {self.trace_dir}" + (f" (Perfetto: {self.perfetto_trace})" if self.perfetto_trace else "")
                     + "; open with TensorBoard's profile plugin or ui.perfetto.dev")
        return "\n".join(lines)


_CONTROL_FLOW = ("while", "cond", "call")  # HLO names: while.N, conditional.N / cond.N, call.N
_HLO_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=", re.M)


def hlo_instruction_names(compiled) -> set[str]:
    """Names of the instructions in the compiled module(s) (fusions, custom calls such as Pallas kernels)."""
    return set(_HLO_NAME.findall(compiled.as_text()))


def op_times_from_trace(trace_path: str, names: set[str]) -> list[OpTime]:
    """Sum complete-event durations ('X', microseconds) per op name over a Perfetto/Chrome JSON trace."""
    opener = gzip.open if trace_path.endswith(".gz") else open
    with opener(trace_path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    acc: dict[str, list] = {}
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        name = e.get("name", "")
        if name not in names:
            continue
        slot = acc.setdefault(name, [0.0, 0])
        slot[0] += float(e["dur"]) / 1e3
        slot[1] += 1
    ops = [OpTime(name=k, total_ms=v[0], count=v[1]) for k, v in acc.items()]
    return sorted(ops, key=lambda o: -o.total_ms)


def _cost(compiled) -> tuple[Optional[float], Optional[float]]:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca:
        return None, None
    flops = ca.get("flops")
    nbytes = ca.get("bytes accessed")
    return (float(flops) if flops is not None else None, float(nbytes) if nbytes is not None else None)


# Dense peak FLOP/s per device by `device_kind` prefix (vendor data sheets), for MFU when none is given.
_PEAKS = (
    ("NVIDIA H200", 989e12, "bf16 dense, H200 SXM data sheet"),
    ("NVIDIA H100", 989e12, "bf16 dense, H100 SXM data sheet"),
    ("NVIDIA A100", 312e12, "bf16 dense, A100 data sheet"),
    ("TPU v4", 275e12, "bf16, TPU v4 data sheet"),
    ("TPU v5 lite", 197e12, "bf16, TPU v5e data sheet"),
    ("TPU v5p", 459e12, "bf16, TPU v5p data sheet"),
)


def known_peak(device_kind: str) -> tuple[Optional[float], str]:
    """(peak FLOP/s per device, where the figure comes from) for a known accelerator, else (None, "")."""
    for prefix, peak, source in _PEAKS:
        if device_kind.startswith(prefix):
            return peak, source
    return None, ""


def profile_training(cfg, *, steps: int, out_dir: str, seq_len: Optional[int] = None,
                     num_edges: Optional[int] = None, peak_flops_per_s: Optional[float] = None,
                     log: Callable[[str], None] = print) -> ProfileReport:
    """Trace `steps` compiled train steps of run config `cfg` into `out_dir`; print and return the report.

    `seq_len` / `num_edges` default to the configured largest bucket
    (CLS + tokenize.max_genes, tokenize.max_edges), else 256 / 1024.
    """
    from grn_jax.train.model_fns import model_fns
    from grn_jax.train import sharding as sh
    from grn_jax.train.data import abstract_local_batch, masking_fn
    from grn_jax.train.flops import count_flops
    from grn_jax.train.loop import check_batch_layout
    from grn_jax.train.optim import make_optimizer
    from grn_jax.train.state import init_sharded_state
    from grn_jax.train.step import jit_train_step, make_train_step

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not cfg.model_ready:
        raise ValueError("model.gene_vocab_size: profiling needs the vocabulary size; set it in the config "
                         "or with --set model.gene_vocab_size=N")
    tok = cfg.data.prepare.tokenize if cfg.data.prepare is not None else None
    seq_len = int(seq_len or (tok.max_genes + 1 if tok else 256))
    num_edges = int(num_edges or (tok.max_edges if tok else 1024))
    t = cfg.train
    mesh = sh.make_mesh(cfg.mesh)
    check_batch_layout(cfg, mesh)
    model, init_params, apply_fn = model_fns(cfg.model)
    tx = make_optimizer(t)

    init = init_sharded_state(init_params, tx, mesh, jax.random.key(t.seed))
    batch = abstract_local_batch(cfg.model, t.batch_size, seq_len, num_edges)
    step_fn = make_train_step(apply_fn, masking_fn(cfg), tx, t)
    step = jit_train_step(step_fn, init.shardings, batch, mesh)
    batch = jax.device_put(batch, sh.batch_shardings(batch, mesh))
    flops = count_flops(sh.with_rules(step_fn, mesh), init.state, batch).total / mesh.size

    t0 = time.perf_counter()
    compiled = step.lower(init.state, batch).compile()
    compile_s = time.perf_counter() - t0
    xla_flops, nbytes = _cost(compiled)
    if peak_flops_per_s is not None:
        if not peak_flops_per_s > 0:
            raise ValueError(f"peak_flops_per_s must be > 0 (FLOP/s per device), got {peak_flops_per_s!r}")
        peak, source = float(peak_flops_per_s), "as given"
    else:
        peak, source = known_peak(jax.devices()[0].device_kind)

    state = init.state
    state, metrics = compiled(state, batch)  # warm-up, outside the trace
    jax.block_until_ready(metrics)
    os.makedirs(out_dir, exist_ok=True)
    step_s = []
    with jax.profiler.trace(out_dir, create_perfetto_trace=True):
        for i in range(steps):
            with jax.profiler.StepTraceAnnotation("train_step", step_num=i):
                t0 = time.perf_counter()
                state, metrics = compiled(state, batch)
                jax.block_until_ready(metrics)
                step_s.append(time.perf_counter() - t0)
    traces = sorted(glob.glob(os.path.join(out_dir, "plugins", "profile", "*", "perfetto_trace.json.gz")),
                    key=os.path.getmtime)
    perfetto = traces[-1] if traces else None
    ops = op_times_from_trace(perfetto, hlo_instruction_names(compiled)) if perfetto else []
    report = ProfileReport(
        backend=jax.default_backend(), n_devices=mesh.size,
        batch_shape={"batch_size": t.batch_size, "seq_len": seq_len, "num_edges": num_edges,
                     "grad_accum": t.grad_accum, "attention_impl": cfg.model.attention_impl},
        compile_s=compile_s, step_s=step_s, flops=flops, bytes_accessed=nbytes, ops=ops,
        trace_dir=out_dir, perfetto_trace=perfetto, xla_flops=xla_flops, peak_flops_per_s=peak,
        peak_source=source)
    log(report.format())
    return report


def profile_from_config(config_path: str, *, steps: int, out_dir: str, overrides=(), seq_len: Optional[int] = None,
                        num_edges: Optional[int] = None, peak_flops_per_s: Optional[float] = None,
                        log: Callable[[str], None] = print) -> ProfileReport:
    """`grn-jax profile`: load an experiment YAML (+ `section.field=value` overrides), then `profile_training`."""
    from grn_jax.config import load_run_config

    cfg = load_run_config(config_path, overrides)
    return profile_training(cfg, steps=steps, out_dir=out_dir, seq_len=seq_len, num_edges=num_edges,
                            peak_flops_per_s=peak_flops_per_s, log=log)
