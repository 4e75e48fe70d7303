"""Fused Chebyshev heat-kernel diffusion of query columns (Pallas), beside its jnp reference.

Computes, per cell, out = f(L) Q = c0/2 Q + sum_{k>=1} c_k T_k(L~) Q with the
three-term recurrence T_k = 2 L~ T_{k-1} - T_{k-2}, reading L~ from the ELL
layout (`kernels.ell`). One program owns one cell and one block of query
columns for all S rows, so the whole recurrence runs inside the program: no
K round trips through XLA ops. Within a step it walks row tiles; each tile
gathers its neighbours' T_{k-1} rows with one indexed load per degree chunk,
and only for the chunks some row of the tile fills (`row_degree`), so a few
hub genes widen the ELL without multiplying every row's work.

Where the data lives on GPU (Triton lowering): T_{k-1}/T_{k-2} of the program's
column block ping-pong in two per-program scratch buffers (written and re-read
by the same CTA, so they stay L2-resident; Pallas-Triton has no shared-memory
scratch) and the float32 accumulator is the output block; a CTA barrier
separates recurrence steps. Row tiles and gathered neighbour tiles are in
registers.

Masks: padding rows are zeroed before diffusion and output zero; the CLS row
(position 0) passes through unchanged; all arithmetic is float32 whatever the
input dtype, the result is cast back to it.

Gradient: f(L) is symmetric and the masking is symmetric, so the VJP with
respect to Q is the same operator applied to the cotangent; `jax.custom_vjp`
runs the fused kernel again for it. The graph (ELL) and the coefficients are
data: they receive zero cotangents (differentiate the reference if you need
them).

Sharding: the pallas_call has no partitioning rule, so under a batch-sharded mesh
it runs in `shard_map` (`kernels.sharding.over_batch`): each device's grid covers
its own cells only.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .ell import EllLaplacian
from .sharding import over_batch


@dataclasses.dataclass(frozen=True)
class ChebyshevBlocks:
    """Tile sizes of the fused diffusion kernel (static; powers of two on GPU).

    block_cols: query columns per program; block_rows: rows per gather tile;
    block_degree: ELL slots gathered at once. A block larger than its
    dimension is clipped to it; otherwise it must divide the dimension.
    """

    block_cols: int = 64
    block_rows: int = 16  # gather tile [rows, degree, cols] = 8K values: registers of 4 warps (untuned)
    block_degree: int = 8
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ChebyshevBlocks.{f.name} must be a positive int, got {v!r}")


def _fit(block: int, dim: int, what: str, dim_name: str) -> int:
    if block >= dim:
        return dim
    if dim % block:
        raise ValueError(f"{what}={block} does not divide {dim_name}={dim}; pick a block that divides it "
                         f"or pad {dim_name} to a multiple of {block}")
    return block


def _validate(q_BxSxC, ell: EllLaplacian, coeffs_K):
    if q_BxSxC.ndim != 3:
        raise ValueError(f"q must be [B, S, C] (flatten heads into C), got shape {q_BxSxC.shape}")
    if not jnp.issubdtype(q_BxSxC.dtype, jnp.floating):
        raise ValueError(f"q must be floating point, got {q_BxSxC.dtype}")
    b, s, _ = q_BxSxC.shape
    if ell.indices.shape[:2] != (b, s) or ell.values.shape != ell.indices.shape:
        raise ValueError(f"ELL indices/values must be [B, S, R] = [{b}, {s}, R] to match q, got "
                         f"{ell.indices.shape} / {ell.values.shape}")
    if ell.row_degree.shape != (b, s):
        raise ValueError(f"ELL row_degree must be [{b}, {s}], got {ell.row_degree.shape}")
    if ell.node_mask.shape != (b, s) or ell.passthrough_mask.shape != (b, s):
        raise ValueError(f"ELL node_mask/passthrough_mask must be [{b}, {s}], got {ell.node_mask.shape}/"
                         f"{ell.passthrough_mask.shape}")
    if not jnp.issubdtype(ell.indices.dtype, jnp.integer):
        raise ValueError(f"ELL indices must be integer, got {ell.indices.dtype}")
    if coeffs_K.ndim != 1 or coeffs_K.shape[0] < 1:
        raise ValueError(f"coeffs must be a non-empty 1-D array [K], got shape {coeffs_K.shape}")


def _masked_input(q_BxSxC, node_mask_BxS):
    return jnp.where(node_mask_BxS[..., None], q_BxSxC.astype(jnp.float32), 0.0)


def _finish(acc_BxSxC, q_BxSxC, node_mask_BxS, passthrough_BxS):
    """Non-graph rows -> 0, passthrough rows (CLS) -> q unchanged, cast back to q's dtype."""
    out = jnp.where(node_mask_BxS[..., None], acc_BxSxC, 0.0)
    return jnp.where(passthrough_BxS[..., None], q_BxSxC.astype(jnp.float32), out).astype(q_BxSxC.dtype)


