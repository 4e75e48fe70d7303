"""Ahead-of-time check of a configuration: lower + compile the sharded train step on abstract inputs.

Nothing is allocated: the state and the batch are ShapeDtypeStructs carrying
their shardings. The compiled executable reports per-device memory
(`memory_analysis()`); FLOPs are counted from the traced step with every
loop (layers, grad_accum, Chebyshev terms) multiplied by its trip count
(`grn_jax.train.flops`; XLA's `cost_analysis()`, which counts loop bodies
once, is shown beside it). A pod configuration can be checked on a
workstation before paying for the pod (simulate its device count with
`--cpu-devices N` on CPU; sizes then reflect CPU layouts).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Callable, Optional

import jax

from grn_jax.train import sharding as sh
from grn_jax.train.flops import count_flops
from grn_jax.train.loop import check_batch_layout
from grn_jax.train.optim import make_optimizer
from grn_jax.train.state import abstract_with_shardings, state_shardings
from grn_jax.train.step import jit_train_step, make_train_step


if TYPE_CHECKING:
    from grn_jax.config import RunConfig


@dataclasses.dataclass
class CompileReport:
    mesh: dict
    n_devices: int
    batch_shape: dict              # global batch, seq_len, num_edges
    n_params: int
    param_bytes_per_device: int    # from the shardings, f32
    memory: dict                   # memory_analysis() fields, bytes per device
    flops: Optional[float]         # FLOPs of one step per device (counted, loops x trip count; global / devices)
    compile_s: float
    flops_global: Optional[float] = None   # the whole step, all devices
    xla_flops: Optional[float] = None      # cost_analysis() 'flops' (per device program; loop bodies once)
    flops_uncounted: dict = dataclasses.field(default_factory=dict)  # ops whose FLOPs are unknown

    def format(self) -> str:
        lines = [f"mesh {self.mesh} on {self.n_devices} {jax.default_backend()} device(s); "
                 f"batch {self.batch_shape}; {self.n_params:,} parameters",
                 f"parameters per device: {_human(self.param_bytes_per_device)} (f32, sharded)"]
        for k, v in self.memory.items():
            lines.append(f"{k}: {_human(v)} per device")
        if self.flops is not None:
            lines.append(f"FLOPs per step: {self.flops:.4g} per device ({self.flops_global:.4g} in all; "
                         f"every layer, micro-batch and loop iteration counted)")
        if self.xla_flops is not None:
            lines.append(f"XLA cost_analysis FLOPs: {self.xla_flops:.4g} per device (counts each loop body once)")
        if self.flops_uncounted:
            lines.append(f"FLOPs not counted for: {self.flops_uncounted}")
        lines.append(f"compile time: {self.compile_s:.1f} s")
        return "\n".join(lines)


_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1 << 10, "M": 1000**2, "MB": 1000**2, "MIB": 1 << 20,
          "G": 1000**3, "GB": 1000**3, "GIB": 1 << 30, "T": 1000**4, "TB": 1000**4, "TIB": 1 << 40}


def parse_bytes(text: str) -> int:
    """'80GiB', '80GB', '512MiB', '1e9' -> bytes; ValueError naming the value otherwise."""
    raw = str(text).strip()
    num = raw.rstrip("bBiIkKmMgGtT ")
    unit = raw[len(num):].strip().upper()
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not value > 0:
        raise ValueError(f"--device-memory {text!r}: expected a positive size such as 80GiB, 40GB or 512MiB")
    return int(value * _UNITS[unit])


def device_memory_default() -> tuple[Optional[int], str]:
    """(bytes per device, source) from the accelerator's allocator limit; (None, reason) on CPU."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return None, "no default on CPU (pass --device-memory)"
    stats = dev.memory_stats() or {}
    limit = stats.get("bytes_limit")
    return (int(limit), f"{dev.device_kind} allocator limit") if limit else (None, "the device reports no limit")


def footprint(memory: dict) -> int:
    """Per-device bytes the step needs at once: arguments + outputs + temporaries - donated (aliased) outputs."""
    return (memory.get("argument_size_in_bytes", 0) + memory.get("output_size_in_bytes", 0)
            + memory.get("temp_size_in_bytes", 0) - memory.get("alias_size_in_bytes", 0))


