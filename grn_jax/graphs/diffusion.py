"""Heat-kernel (or any spectral-filter) diffusion of queries over per-cell sparse Laplacians.

`diffuse(L, Q, plan)` computes `f(L) Q ~= c_0/2 Q + sum_{k=1..K} c_k T_k(L - I) Q` for every
cell and all attention heads at once (Q is [B, S, H*Dh]) with the three-term recurrence
`T_{k+1} = 2 (L - I) T_k - T_{k-1}` inside `lax.fori_loop` — no Python loop over cells or
terms is traced. Accumulation is float32 (float64 if Q is float64): Q is cast up, the
result cast back to Q's dtype.

Masking semantics (shared with `diffuse_exact` and the fused kernel in `kernels/`):
* `node_mask_BxS` True at real token positions (CLS + genes); False = padding.
* `passthrough_mask_BxS` True where Q is returned unchanged (the CLS position, never in
  the graph). Defaults to none.
* Graph nodes are `node_mask & ~passthrough`. Q is zeroed outside them BEFORE diffusing, so
  padding and CLS never influence real positions; padding positions return zeros.

Products with `L - I`: the BCOO's stored entries are packed once per call into fixed-width
gather slots (`sparse_layout.py`), so each product is one fused gather/multiply-add loop
instead of XLA's materialise-then-scatter `segment_sum`; graphs that exceed the slot
budget fall back to the exact COO `segment_sum` path inside the same program.

Loop order (XLA path): on CPU each cell is diffused to completion before the next
(`lax.map`); on accelerators the whole batch advances together (`vmap`).

Implementations (`impl`): "xla" is the pure-JAX recurrence above (every backend, any
sharding). "native" is the fused C++ kernel `grn_jax.kernels.cpu_diffusion` (an XLA FFI
custom call, built on first use): same expansion and masks, but one pass over Q with the
recurrence run tile by tile in L2 cache -- about 5x faster than "xla" on CPU
(benchmarks/results/diffusion.md). "auto" takes "native" on CPU when the kernel builds and
either the process has one device or a mesh in context shards the batch over all of its
devices (`grn_jax.kernels.sharding`: the custom call then runs under `shard_map`, each
device over its own cells); else "xla", which XLA partitions itself.
Inside `portable_impl()` "auto" always takes "xla": code traced there (a `jax.export`
artefact) must run on machines that do not have this process's compiled kernel.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import sparse

from grn_jax.graphs.chebyshev import ChebyshevPlan
from grn_jax.graphs.sparse_layout import EllLayout, PackedShifted, apply_packed, pack_shifted

CELL_LOOPS = ("auto", "map", "vmap")
IMPLS = ("auto", "xla", "native")
_PORTABLE = contextvars.ContextVar("grn_jax_portable_diffusion", default=False)


@contextlib.contextmanager
def portable_impl() -> Iterator[None]:
    """While active, `resolve_impl("auto")` is "xla" and "native" is refused.

    Wrap tracing whose result leaves the process (`jax.export`): a serialized
    artefact cannot carry the native kernel's custom call. Functions traced here
    must be fresh (not already traced by a `jax.jit` outside the block), since
    jit's trace cache does not see this setting.
    """
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def resolve_impl(impl: str = "auto", *, batch_size: Optional[int] = None) -> str:
    """"xla" or "native" for `diffuse(..., impl=impl)` here (see the module docstring).

    `batch_size`: the batch to be diffused, when known; a mesh's batch axes that do not
    divide it do not count as sharding it.

    Raises ValueError for an unknown name, or for "native" where the kernel cannot run
    (not a CPU backend, or it failed to build: the message says why).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "xla":
        return impl
    if _PORTABLE.get():
        if impl == "native":
            raise ValueError("impl='native' cannot be exported (a serialized artefact cannot carry the native "
                             "CPU kernel's custom call); use impl='auto' or 'xla'")
        return "xla"
    from grn_jax.kernels import native_build  # noqa: PLC0415

    if jax.default_backend() != "cpu":
        reason = f"the native kernel runs on CPU only (backend is {jax.default_backend()!r})"
    else:
        reason = native_build.unavailable_reason()
    if impl == "native":
        if reason is not None:
            raise ValueError(f"impl='native' cannot run here: {reason}; use impl='xla'")
        return impl
    return "native" if reason is None and _native_is_partitioned(batch_size) else "xla"


