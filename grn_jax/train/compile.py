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
                 log: Callable[[str], None] = print) -> CompileReport:
    """Lower and compile the train step for `cfg` on its mesh; print and return the report.

    `seq_len` / `num_edges` default to the largest bucket the data config allows
    (CLS + `tokenize.max_genes`, `tokenize.max_edges`), else 2048 / 8192.
    """
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
    log(report.format())
    return report
