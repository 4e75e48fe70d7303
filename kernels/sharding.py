"""Per-cell kernels under `shard_map`: each device computes only its own cells.

A `pallas_call` or an XLA FFI custom call has no SPMD partitioning rule: under a
batch-sharded `jit` XLA gathers its operands and every device runs the whole
batch. Every kernel of this package computes each cell independently, so it is
correct per shard; `over_batch` runs one under `shard_map` over the mesh axes
that the logical axis rules give the batch (`grn_jax.axes.BATCH`) when a mesh
is in context — `grn_jax.train.sharding.rules_in_force(mesh)`, which every
compiled step enters, or `jax.set_mesh` with flax's `nn.logical_axis_rules`.
With no mesh or no rule for the batch, the kernel runs as it always did.

Batch axes that do not divide the batch are left out (the kernel is then
replicated over them: correct, not faster), as are the mesh's other axes
(tensor): their devices each run the same shard. `batch_shards` says how many
distinct shards a batch gets, so a caller can choose a kernel only when they
cover every device (`grn_jax.graphs.diffusion.resolve_impl`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from jax.sharding import PartitionSpec as P

from grn_jax import _compat, axes


def batch_mesh_axes(batch_size: Optional[int] = None):
    """(abstract mesh, mesh axes that shard the batch) in this context, or (None, ()) without any.

    Only axes of size > 1 whose product divides `batch_size` are kept (in rule
    order); `batch_size=None` keeps every such axis.
    """
    mesh = _compat.get_abstract_mesh()
    if mesh is None:
        return None, ()
    import flax.linen as nn  # noqa: PLC0415  (the rules table lives in flax's context)

    spec = nn.logical_to_mesh_axes((axes.BATCH,))
    entry = spec[0] if len(spec) else None
    names = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
    kept, size = [], 1
    for name in names:
        n = dict(mesh.shape).get(name, 1)
        if n > 1 and (batch_size is None or batch_size % (size * n) == 0):
            kept.append(name)
            size *= n
    return (mesh, tuple(kept)) if kept else (None, ())


def batch_shards(batch_size: Optional[int] = None) -> tuple[int, int]:
    """(distinct batch shards, devices in the mesh) in this context; (1, 1) without a mesh."""
    mesh = _compat.get_abstract_mesh()
    if mesh is None:
        return 1, 1
    shape = dict(mesh.shape)
    return math.prod(shape[n] for n in batch_mesh_axes(batch_size)[1]), math.prod(shape.values())


def over_batch(fn: Callable, args: Sequence, batched: Sequence[bool], *, batch_size: int):
    """`fn(*args)`, under `shard_map` over the batch's mesh axes when a mesh with such axes is in context.

    `batched[i]` says whether every leaf of `args[i]` (a pytree is fine) has the
    batch as its leading dimension (sharded) or not (replicated, e.g. the
    Chebyshev coefficients). Every output leaf must be batch-leading. `fn` then
    sees each device's cells only: local shapes, batch_size / shards rows.
    """
    if len(args) != len(batched):
        raise ValueError(f"over_batch: {len(args)} arguments but {len(batched)} batched flags")
    mesh, names = batch_mesh_axes(batch_size)
    if not names:
        return fn(*args)
    spec = P(names)
    in_specs = tuple(spec if b else P() for b in batched)
    # check_vma=False: pallas_call and ffi_call carry no varying-manual-axes rule on every
    # supported JAX; the outputs are per-shard by construction (every output is batch-leading).
    return _compat.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)(*args)