def _native_is_partitioned(batch_size: Optional[int]) -> bool:
    """One device, or a mesh in context whose batch axes give every device its own cells."""
    if jax.device_count() == 1:
        return True
    from grn_jax.kernels.sharding import batch_shards  # noqa: PLC0415

    shards, devices = batch_shards(batch_size)
    return 1 < shards == devices


def _coeff_array(plan_or_coeffs) -> jax.Array:
    """float64 numpy (plan) or the given array; c_0 not halved."""
    if isinstance(plan_or_coeffs, ChebyshevPlan):
        return plan_or_coeffs.as_array()
    c = plan_or_coeffs
    if np.ndim(c) != 1 or np.shape(c)[0] < 1:
        raise ValueError(f"Chebyshev coefficients must be a 1-D array c_0..c_K, got shape {np.shape(c)}")
    return c


def compute_dtype(dtype) -> jnp.dtype:
    """The accumulation dtype for Q of `dtype`: float32, or float64 for float64 input."""
    return jnp.promote_types(jnp.dtype(dtype), jnp.float32)


def diffuse(laplacian: sparse.BCOO, q_BxSxD: jax.Array,
            plan_or_coeffs: Union[ChebyshevPlan, jax.Array, np.ndarray], *,
            node_mask_BxS: jax.Array, passthrough_mask_BxS: Optional[jax.Array] = None,
            cell_loop: str = "auto", layout: Optional[EllLayout] = EllLayout(), impl: str = "auto") -> jax.Array:
    """Diffuse Q over each cell's graph: `f(L) Q` by a Chebyshev expansion.

    Args:
      laplacian: BCOO [B, S, S] (n_batch=1) from `normalized_laplacian`; any symmetric
        matrix with spectrum in [0, 2] works (duplicate entries add). Or a
        `PackedLaplacian` from `pack_laplacian` (pack once, diffuse in every layer).
      q_BxSxD: queries, D = heads * head_dim; any float dtype (bf16 ok).
      plan_or_coeffs: a `ChebyshevPlan` (e.g. `heat_kernel_plan(beta)`) or coefficients
        c_0..c_K (c_0 NOT halved; this function halves it) as a 1-D array.
      node_mask_BxS: bool, real token positions (CLS + genes).
      passthrough_mask_BxS: bool, positions returned unchanged (CLS); None = no such position.
      cell_loop: XLA path only: "map" (cells one after another, cache-friendly on CPU), "vmap"
        (whole batch per step, for accelerators) or "auto" (map on CPU, vmap elsewhere).
      layout: slot budget of the gather-only packing of `L - I` (`EllLayout`, static); a
        batch that does not fit falls back to the COO path automatically. None = always the
        COO segment-sum path (the reference formulation). XLA path only.
      impl: "auto", "xla" or "native" (`resolve_impl`; module docstring). Same values.

    Returns:
      [B, S, D] in Q's dtype. Differentiable w.r.t. Q and the Laplacian's values (hence
      the edge weights). Works under jit; the order K is static (taken from the plan).
    """
    prepacked = None
    if isinstance(laplacian, PackedLaplacian):
        prepacked, layout, laplacian = laplacian.packed, laplacian.layout, laplacian.laplacian
    if not isinstance(laplacian, sparse.BCOO):
        raise ValueError(f"laplacian must be a jax.experimental.sparse.BCOO, got {type(laplacian).__name__}; "
                         f"build it with normalized_laplacian(...)")
    if q_BxSxD.ndim != 3:
        raise ValueError(f"q_BxSxD must be [B, S, D], got shape {q_BxSxD.shape}")
    b, s, _ = q_BxSxD.shape
    if laplacian.shape != (b, s, s) or laplacian.n_batch != 1 or laplacian.n_dense != 0:
        raise ValueError(f"laplacian must be a BCOO [B, S, S] = [{b}, {s}, {s}] with one batch dimension, got shape "
                         f"{laplacian.shape}, n_batch={laplacian.n_batch}, n_dense={laplacian.n_dense}")
    if node_mask_BxS.shape != (b, s):
        raise ValueError(f"node_mask_BxS must be [{b}, {s}], got {node_mask_BxS.shape}")
    if passthrough_mask_BxS is None:
        passthrough_mask_BxS = jnp.zeros((b, s), bool)
    elif passthrough_mask_BxS.shape != (b, s):
        raise ValueError(f"passthrough_mask_BxS must be [{b}, {s}], got {passthrough_mask_BxS.shape}")
    if cell_loop not in CELL_LOOPS:
        raise ValueError(f"cell_loop must be one of {CELL_LOOPS}, got {cell_loop!r}")
    if cell_loop == "auto":
        cell_loop = "map" if jax.default_backend() == "cpu" else "vmap"
    if not jnp.issubdtype(q_BxSxD.dtype, jnp.floating):
        raise ValueError(f"q_BxSxD must be floating point, got {q_BxSxD.dtype}")

    acc_dtype = compute_dtype(q_BxSxD.dtype)
    coeffs = jnp.asarray(_coeff_array(plan_or_coeffs), dtype=acc_dtype)
    data_BxN = laplacian.data.astype(acc_dtype)
    rows_BxN = laplacian.indices[..., 0]
    cols_BxN = laplacian.indices[..., 1]
    graph_BxS = node_mask_BxS.astype(bool) & ~passthrough_mask_BxS.astype(bool)
    if resolve_impl(impl, batch_size=b) == "native":
        from grn_jax.kernels.cpu_diffusion import cpu_diffuse  # noqa: PLC0415

        out_BxSxD = cpu_diffuse(data_BxN, rows_BxN, cols_BxN, q_BxSxD.astype(acc_dtype), graph_BxS,
                                passthrough_mask_BxS.astype(bool), coeffs, _coo_reference_vjp_data)
        return out_BxSxD.astype(q_BxSxD.dtype)
    q0_BxSxD = jnp.where(graph_BxS[..., None], q_BxSxD.astype(acc_dtype), 0)

    def over_cells(fn, args):
        return jax.lax.map(fn, args) if cell_loop == "map" else jax.vmap(fn)(args)

    def coo_path(_):
        return over_cells(lambda a: chebyshev_apply(*a, coeffs), (data_BxN, rows_BxN, cols_BxN, q0_BxSxD))

    if layout is None:
        out_BxSxD = coo_path(None)
    else:
        if prepacked is not None:
            packed = jax.tree.map(lambda x: x.astype(acc_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                                  prepacked)
        else:
            packed = jax.vmap(pack_shifted, in_axes=(0, 0, 0, None, None))(data_BxN, rows_BxN, cols_BxN, s, layout)

        def ell_path(_):
            def one_cell(a):
                p, q0_SxD = a
                return chebyshev_recurrence(lambda t: apply_packed(p, t), q0_SxD, coeffs)
            return over_cells(one_cell, (packed, q0_BxSxD))

        # A graph that does not fit the slot budget takes the exact COO path: slower, never wrong.
        out_BxSxD = jax.lax.cond(jnp.any(packed.overflow), coo_path, ell_path, None)
    out_BxSxD = jnp.where(graph_BxS[..., None], out_BxSxD, 0).astype(q_BxSxD.dtype)
    return jnp.where(passthrough_mask_BxS[..., None], q_BxSxD, out_BxSxD)


def _coo_reference(data_BxN, rows_BxN, cols_BxN, q_BxSxD, graph_BxS, passthrough_BxS, coeffs):
    """The XLA COO formulation of `diffuse` on raw arrays (masks as in `diffuse`)."""
    q0_BxSxD = jnp.where(graph_BxS[..., None], q_BxSxD, 0)
    out_BxSxD = jax.lax.map(lambda a: chebyshev_apply(*a, coeffs), (data_BxN, rows_BxN, cols_BxN, q0_BxSxD))
    out_BxSxD = jnp.where(graph_BxS[..., None], out_BxSxD, 0)
    return jnp.where(passthrough_BxS[..., None], q_BxSxD, out_BxSxD)


def _coo_reference_vjp_data(data_BxN, rows_BxN, cols_BxN, q_BxSxD, graph_BxS, passthrough_BxS, coeffs, g_BxSxD):
    """Cotangent of the Laplacian values for the native kernel's `custom_vjp` (XLA path)."""
    _, vjp = jax.vjp(lambda d: _coo_reference(d, rows_BxN, cols_BxN, q_BxSxD, graph_BxS, passthrough_BxS, coeffs),
                     data_BxN)
    return vjp(g_BxSxD)[0]


@struct.dataclass
class PackedLaplacian:
    """A batch's Laplacian with its gather-slot packing, built once by `pack_laplacian` and
    reused by every layer's `diffuse` (packing sorts the entries: do it once per batch)."""

    laplacian: sparse.BCOO
    packed: PackedShifted
    layout: EllLayout = struct.field(pytree_node=False)


def pack_laplacian(laplacian: sparse.BCOO, layout: EllLayout = EllLayout()) -> PackedLaplacian:
    """Pack a BCOO [B, S, S] Laplacian for `diffuse` (jit-able; `layout` static)."""
    if not isinstance(laplacian, sparse.BCOO) or laplacian.n_batch != 1 or len(laplacian.shape) != 3:
        raise ValueError("pack_laplacian needs the BCOO [B, S, S] from normalized_laplacian")
    s = laplacian.shape[1]
    packed = jax.vmap(pack_shifted, in_axes=(0, 0, 0, None, None))(
        laplacian.data, laplacian.indices[..., 0], laplacian.indices[..., 1], s, layout)
    return PackedLaplacian(laplacian=laplacian, packed=packed, layout=layout)


def shifted_matmul(data_N, rows_N, cols_N, v_SxD):
    """(L - I) v for one cell from its stored COO entries (duplicates add): the reference path."""
    s = v_SxD.shape[0]
    lv_SxD = jax.ops.segment_sum(data_N[:, None] * v_SxD[cols_N], rows_N, num_segments=s)
    return lv_SxD - v_SxD


def chebyshev_apply(data_N, rows_N, cols_N, q_SxD, coeffs_K):
    """`c_0/2 q + sum_k c_k T_k(L - I) q` for one cell from COO entries (segment-sum products)."""
    return chebyshev_recurrence(lambda t: shifted_matmul(data_N, rows_N, cols_N, t), q_SxD, coeffs_K)


def chebyshev_recurrence(apply_shifted, q_SxD, coeffs_K):
    """`c_0/2 q + sum_{k=1..K} c_k T_k(A) q` given `apply_shifted(t) = A t`, A = L - I.

    Three-term recurrence `T_{k+1} = 2 A T_k - T_{k-1}` in `lax.fori_loop` (K static).
    """
    order = coeffs_K.shape[0] - 1
    acc = 0.5 * coeffs_K[0] * q_SxD
    if order == 0:
        return acc
    t_prev = q_SxD
    t_cur = apply_shifted(q_SxD)
    acc = acc + coeffs_K[1] * t_cur

    def step(k, carry):
        t_prev, t_cur, acc = carry
        t_next = 2 * apply_shifted(t_cur) - t_prev
        return t_cur, t_next, acc + coeffs_K[k] * t_next

    _, _, acc = jax.lax.fori_loop(2, order + 1, step, (t_prev, t_cur, acc))
    return acc