def chebyshev_diffusion_reference(q_BxSxC, ell: EllLaplacian, coeffs_K, *,
                                  block: ChebyshevBlocks = ChebyshevBlocks(), interpret: bool = False):
    """Pure-jnp f(L) Q by the same recurrence (gathers from the ELL rows); `block`/`interpret` unused."""
    del block, interpret
    q_BxSxC = jnp.asarray(q_BxSxC)
    coeffs_K = jnp.asarray(coeffs_K, jnp.float32)
    _validate(q_BxSxC, ell, coeffs_K)
    x = _masked_input(q_BxSxC, ell.node_mask)
    idx, val = ell.indices, ell.values.astype(jnp.float32)

    def matvec(t_BxSxC):
        g_BxSxRxC = jax.vmap(lambda t, i: t[i])(t_BxSxC, idx)
        return jnp.einsum("bsr,bsrc->bsc", val, g_BxSxRxC)

    k_terms = coeffs_K.shape[0]
    acc = 0.5 * coeffs_K[0] * x
    if k_terms > 1:
        t1 = matvec(x)
        acc = acc + coeffs_K[1] * t1

        def step(carry, c_k):
            t_prev, t_cur, acc = carry
            t_next = 2.0 * matvec(t_cur) - t_prev
            return (t_cur, t_next, acc + c_k * t_next), None

        (_, _, acc), _ = jax.lax.scan(step, (x, t1, acc), coeffs_K[2:])
    return _finish(acc, q_BxSxC, ell.node_mask, ell.passthrough_mask)


