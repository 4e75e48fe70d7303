"""Native CPU Chebyshev diffusion (`cpu_diffusion.cc`) as a differentiable JAX function.

`cpu_diffuse(data, rows, cols, q, graph, passthrough, coeffs)` returns exactly what the
pure-JAX `grn_jax.graphs.diffuse` returns for the same BCOO Laplacian entries and masks,
computed by one XLA FFI custom call (see the .cc file for the loop order and why).

Gradients (`custom_vjp`):
* w.r.t. Q: the map Q -> out is `P Q + G f(L) G Q` with diagonal masks P, G and a
  symmetric f(L) (L is symmetric by construction), so its transpose is itself: the
  cotangent is `P dY + G f(L) G dY`, i.e. one more native call.
* w.r.t. the Laplacian values: delegated to `reference_vjp_data` (the caller's pure-JAX
  COO expansion), so edge weights stay differentiable; under `jit` XLA removes that work
  whenever the values' cotangent is unused (fixed GRNs, the usual case).

Under a batch-sharded mesh (`grn_jax.kernels.sharding`) each native call runs in
`shard_map`, so every device diffuses only its own cells.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import native_build
from .sharding import over_batch


def tile_width(num_nodes: int, width: int, itemsize: int, cache_bytes: int = 1 << 20) -> int:
    """Column tile: the widest of 64/32/16/8 whose three [S, tile] vectors fit `cache_bytes`
    (about half a core's L2) and that divides the width; else the whole width if narrower."""
    for t in (64, 32, 16, 8):
        if 3 * num_nodes * t * itemsize <= cache_bytes and width % t == 0:
            return t
    for t in (64, 32, 16, 8):
        if width % t == 0:
            return t
    return min(width, 64)


def _call(data, rows, cols, q, graph, passthrough, coeffs):
    """The FFI call, per device over its own cells when a batch-sharded mesh is in context (`sharding`)."""
    return over_batch(_local_call, (data, rows, cols, q, graph, passthrough, coeffs),
                      (True, True, True, True, True, True, False), batch_size=q.shape[0])


def _local_call(data, rows, cols, q, graph, passthrough, coeffs):
    if native_build.load() is None:
        raise RuntimeError(f"native CPU diffusion unavailable: {native_build.unavailable_reason()}")
    dtype = jnp.dtype(q.dtype).name
    if dtype not in native_build.FFI_NAMES:
        raise ValueError(f"cpu_diffuse computes in float32 or float64, got {dtype}; cast Q first")
    b, s, d = q.shape
    tile = tile_width(s, d, jnp.dtype(q.dtype).itemsize)
    call = jax.ffi.ffi_call(native_build.FFI_NAMES[dtype], jax.ShapeDtypeStruct(q.shape, q.dtype),
                            vmap_method="sequential")
    return call(q, data.astype(q.dtype), rows.astype(jnp.int32), cols.astype(jnp.int32), graph.astype(bool),
                passthrough.astype(bool), coeffs.astype(q.dtype), tile=np.int64(tile))


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def cpu_diffuse(data, rows, cols, q, graph, passthrough, coeffs, reference_vjp_data: Callable):
    """Native diffusion of Q [B, S, D] (float32/float64) over BCOO entries data/rows/cols [B, N].

    `graph` [B, S]: positions in the graph (excluding passthrough); `passthrough` [B, S]:
    returned unchanged; `coeffs` c_0..c_K (c_0 not halved). `reference_vjp_data(data, rows,
    cols, q, graph, passthrough, coeffs, g)` returns the values' cotangent (a module-level
    function: it is a static argument).
    """
    return _call(data, rows, cols, q, graph, passthrough, coeffs)


def _fwd(data, rows, cols, q, graph, passthrough, coeffs, reference_vjp_data):
    out = cpu_diffuse(data, rows, cols, q, graph, passthrough, coeffs, reference_vjp_data)
    return out, (data, rows, cols, q, graph, passthrough, coeffs)


def _bwd(reference_vjp_data, res, g):
    data, rows, cols, q, graph, passthrough, coeffs = res
    # graph excludes the passthrough positions (as in the forward call).
    dq = _call(data, rows, cols, g, graph, jnp.zeros_like(passthrough), coeffs) + jnp.where(passthrough[..., None], g, 0)
    ddata = reference_vjp_data(data, rows, cols, q, graph, passthrough, coeffs, g)
    return ddata, None, None, dq, None, None, None


cpu_diffuse.defvjp(_fwd, _bwd)
