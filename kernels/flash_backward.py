"""Backward of the masked flash attention: dQ, dK, dV from the saved per-row log-sum-exp.

P = exp(q k^T * scale - lse) is recomputed tile by tile, never stored whole:
one Pallas kernel per query tile accumulates dQ over key tiles, one per key
tile accumulates dK and dV over query tiles (masked keys get exactly zero).
`flash_backward_xla` is the same algorithm as a `jnp` scan over key tiles.
Both take delta = rowsum(dO * O), computed by the caller.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .chebyshev_diffusion import _fit
from .sharding import over_batch

# float32 inputs multiply in IEEE float32 (Triton's DEFAULT would be TF32, ~1e-3 relative error);
# bfloat16 inputs use the tensor cores as they are.
PRECISION = jax.lax.Precision.HIGHEST


def _dot(a, b, trans_b=False):
    dims = (((1,), (1,)), ((), ())) if trans_b else (((1,), (0,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, precision=PRECISION, preferred_element_type=jnp.float32)


def _dq_kernel(mask_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, seq_len, block_k, sm_scale):
    """dQ of one (cell, head, query tile): recompute P from the saved log-sum-exp, stream key tiles."""
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]

    def body(j, dq):
        ks = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        k, v = k_ref[ks, :], v_ref[ks, :]
        live = mask_ref[ks] != 0
        p = jnp.where(live[None, :], jnp.exp(_dot(q, k, trans_b=True) * sm_scale - lse[:, None]), 0.0)
        ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    dq = jax.lax.fori_loop(0, seq_len // block_k, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq * sm_scale


def _dkv_kernel(mask_ref, k_ref, v_ref, q_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, seq_len, block_q,
                sm_scale):
    """dK, dV of one (cell, head, key tile): stream query tiles; masked keys get exactly zero."""
    k, v = k_ref[...], v_ref[...]
    live = mask_ref[...] != 0

    def body(i, carry):
        dk, dv = carry
        qs = pl.ds(pl.multiple_of(i * block_q, block_q), block_q)
        q, do = q_ref[qs, :], do_ref[qs, :]
        lse, delta = lse_ref[qs], delta_ref[qs]
        p = jnp.where(live[None, :], jnp.exp(_dot(q, k, trans_b=True) * sm_scale - lse[:, None]), 0.0)
        dv = dv + _dot(p.T.astype(do.dtype), do)
        ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
        dk = dk + _dot(ds.T.astype(q.dtype), q)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(0, seq_len // block_q, body, (zeros, zeros))
    dk_ref[...] = dk * sm_scale
    dv_ref[...] = dv


def flash_backward_pallas(q, k, v, key_mask, d_out, lse_BxHxS, delta_BxHxS, block, interpret, sm_scale):
    """Two Pallas kernels (dQ over query tiles; dK, dV over key tiles); O(S) memory.

    Per device over its own cells when a batch-sharded mesh is in context (`kernels.sharding`).
    """
    local = functools.partial(_backward_local, block=block, interpret=interpret, sm_scale=sm_scale)
    return over_batch(local, (q, k, v, key_mask, d_out, lse_BxHxS, delta_BxHxS), (True,) * 7,
                      batch_size=q.shape[0])


def _backward_local(q, k, v, key_mask, d_out, lse_BxHxS, delta_BxHxS, *, block, interpret, sm_scale):
    b, s, h, d = q.shape
    bq = _fit(block.block_q, s, "block_q", "S")
    bk = _fit(block.block_k, s, "block_k", "S")
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu
        params["compiler_params"] = plgpu.CompilerParams(num_warps=block.num_warps, num_stages=block.num_stages)
    mask = key_mask.astype(jnp.int32)
    f32 = jnp.float32

    def tile(n):
        return pl.BlockSpec((None, n, None, d), lambda bi, hi, ti: (bi, ti, hi, 0))

    def row_tile(n):
        return pl.BlockSpec((None, None, n), lambda bi, hi, ti: (bi, hi, ti))

    full = pl.BlockSpec((None, s, None, d), lambda bi, hi, ti: (bi, 0, hi, 0))
    full_rows = pl.BlockSpec((None, None, s), lambda bi, hi, ti: (bi, hi, 0))
    full_mask = pl.BlockSpec((None, s), lambda bi, hi, ti: (bi, 0))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, seq_len=s, block_k=bk, sm_scale=sm_scale),
        grid=(b, h, s // bq),
        in_specs=[full_mask, tile(bq), full, full, tile(bq), row_tile(bq), row_tile(bq)],
        out_specs=tile(bq),
        out_shape=jax.ShapeDtypeStruct(q.shape, f32),
        interpret=interpret, name="diffusion_flash_attention_dq", **params,
    )(mask, q, k, v, d_out, lse_BxHxS, delta_BxHxS)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, seq_len=s, block_q=bq, sm_scale=sm_scale),
        grid=(b, h, s // bk),
        in_specs=[pl.BlockSpec((None, bk), lambda bi, hi, ti: (bi, ti)), tile(bk), tile(bk), full, full,
                  full_rows, full_rows],
        out_specs=[tile(bk), tile(bk)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, f32), jax.ShapeDtypeStruct(v.shape, f32)],
        interpret=interpret, name="diffusion_flash_attention_dkv", **params,
    )(mask, k, v, q, d_out, lse_BxHxS, delta_BxHxS)
    return dq, dk, dv


def flash_backward_xla(q, k, v, key_mask, d_out, lse_BxHxS, delta_BxHxS, block, sm_scale):
    """Blockwise backward over key tiles from the saved log-sum-exp (XLA scan; no S x S array)."""
    b, s, h, d = q.shape
    bk = _fit(block.block_k, s, "block_k", "S")
    n_tiles = s // bk
    f32 = jnp.float32
    q32, do32 = q.astype(f32), d_out.astype(f32)
    k_tiles = k.astype(f32).reshape(b, n_tiles, bk, h, d).swapaxes(0, 1)
    v_tiles = v.astype(f32).reshape(b, n_tiles, bk, h, d).swapaxes(0, 1)
    m_tiles = key_mask.reshape(b, n_tiles, bk).swapaxes(0, 1)

    def tile(dq_acc, xs):
        k_t, v_t, m_t = xs  # [B, bk, H, D], [B, bk, H, D], [B, bk]
        s_t = jnp.einsum("bshd,bthd->bhst", q32, k_t) * sm_scale
        p = jnp.where(m_t[:, None, None, :], jnp.exp(s_t - lse_BxHxS[..., None]), 0.0)
        dv_t = jnp.einsum("bhst,bshd->bthd", p, do32)
        dp = jnp.einsum("bshd,bthd->bhst", do32, v_t)
        ds = p * (dp - delta_BxHxS[..., None]) * sm_scale
        dk_t = jnp.einsum("bhst,bshd->bthd", ds, q32)
        return dq_acc + jnp.einsum("bhst,bthd->bshd", ds, k_t), (dk_t, dv_t)

    dq, (dk_tiles, dv_tiles) = jax.lax.scan(tile, jnp.zeros_like(q32), (k_tiles, v_tiles, m_tiles))
    return dq, dk_tiles.swapaxes(0, 1).reshape(b, s, h, d), dv_tiles.swapaxes(0, 1).reshape(b, s, h, d)
