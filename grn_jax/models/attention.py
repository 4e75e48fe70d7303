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


def diffuse_queries(q_BxSxHxK, ctx: DiffusionContext, plan):
    """exp(-beta L) applied to the queries of all heads in one pass, in float32; CLS untouched."""
    from grn_jax.graphs.diffusion import diffuse  # noqa: PLC0415  (graphs -> models, one way)

    b, s, h, k = q_BxSxHxK.shape
    q_BxSxD = q_BxSxHxK.reshape(b, s, h * k).astype(jnp.float32)
    lap = ctx.packed if ctx.packed is not None else ctx.laplacian
    out_BxSxD = diffuse(lap, q_BxSxD, plan, node_mask_BxS=ctx.node_mask_BxS,
                        passthrough_mask_BxS=ctx.passthrough_mask_BxS)
    return out_BxSxD.reshape(b, s, h, k).astype(q_BxSxHxK.dtype)


def diffusion_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, key_mask_BxS, ctx: DiffusionContext, plan, *,
                        dropout_rng=None, dropout_rate: float = 0.0, deterministic: bool = True,
                        dtype=jnp.float32, impl: str = "xla"):
    """Graph Diffusion Kernel Attention: softmax(exp(-beta L) Q K^T / sqrt(K)) V.

    Only queries are diffused (keys and values keep the tokens' own information).
    Returns ([B, S, H, K], weights [B, H, S, S]). `impl` selects the backend;
    "xla" is the reference composition of `diffuse_queries` and
    `dot_product_attention`; "pallas" runs the fused kernels on a GPU (weights
    None) and falls back to "xla" with a logged reason elsewhere.
    """
    if impl == "pallas":  # fused kernels (grn_jax.kernels); None = cannot run here, reason logged
        from grn_jax.kernels.dispatch import pallas_gdka  # noqa: PLC0415

        out = pallas_gdka(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, key_mask_BxS, ctx.laplacian, ctx.node_mask_BxS,
                          ctx.passthrough_mask_BxS, plan, dropout_active=not deterministic and dropout_rate > 0)
        if out is not None:
            return out.astype(dtype), None  # the S x S weights are never materialised
    elif impl != "xla":
        raise ValueError(f"attention_impl={impl!r} is unknown; use 'xla' or 'pallas'")
    q_BxSxHxK = diffuse_queries(q_BxSxHxK, ctx, plan)
    return dot_product_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, key_mask_BxS, dropout_rng=dropout_rng,
                                 dropout_rate=dropout_rate, deterministic=deterministic, dtype=dtype)


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
            out, weights = diffusion_attention(q, k, v, key_mask_BxT, ctx, self.plan, impl=self.impl, **common)
        elif self.kind in ("vanilla", "cross"):
            out, weights = dot_product_attention(q, k, v, key_mask_BxT, **common)
        else:
            raise ValueError(f"MultiHeadAttention.kind must be vanilla | diffusion | cross, got {self.kind!r}")
        if weights is not None:  # None under attention_impl="pallas" (never materialised)
            self.sow("intermediates", "weights", weights)
        out = nn.with_logical_constraint(out.astype(self.dtype), act_names)
        y = _proj(hk + (d,), "bshk,hkd->bsd", (axes.HEADS, axes.HEAD_DIM, axes.EMBED), _OUT_PROJ_INIT, "out",
                  self.dtype)(out)
        return nn.with_logical_constraint(y, (axes.BATCH, axes.GENES, axes.EMBED))