def check_device_memory(report: "CompileReport", limit: int, source: str) -> None:
    """ValueError when the compiled step's per-device footprint exceeds `limit`, naming what to change."""
    need = footprint(report.memory)
    if need <= limit:
        return
    temp = report.memory.get("temp_size_in_bytes", 0)
    state = report.memory.get("argument_size_in_bytes", 0)
    if temp >= state:
        advice = ("activations dominate: set model.remat=attention (or block), model.attention_impl=blocked, "
                  "raise train.grad_accum, or put more devices on the batch axes (mesh.data / mesh.fsdp)")
    else:
        advice = ("parameters and optimiser state dominate: raise mesh.fsdp (they are split over fsdp) "
                  "or mesh.tensor, and lower mesh.data by the same factor")
    raise ValueError(
        f"device memory: the step needs {_human(need)} per device (temp {_human(temp)}, arguments "
        f"{_human(state)}) but {_human(limit)} are available ({source}); {advice}")


def _human(n_bytes: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.2f} {unit}"
    return f"{n_bytes} B"


def _memory_fields(compiled) -> dict:
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    out = {}
    for name in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                 "alias_size_in_bytes", "generated_code_size_in_bytes"):
        v = getattr(ma, name, None)
        if v is not None:
            out[name] = int(v)
    return out


def _flops(compiled) -> Optional[float]:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca or "flops" not in ca:
        return None
    return float(ca["flops"])


def compile_only(cfg: RunConfig, *, seq_len: Optional[int] = None, num_edges: Optional[int] = None,
                 device_memory: Optional[str | int] = None, log: Callable[[str], None] = print) -> CompileReport:
    """Lower and compile the train step for `cfg` on its mesh; print and return the report.

    `seq_len` / `num_edges` default to the largest bucket the data config allows
    (CLS + `tokenize.max_genes`, `tokenize.max_edges`), else 2048 / 8192.
    `device_memory` ('80GiB' or bytes; default: the accelerator's allocator
    limit, none on CPU) is checked against the per-device footprint: over it,
    ValueError naming the axis to change.
    """
    if device_memory is not None:
        limit, source = (device_memory, "as given") if isinstance(device_memory, int) else \
            (parse_bytes(device_memory), f"--device-memory {device_memory}")
    else:
        limit, source = None, ""
    from grn_jax.train.model_fns import model_fns
    from grn_jax.models.summary import count_params
    from grn_jax.train.data import abstract_local_batch, masking_fn

    if not cfg.model_ready:
        raise ValueError("model.gene_vocab_size: compile-only needs the vocabulary size; set "
                         "model.gene_vocab_size (e.g. --set model.gene_vocab_size=20003)")
    tok = cfg.data.prepare.tokenize if cfg.data.prepare is not None else None
    seq_len = seq_len or (tok.max_genes + 1 if tok else 2048)
    num_edges = num_edges or (tok.max_edges if tok else 8192)
    t = cfg.train
    mesh = sh.make_mesh(cfg.mesh)
    check_batch_layout(cfg, mesh)
    model, init_params, apply_fn = model_fns(cfg.model)
    tx = make_optimizer(t)

    abstract, shardings, _ = state_shardings(init_params, tx, mesh, jax.random.key(0))
    batch = abstract_local_batch(cfg.model, t.batch_size, seq_len, num_edges)
    step_fn = make_train_step(apply_fn, masking_fn(cfg), tx, t)
    step = jit_train_step(step_fn, shardings, batch, mesh)
    bs = sh.batch_sharding(mesh)
    batch = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=bs), batch)
    abstract_state = abstract_with_shardings(abstract, shardings)
    counted = count_flops(sh.with_rules(step_fn, mesh), abstract_state, batch)
    t0 = time.perf_counter()
    compiled = step.lower(abstract_state, batch).compile()
    compile_s = time.perf_counter() - t0

    param_bytes = 0
    for a, s in zip(jax.tree_util.tree_leaves(abstract.params), jax.tree_util.tree_leaves(shardings.params)):
        shard_shape = s.shard_shape(a.shape)
        n = 1
        for d in shard_shape:
            n *= d
        param_bytes += n * a.dtype.itemsize
    report = CompileReport(
        mesh=dict(mesh.shape), n_devices=mesh.size,
        batch_shape={"batch_size": t.batch_size, "seq_len": seq_len, "num_edges": num_edges,
                     "grad_accum": t.grad_accum},
        n_params=count_params(abstract.params), param_bytes_per_device=param_bytes,
        memory=_memory_fields(compiled), flops=counted.total / mesh.size, compile_s=compile_s,
        flops_global=float(counted.total), xla_flops=_flops(compiled), flops_uncounted=counted.uncounted)
    if limit is None:
        limit, source = device_memory_default()
    log(report.format())
    log(f"per-device footprint: {_human(footprint(report.memory))} (arguments + outputs + temp - donated)"
        + (f" of {_human(limit)} ({source})" if limit else f"; {source}"))
    if limit:
        check_device_memory(report, limit, source)
    return report
