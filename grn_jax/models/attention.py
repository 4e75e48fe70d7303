"""Attention: vanilla, graph-diffusion-kernel (GDKA, papers/gremln.txt §3.2) and cross-attention.

`diffusion_attention` is THE entry point for the GDKA computation (query
diffusion + masked softmax attention); the `impl` switch (xla | pallas) lives
there and nowhere else. Keys are always masked by `key_mask` (padding never
contributes), so a cell's outputs do not depend on its batch-mates; attention
dropout is applied only when `deterministic=False`.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from grn_jax import axes


@struct.dataclass
class DiffusionContext:
    """What every GDKA layer of one forward pass shares (built once, not per layer).

    `laplacian` is the batched BCOO [B, S, S] normalised Laplacian of the cells'
    graphs; `node_mask_BxS` marks real tokens (CLS + genes), `passthrough_mask_BxS`
    the positions left untouched by diffusion (CLS); graph nodes are
    `node_mask & ~passthrough` (the `grn_jax.graphs.diffuse` convention). The Chebyshev plan is static
    (a module attribute), not part of this pytree.
    """

    laplacian: Any
    node_mask_BxS: jax.Array
    passthrough_mask_BxS: jax.Array
    # `grn_jax.graphs.PackedLaplacian` (gather-slot packing of L - I), packed once per
    # forward for the XLA path; None = `diffuse` packs per call.
    packed: Any = None


def attention_weights(q_BxSxHxK, k_BxTxHxK, key_mask_BxT, *, dropout_rng=None, dropout_rate: float = 0.0,
                      deterministic: bool = True, dtype=jnp.float32):
    """Softmax(q k^T / sqrt(K)) over unmasked keys -> [B, H, S, T]; dropout only in training.

    Masked keys get the most negative finite logit, so their weight is exactly 0
    whenever any key of the row is real (the CLS key always is).
    """
    mask_Bx1x1xT = key_mask_BxT[:, None, None, :]
    return nn.dot_product_attention_weights(
        q_BxSxHxK, k_BxTxHxK, mask=mask_Bx1x1xT, broadcast_dropout=False, dropout_rng=dropout_rng,
        dropout_rate=dropout_rate, deterministic=deterministic or dropout_rate == 0.0, dtype=dtype,
        force_fp32_for_softmax=True)


def dot_product_attention(q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, key_mask_BxT, *, dropout_rng=None,
                          dropout_rate: float = 0.0, deterministic: bool = True, dtype=jnp.float32):
    """Vanilla multi-head attention with a key-padding mask -> ([B, S, H, K], weights [B, H, S, T])."""
    w_BxHxSxT = attention_weights(q_BxSxHxK, k_BxTxHxK, key_mask_BxT, dropout_rng=dropout_rng,
                                  dropout_rate=dropout_rate, deterministic=deterministic, dtype=dtype)
    out_BxSxHxK = jnp.einsum("bhst,bthk->bshk", w_BxHxSxT, v_BxTxHxK.astype(w_BxHxSxT.dtype))
    return out_BxSxHxK, w_BxHxSxT


def blocked_attention(q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, key_mask_BxT, *, block: int = 512, dtype=jnp.float32):
    """Softmax attention over key blocks with a running max and sum: never holds S x T probabilities.

    The same function as `dot_product_attention` without dropout (masked keys
    get the most negative finite logit), computed in float32 over blocks of
    `block` keys (online softmax); each block is rematerialised in the backward
    pass, so a layer keeps [B, H, S, block] scores and the per-block carries
    instead of [B, H, S, T]. Returns [B, S, H, K].
    """
    b, s, h, kd = q_BxSxHxK.shape
    t = k_BxTxHxK.shape[1]
    block = max(1, min(int(block), t))
    n_blocks = -(-t // block)
    pad = n_blocks * block - t
    if pad:  # padded keys are masked like padding tokens
        k_BxTxHxK = jnp.pad(k_BxTxHxK, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v_BxTxHxK = jnp.pad(v_BxTxHxK, ((0, 0), (0, pad), (0, 0), (0, 0)))
        key_mask_BxT = jnp.pad(key_mask_BxT, ((0, 0), (0, pad)))

    def blocks(x):  # [B, T, ...] -> [n_blocks, B, block, ...]
        return jnp.swapaxes(x.reshape((b, n_blocks, block) + x.shape[2:]), 0, 1)

    q32_BxSxHxK = q_BxSxHxK.astype(jnp.float32) / jnp.sqrt(jnp.float32(kd))
    low = jnp.finfo(jnp.float32).min

    @jax.checkpoint
    def step(carry, xs):
        m_BxHxS, l_BxHxS, acc_BxHxSxK = carry
        k_BxCxHxK, v_BxCxHxK, mask_BxC = xs
        logits_BxHxSxC = jnp.einsum("bshk,bchk->bhsc", q32_BxSxHxK, k_BxCxHxK.astype(jnp.float32))
        logits_BxHxSxC = jnp.where(mask_BxC[:, None, None, :], logits_BxHxSxC, low)
        m_new = jnp.maximum(m_BxHxS, logits_BxHxSxC.max(axis=-1))
        p_BxHxSxC = jnp.exp(logits_BxHxSxC - m_new[..., None])
        scale = jnp.exp(m_BxHxS - m_new)
        l_new = l_BxHxS * scale + p_BxHxSxC.sum(axis=-1)
        acc_new = acc_BxHxSxK * scale[..., None] + jnp.einsum("bhsc,bchk->bhsk", p_BxHxSxC,
                                                               v_BxCxHxK.astype(jnp.float32))
        return (m_new, l_new, acc_new), None

    init = (jnp.full((b, h, s), low, jnp.float32), jnp.zeros((b, h, s), jnp.float32),
            jnp.zeros((b, h, s, kd), jnp.float32))
    (_, l_BxHxS, acc_BxHxSxK), _ = jax.lax.scan(
        step, init, (blocks(k_BxTxHxK), blocks(v_BxTxHxK), blocks(key_mask_BxT)))
    out_BxHxSxK = acc_BxHxSxK / l_BxHxS[..., None]
    return jnp.swapaxes(out_BxHxSxK, 1, 2).astype(dtype)


def self_attention(q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, key_mask_BxT, *, impl: str = "xla", block: int = 512,
                   remat: bool = False, dropout_rng=None, dropout_rate: float = 0.0, deterministic: bool = True,
                   dtype=jnp.float32):
    """The softmax-attention core on the selected path -> ([B, S, H, K], weights [B, H, S, T] or None).

    impl "blocked" never materialises the weights (returns None); `remat`
    recomputes the core in the backward pass instead of keeping its S x T
    probabilities (model.remat = attention).
    """
    def core(q, k, v, mask, rng):
        if impl == "blocked":
            if not deterministic and dropout_rate > 0:
                raise ValueError("attention_impl='blocked' has no attention dropout; set "
                                 "model.attention_dropout_rate=0 or use attention_impl='xla'")
            return blocked_attention(q, k, v, mask, block=block, dtype=dtype), None
        return dot_product_attention(q, k, v, mask, dropout_rng=rng, dropout_rate=dropout_rate,
                                     deterministic=deterministic, dtype=dtype)

    if remat:
        core = jax.checkpoint(core)
    return core(q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, key_mask_BxT, dropout_rng)


def diffuse_queries(q_BxSxHxK, ctx: DiffusionContext, plan):
    """exp(-beta L) applied to the queries (or, with diffuse_values, the values) of all heads in one pass,
    in float32; CLS untouched."""
    from grn_jax.graphs.diffusion import diffuse  # noqa: PLC0415  (graphs -> models, one way)

    b, s, h, k = q_BxSxHxK.shape
    q_BxSxD = q_BxSxHxK.reshape(b, s, h * k).astype(jnp.float32)
    lap = ctx.packed if ctx.packed is not None else ctx.laplacian
    out_BxSxD = diffuse(lap, q_BxSxD, plan, node_mask_BxS=ctx.node_mask_BxS,
                        passthrough_mask_BxS=ctx.passthrough_mask_BxS)
    return out_BxSxD.reshape(b, s, h, k).astype(q_BxSxHxK.dtype)


def diffusion_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, key_mask_BxS, ctx: DiffusionContext, plan, *,
                        dropout_rng=None, dropout_rate: float = 0.0, deterministic: bool = True,
                        dtype=jnp.float32, impl: str = "xla", block: int = 512, remat: bool = False,
                        diffuse_values: bool = False):
    """Graph Diffusion Kernel Attention: softmax(exp(-beta L) Q K^T / sqrt(K)) V.

    Only queries are diffused (keys and values keep the tokens' own information), as in the paper;
    `diffuse_values` (model.diffusion_operands="queries_values") also diffuses V, giving
    softmax(exp(-beta L) Q K^T / sqrt(K)) exp(-beta L) V (xla and blocked only).
    Returns ([B, S, H, K], weights [B, H, S, S]). `impl` selects the backend;
    "xla" is the reference composition of `diffuse_queries` and
    `dot_product_attention`; "blocked" diffuses the same way and attends over
    key blocks (`blocked_attention`, weights None); "pallas" runs the fused
    kernels on a GPU (weights None) and falls back to "xla" with a logged
    reason elsewhere. `remat` recomputes the attention core in the backward pass.
    """
    if impl == "pallas" and diffuse_values:
        raise ValueError("diffuse_values runs on impl 'xla' or 'blocked'; the fused kernel diffuses the queries only")
    if impl == "pallas":  # fused kernels (grn_jax.kernels); None = cannot run here, reason logged
        from grn_jax.kernels.dispatch import pallas_gdka  # noqa: PLC0415

        out = pallas_gdka(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, key_mask_BxS, ctx.laplacian, ctx.node_mask_BxS,
                          ctx.passthrough_mask_BxS, plan, dropout_active=not deterministic and dropout_rate > 0)
        if out is not None:
            return out.astype(dtype), None  # the S x S weights are never materialised
    elif impl not in ("xla", "blocked"):
        raise ValueError(f"attention_impl={impl!r} is unknown; use 'xla', 'blocked' or 'pallas'")
    q_BxSxHxK = diffuse_queries(q_BxSxHxK, ctx, plan)
    if diffuse_values:
        v_BxSxHxK = diffuse_queries(v_BxSxHxK, ctx, plan)
    return self_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, key_mask_BxS, impl="blocked" if impl == "blocked"
                          else "xla", block=block, remat=remat, dropout_rng=dropout_rng, dropout_rate=dropout_rate,
                          deterministic=deterministic, dtype=dtype)


# Fan-in over the contracted axes, as a flat [in, out] Dense would have it.
_IN_PROJ_INIT = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))     # [D, H, K]
_OUT_PROJ_INIT = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)    # [H, K, D]


def _proj(kernel_shape, einsum_str, axis_names, init, name, dtype):
    """A projection whose kernel is created at its full shape, so its logical names always match its rank.

    (`nn.DenseGeneral` initialises a flat 2-D kernel and reshapes it, which
    breaks a 3-name logical constraint once axis rules are in force.) Same
    parameter names and shapes as DenseGeneral: `kernel`, `bias`.
    """
    return nn.Einsum(kernel_shape, einsum_str, dtype=dtype, name=name,
                     kernel_init=nn.with_logical_partitioning(init, axis_names))


class MultiHeadAttention(nn.Module):
    """Multi-head attention; `kind` = vanilla | diffusion | cross.

    Self-attention (vanilla/diffusion) reads keys/values from `x`; cross-attention
    reads them from `context_BxTxD`. The attention weights are sown into the
    'intermediates' collection as `weights` (only materialised when the caller
    asks for that collection), for read-outs such as GRNFormer's phi_j.
    """

    n_heads: int
    kind: str = "vanilla"
    plan: Any = None  # ChebyshevPlan, static; required for kind="diffusion"
    dropout_rate: float = 0.0
    impl: str = "xla"
    dtype: Any = jnp.float32
    block: int = 512  # keys per block under impl="blocked"
    remat: bool = False  # recompute the attention core in the backward pass (model.remat = attention)
    diffuse_values: bool = False  # kind="diffusion": diffuse V as well as Q (model.diffusion_operands)

    @nn.compact
    def __call__(self, x_BxSxD, key_mask_BxT, *, context_BxTxD=None, ctx: Optional[DiffusionContext] = None,
                 deterministic: bool = True):
        d = x_BxSxD.shape[-1]
        head_dim = d // self.n_heads
        hk = (self.n_heads, head_dim)
        names = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
        kv_src = x_BxSxD if context_BxTxD is None else context_BxTxD
        proj_in = "bsd,dhk->bshk"
        q = _proj((d,) + hk, proj_in, names, _IN_PROJ_INIT, "query", self.dtype)(x_BxSxD)
        k = _proj((kv_src.shape[-1],) + hk, proj_in, names, _IN_PROJ_INIT, "key", self.dtype)(kv_src)
        v = _proj((kv_src.shape[-1],) + hk, proj_in, names, _IN_PROJ_INIT, "value", self.dtype)(kv_src)
        act_names = (axes.BATCH, axes.GENES, axes.HEADS, axes.HEAD_DIM)
        q, k, v = (nn.with_logical_constraint(t, act_names) for t in (q, k, v))
        use_dropout = not deterministic and self.dropout_rate > 0.0
        rng = self.make_rng("dropout") if use_dropout else None
        common = dict(dropout_rng=rng, dropout_rate=self.dropout_rate, deterministic=not use_dropout,
                      dtype=self.dtype)
        if self.kind == "diffusion":
            if ctx is None or self.plan is None:
                raise ValueError("MultiHeadAttention(kind='diffusion') needs a DiffusionContext and a plan")
            out, weights = diffusion_attention(q, k, v, key_mask_BxT, ctx, self.plan, impl=self.impl,
                                               block=self.block, remat=self.remat,
                                               diffuse_values=self.diffuse_values, **common)
        elif self.kind == "vanilla":
            out, weights = self_attention(q, k, v, key_mask_BxT, impl="blocked" if self.impl == "blocked" else "xla",
                                          block=self.block, remat=self.remat, **common)
        elif self.kind == "cross":
            out, weights = dot_product_attention(q, k, v, key_mask_BxT, **common)
        else:
            raise ValueError(f"MultiHeadAttention.kind must be vanilla | diffusion | cross, got {self.kind!r}")
        if weights is not None:  # None under attention_impl="pallas" / "blocked" (never materialised)
            self.sow("intermediates", "weights", weights)
        out = nn.with_logical_constraint(out.astype(self.dtype), act_names)
        y = _proj(hk + (d,), "bshk,hkd->bsd", (axes.HEADS, axes.HEAD_DIM, axes.EMBED), _OUT_PROJ_INIT, "out",
                  self.dtype)(out)
        return nn.with_logical_constraint(y, (axes.BATCH, axes.GENES, axes.EMBED))
