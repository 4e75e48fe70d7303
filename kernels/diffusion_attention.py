"""Diffusion flash attention (Pallas): softmax(f(L) Q K^T / sqrt(D)) V without an S x S matrix.

GREmLN's graph-diffusion-kernel attention diffuses only the queries. The
diffusion needs every row of a column block (K-hop mixing), so it runs first
as the fused Chebyshev kernel over all heads' columns; the attention kernel
then reads each query tile already diffused and streams key/value tiles with
an online softmax (running max m, normaliser l, float32 accumulator), so the
[S, S] scores are never materialised. Keys where `key_mask` is False get
weight exactly 0; a row with no real key (impossible with a CLS) returns 0.
Query rows are not masked, as in the XLA path (padding queries attend to the
cell's real keys; callers ignore those rows).

Gradient (`jax.custom_vjp`): the forward saves the per-row log-sum-exp; the
backward recomputes P tile by tile in two Pallas kernels (dQ per query tile;
dK, dV per key tile), so it never materialises S x S either
(`FlashBlocks(backward="xla")` runs the same algorithm as a `jnp` scan). The
query gradient then flows through the fused diffusion kernel's own
(symmetric) VJP.

Sharding: every pallas_call (forward, dQ, dK/dV) runs under `shard_map` over the
batch's mesh axes when a batch-sharded mesh is in context (`kernels.sharding`),
so each device attends over its own cells only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .chebyshev_diffusion import (ChebyshevBlocks, _fit, chebyshev_diffusion,
                                  chebyshev_diffusion_reference)
from .ell import EllLaplacian
from .sharding import over_batch
from .flash_backward import PRECISION as _PRECISION
from .flash_backward import flash_backward_pallas, flash_backward_xla


@dataclasses.dataclass(frozen=True)
class FlashBlocks:
    """Tile sizes of the attention kernel: query rows per program, key rows per step."""

    block_q: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2
    backward: str = "pallas"  # "pallas" (two kernels: dQ; dK, dV) or "xla" (blockwise jnp scan)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "backward":
                if v not in ("pallas", "xla"):
                    raise ValueError(f"FlashBlocks.backward must be 'pallas' or 'xla', got {v!r}")
            elif not isinstance(v, int) or v < 1:
                raise ValueError(f"FlashBlocks.{f.name} must be a positive int, got {v!r}")


@dataclasses.dataclass(frozen=True)
class DiffusionAttentionBlocks:
    """Block sizes of both stages of diffusion attention."""

    diffusion: ChebyshevBlocks = ChebyshevBlocks()
    attention: FlashBlocks = FlashBlocks()

    def __post_init__(self):
        if not isinstance(self.diffusion, ChebyshevBlocks) or not isinstance(self.attention, FlashBlocks):
            raise ValueError("DiffusionAttentionBlocks needs a ChebyshevBlocks and a FlashBlocks, got "
                             f"{type(self.diffusion).__name__} / {type(self.attention).__name__}")


def _validate_qkv(q, k, v, key_mask):
    if q.ndim != 4:
        raise ValueError(f"q must be [B, S, H, D], got shape {q.shape}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"k and v must have q's shape {q.shape} (self-attention), got {k.shape} / {v.shape}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if key_mask.shape != q.shape[:2]:
        raise ValueError(f"key_mask must be [B, S] = {list(q.shape[:2])}, got {list(key_mask.shape)}")


def masked_attention_reference(q_BxSxHxD, k_BxSxHxD, v_BxSxHxD, key_mask_BxS, *,
                               block: FlashBlocks = FlashBlocks(), interpret: bool = False,
                               sm_scale: Optional[float] = None):
    """Dense softmax attention with a key-padding mask (materialises [B, H, S, S]); float32 math."""
    del block, interpret
    _validate_qkv(q_BxSxHxD, k_BxSxHxD, v_BxSxHxD, key_mask_BxS)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q_BxSxHxD.shape[-1])
    s_BxHxSxT = jnp.einsum("bshd,bthd->bhst", q_BxSxHxD.astype(jnp.float32),
                           k_BxSxHxD.astype(jnp.float32)) * scale
    s_BxHxSxT = jnp.where(key_mask_BxS[:, None, None, :], s_BxHxSxT, -jnp.inf)
    m = jnp.max(s_BxHxSxT, axis=-1, keepdims=True)
    p = jnp.exp(s_BxHxSxT - jnp.where(jnp.isfinite(m), m, 0.0))
    l_sum = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(l_sum > 0, l_sum, 1.0)
    out = jnp.einsum("bhst,bthd->bshd", p, v_BxSxHxD.astype(jnp.float32))
    return out.astype(q_BxSxHxD.dtype)


def _flash_kernel(mask_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, seq_len, block_k, sm_scale):
    """One program: one (cell, head, query tile); online softmax over key tiles."""
    q = q_ref[...]  # [bq, D]
    bq, d = q.shape

    def body(j, carry):
        m_prev, l_prev, acc = carry
        ks = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        k = k_ref[ks, :]
        v = v_ref[ks, :]
        live = mask_ref[ks] != 0  # [bk]
        s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=_PRECISION,
                                preferred_element_type=jnp.float32)
        s = jnp.where(live[None, :], s * sm_scale, -jnp.inf)
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # no real key yet: keep exp() finite
        p = jnp.exp(s - m_safe[:, None])
        alpha = jnp.exp(m_prev - m_safe)
        l_new = alpha * l_prev + jnp.sum(p, axis=1)
        pv = jax.lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=_PRECISION,
                                 preferred_element_type=jnp.float32)
        return m_new, l_new, alpha[:, None] * acc + pv

    init = (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32),
            jnp.zeros((bq, d), jnp.float32))
    m, l_sum, acc = jax.lax.fori_loop(0, seq_len // block_k, body, init)
    has_key = l_sum > 0
    o_ref[...] = (acc / jnp.where(has_key, l_sum, 1.0)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(has_key, m + jnp.log(jnp.where(has_key, l_sum, 1.0)), jnp.inf)


def _flash_forward(q, k, v, key_mask, block: FlashBlocks, interpret: bool, sm_scale: float):
    """The flash kernel, per device over its own cells when a batch-sharded mesh is in context."""
    local = functools.partial(_flash_forward_local, block=block, interpret=interpret, sm_scale=sm_scale)
    return over_batch(local, (q, k, v, key_mask), (True,) * 4, batch_size=q.shape[0])


def _flash_forward_local(q, k, v, key_mask, *, block: FlashBlocks, interpret: bool, sm_scale: float):
    b, s, h, d = q.shape
    bq = _fit(block.block_q, s, "block_q", "S")
    bk = _fit(block.block_k, s, "block_k", "S")
    kernel = functools.partial(_flash_kernel, seq_len=s, block_k=bk, sm_scale=sm_scale)
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu
        params["compiler_params"] = plgpu.CompilerParams(num_warps=block.num_warps, num_stages=block.num_stages)
    full_kv = pl.BlockSpec((None, s, None, d), lambda bi, hi, qi: (bi, 0, hi, 0))
    out, lse = pl.pallas_call(
        kernel,
        grid=(b, h, s // bq),
        in_specs=[pl.BlockSpec((None, s), lambda bi, hi, qi: (bi, 0)),
                  pl.BlockSpec((None, bq, None, d), lambda bi, hi, qi: (bi, qi, hi, 0)),
                  full_kv, full_kv],
        out_specs=[pl.BlockSpec((None, bq, None, d), lambda bi, hi, qi: (bi, qi, hi, 0)),
                   pl.BlockSpec((None, None, bq), lambda bi, hi, qi: (bi, hi, qi))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, s), jnp.float32)],
        interpret=interpret,
        name="diffusion_flash_attention",
        **params,
    )(key_mask.astype(jnp.int32), q, k, v)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash(q, k, v, key_mask, block, interpret, sm_scale):
    return _flash_forward(q, k, v, key_mask, block, interpret, sm_scale)[0]


def _flash_fwd(q, k, v, key_mask, block, interpret, sm_scale):
    out, lse = _flash_forward(q, k, v, key_mask, block, interpret, sm_scale)
    return out, (q, k, v, key_mask, out, lse)


def _flash_bwd(block, interpret, sm_scale, res, d_out):
    q, k, v, key_mask, out, lse_BxHxS = res
    delta_BxHxS = jnp.einsum("bshd,bshd->bhs", d_out.astype(jnp.float32), out.astype(jnp.float32))
    if block.backward == "xla":
        dq, dk, dv = flash_backward_xla(q, k, v, key_mask, d_out, lse_BxHxS, delta_BxHxS, block, sm_scale)
    else:
        dq, dk, dv = flash_backward_pallas(q, k, v, key_mask, d_out, lse_BxHxS, delta_BxHxS, block, interpret,
                                           sm_scale)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)


def masked_flash_attention(q_BxSxHxD, k_BxSxHxD, v_BxSxHxD, key_mask_BxS, *,
                           block: FlashBlocks = FlashBlocks(), interpret: bool = False,
                           sm_scale: Optional[float] = None):
    """Online-softmax attention with a key-padding mask (Pallas); same contract as the reference."""
    _validate_qkv(q_BxSxHxD, k_BxSxHxD, v_BxSxHxD, key_mask_BxS)
    if not isinstance(block, FlashBlocks):
        raise ValueError(f"block must be a FlashBlocks, got {type(block).__name__}")
    scale = float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(q_BxSxHxD.shape[-1])
    return _flash(q_BxSxHxD, k_BxSxHxD, v_BxSxHxD, jnp.asarray(key_mask_BxS, bool), block, bool(interpret),
                  scale)


def _diffuse_heads(fn, q_BxSxHxD, ell, coeffs_K, block, interpret):
    b, s, h, d = q_BxSxHxD.shape
    q_BxSxC = fn(q_BxSxHxD.reshape(b, s, h * d), ell, coeffs_K, block=block, interpret=interpret)
    return q_BxSxC.reshape(b, s, h, d)


def diffusion_attention_reference(q_BxSxHxD, k_BxSxHxD, v_BxSxHxD, key_mask_BxS, ell: EllLaplacian, coeffs_K, *,
                                  block: DiffusionAttentionBlocks = DiffusionAttentionBlocks(),
                                  interpret: bool = False, sm_scale: Optional[float] = None):
    """Pure-jnp GDKA: dense masked softmax attention of f(L)-diffused queries (S x S materialised)."""
    qd = _diffuse_heads(chebyshev_diffusion_reference, q_BxSxHxD, ell, coeffs_K, block.diffusion, interpret)
    return masked_attention_reference(qd, k_BxSxHxD, v_BxSxHxD, key_mask_BxS, sm_scale=sm_scale)


def diffusion_attention(q_BxSxHxD, k_BxSxHxD, v_BxSxHxD, key_mask_BxS, ell: EllLaplacian, coeffs_K, *,
                        block: DiffusionAttentionBlocks = DiffusionAttentionBlocks(), interpret: bool = False,
                        sm_scale: Optional[float] = None):
    """GDKA by the two Pallas kernels: fused Chebyshev query diffusion, then flash attention.

    q/k/v: [B, S, H, D]; key_mask_BxS: real tokens; ell: `kernels.ell` layout of
    each cell's L~; coeffs_K: Chebyshev coefficients c_0..c_K (c0 un-halved).
    Returns [B, S, H, D] in q's dtype. Differentiable in q, k and v.
    """
    if not isinstance(block, DiffusionAttentionBlocks):
        raise ValueError(f"block must be a DiffusionAttentionBlocks, got {type(block).__name__}")
    _validate_qkv(q_BxSxHxD, k_BxSxHxD, v_BxSxHxD, key_mask_BxS)
    qd = _diffuse_heads(chebyshev_diffusion, q_BxSxHxD, ell, coeffs_K, block.diffusion, interpret)
    return masked_flash_attention(qd, k_BxSxHxD, v_BxSxHxD, key_mask_BxS, block=block.attention,
                                  interpret=interpret, sm_scale=sm_scale)