def _kernel(coef_ref, mask_ref, deg_ref, idx_ref, val_ref, q_ref, acc_ref, ta_ref, tb_ref, *,
            k_terms, seq_len, width, block_rows, block_degree, interpret):
    """One program: one cell x one column block; all K recurrence steps.

    ta/tb hold T_{k-2}/T_{k-1} alternately: step k reads T_{k-1} from one (any
    row, gathered) and overwrites the other row tile by row tile with T_k.
    """
    n_row_tiles = seq_len // block_rows
    n_deg_tiles = width // block_degree
    bc = q_ref.shape[-1]

    def barrier():
        if not interpret:  # make every row of the last step visible to the whole CTA
            from jax.experimental.pallas import triton as plgpu
            plgpu.debug_barrier()

    def rows(i):
        return pl.ds(pl.multiple_of(i * block_rows, block_rows), block_rows)

    def matvec_tile(src_ref, i):
        # Only the degree tiles some row of this tile fills: hubs widen the ELL, not every row's work.
        n_tiles = jnp.minimum((jnp.max(deg_ref[rows(i)]) + block_degree - 1) // block_degree, n_deg_tiles)

        def deg_body(r, y):
            cols = pl.ds(pl.multiple_of(r * block_degree, block_degree), block_degree)
            nbr = idx_ref[rows(i), cols]  # [br, bd]
            v = val_ref[rows(i), cols].astype(jnp.float32)
            g = src_ref[nbr, :]  # [br, bd, bc]
            return y + jnp.sum(v[:, :, None] * g, axis=1)
        return jax.lax.fori_loop(0, n_tiles, deg_body, jnp.zeros((block_rows, bc), jnp.float32))

    def init_tile(i, c):
        m = mask_ref[rows(i)] != 0
        x = jnp.where(m[:, None], q_ref[rows(i), :].astype(jnp.float32), 0.0)
        ta_ref[rows(i), :] = x
        acc_ref[rows(i), :] = 0.5 * coef_ref[0] * x
        return c

    jax.lax.fori_loop(0, n_row_tiles, init_tile, 0)
    if k_terms == 1:
        return
    barrier()

    def first_tile(i, c):
        t1 = matvec_tile(ta_ref, i)
        tb_ref[rows(i), :] = t1
        acc_ref[rows(i), :] += coef_ref[1] * t1
        return c

    jax.lax.fori_loop(0, n_row_tiles, first_tile, 0)
    barrier()

    def step(k, src_ref, dst_ref):
        def tile(i, c):
            t_new = 2.0 * matvec_tile(src_ref, i) - dst_ref[rows(i), :]
            dst_ref[rows(i), :] = t_new
            acc_ref[rows(i), :] += coef_ref[k] * t_new
            return c
        jax.lax.fori_loop(0, n_row_tiles, tile, 0)
        barrier()

    def pair(j, c):
        k = 2 + 2 * j
        step(k, tb_ref, ta_ref)  # even k: T_k into ta
        step(k + 1, ta_ref, tb_ref)  # odd k: T_k into tb
        return c

    n_pairs = (k_terms - 2) // 2
    jax.lax.fori_loop(0, n_pairs, pair, 0)
    if (k_terms - 2) % 2:
        step(k_terms - 1, tb_ref, ta_ref)


def _pallas_forward(q_BxSxC, indices, values, node_mask, degree, coeffs_K, block: ChebyshevBlocks,
                    interpret: bool):
    """The fused kernel, per device over its own cells when a batch-sharded mesh is in context."""
    local = functools.partial(_pallas_forward_local, block=block, interpret=interpret)
    return over_batch(local, (q_BxSxC, indices, values, node_mask, degree, coeffs_K),
                      (True, True, True, True, True, False), batch_size=q_BxSxC.shape[0])


def _pallas_forward_local(q_BxSxC, indices, values, node_mask, degree, coeffs_K, *, block: ChebyshevBlocks,
                          interpret: bool):
    b, s, c = q_BxSxC.shape
    width = indices.shape[-1]
    bc = _fit(block.block_cols, c, "block_cols", "C (query columns)")
    br = _fit(block.block_rows, s, "block_rows", "S")
    bd = _fit(block.block_degree, width, "block_degree", "R (ELL width)")
    k_terms = coeffs_K.shape[0]
    kernel = functools.partial(_kernel, k_terms=k_terms, seq_len=s, width=width, block_rows=br,
                               block_degree=bd, interpret=interpret)
    col_spec = pl.BlockSpec((None, s, bc), lambda bi, ci: (bi, 0, ci))
    ell_spec = pl.BlockSpec((None, s, width), lambda bi, ci: (bi, 0, 0))
    f32 = jax.ShapeDtypeStruct((b, s, c), jnp.float32)
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu
        params["compiler_params"] = plgpu.CompilerParams(num_warps=block.num_warps, num_stages=block.num_stages)
    acc, _, _ = pl.pallas_call(
        kernel,
        grid=(b, c // bc),
        in_specs=[
            pl.BlockSpec((k_terms,), lambda bi, ci: (0,)),
            pl.BlockSpec((None, s), lambda bi, ci: (bi, 0)),
            pl.BlockSpec((None, s), lambda bi, ci: (bi, 0)),
            ell_spec, ell_spec, col_spec,
        ],
        out_specs=[col_spec, col_spec, col_spec],
        out_shape=[f32, f32, f32],
        interpret=interpret,
        name="chebyshev_diffusion",
        **params,
    )(coeffs_K.astype(jnp.float32), node_mask.astype(jnp.int32), degree.astype(jnp.int32), indices.astype(jnp.int32),
      values.astype(jnp.float32), q_BxSxC)
    return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _diffuse(q_BxSxC, indices, values, node_mask, passthrough, degree, coeffs_K, block, interpret):
    acc = _pallas_forward(q_BxSxC, indices, values, node_mask, degree, coeffs_K, block, interpret)
    return _finish(acc, q_BxSxC, node_mask, passthrough)


def _diffuse_fwd(q_BxSxC, indices, values, node_mask, passthrough, degree, coeffs_K, block, interpret):
    out = _diffuse(q_BxSxC, indices, values, node_mask, passthrough, degree, coeffs_K, block, interpret)
    return out, (indices, values, node_mask, passthrough, degree, coeffs_K, jnp.zeros((0,), q_BxSxC.dtype))


def _diffuse_bwd(block, interpret, res, g_BxSxC):
    indices, values, node_mask, passthrough, degree, coeffs_K, dtype_tag = res
    # The operator P = Pass + N f(L) N (N: graph-node mask, Pass: passthrough rows) is
    # symmetric, so dQ = P g: the same fused kernel on the cotangent.
    g32 = g_BxSxC.astype(jnp.float32)
    acc = _pallas_forward(g32, indices, values, node_mask, degree, coeffs_K, block, interpret)
    dq = _finish(acc, g32, node_mask, passthrough).astype(dtype_tag.dtype)
    return dq, None, None, None, None, None, None


_diffuse.defvjp(_diffuse_fwd, _diffuse_bwd)


def chebyshev_diffusion(q_BxSxC, ell: EllLaplacian, coeffs_K, *,
                        block: ChebyshevBlocks = ChebyshevBlocks(), interpret: bool = False):
    """Fused Pallas f(L) Q for every cell; same contract as `chebyshev_diffusion_reference`.

    q_BxSxC: queries with heads flattened into C; ell: `build_ell_laplacian`
    output; coeffs_K: Chebyshev coefficients (c0 un-halved, as computed once in
    float64 by the heat-kernel plan). `interpret=True` runs the kernel on any
    backend through the Pallas interpreter (how CPU tests verify it).
    """
    q_BxSxC = jnp.asarray(q_BxSxC)
    coeffs_K = jnp.asarray(coeffs_K, jnp.float32)
    _validate(q_BxSxC, ell, coeffs_K)
    if not isinstance(block, ChebyshevBlocks):
        raise ValueError(f"block must be a ChebyshevBlocks, got {type(block).__name__}")
    return _diffuse(q_BxSxC, ell.indices, ell.values, ell.node_mask, ell.passthrough_mask, ell.row_degree, coeffs_K,
                    block, bool(interpret))
