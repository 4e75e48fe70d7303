"""Transformer encoder blocks and the layer stack (scanned: no Python loop over layers).

A block is attention + GELU MLP with residuals, pre-LN (default) or post-LN
(the public GREmLN code). Consecutive layers of the same attention kind are
stacked with `nn.scan` (parameters get a leading layer axis), so a uniform
model compiles one block body whatever its depth; a per-layer mix such as
(diffusion, diffusion, vanilla) becomes two scanned runs.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from grn_jax import axes
from grn_jax.models.attention import DiffusionContext, MultiHeadAttention
from grn_jax.models.config import ModelConfig

_DENSE_INIT = nn.initializers.lecun_normal()


def layer_norm(cfg: ModelConfig, name: str, dtype) -> nn.LayerNorm:
    """LayerNorm with logically-partitioned scale and bias; statistics in float32."""
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)))


def dense(features: int, names: tuple, name: str, dtype) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(_DENSE_INIT, names),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]))


def activation(name: str):
    if name == "gelu":
        return lambda x: nn.gelu(x, approximate=False)
    if name == "relu":
        return nn.relu
    raise ValueError(f"unknown activation {name!r}; expected gelu | relu")


class Mlp(nn.Module):
    """d_model -> mlp_dim -> d_model feed-forward."""

    config: ModelConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BxSxD):
        cfg = self.config
        h = dense(cfg.mlp_dim, (axes.EMBED, axes.MLP), "wi", self.dtype)(x_BxSxD)
        h = nn.with_logical_constraint(activation(cfg.activation)(h), (axes.BATCH, axes.GENES, axes.MLP))
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
        return dense(x_BxSxD.shape[-1], (axes.MLP, axes.EMBED), "wo", self.dtype)(h)


class EncoderBlock(nn.Module):
    """One transformer layer; signature `(x, key_mask, ctx) -> (x, None)` so it can be scanned."""

    config: ModelConfig
    kind: str
    plan: Any = None
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BxSxD, key_mask_BxS, ctx: Optional[DiffusionContext]):
        cfg = self.config
        attn = MultiHeadAttention(cfg.n_heads, kind=self.kind, plan=self.plan,
                                  dropout_rate=cfg.attention_dropout_rate, impl=cfg.attention_impl,
                                  dtype=self.dtype, block=cfg.attention_block, remat=cfg.remat == "attention",
                                  diffuse_values=cfg.diffusion_operands == "queries_values", name="attention")
        mlp = Mlp(cfg, self.dtype, self.deterministic, name="mlp")
        drop = nn.Dropout(cfg.dropout_rate)

        def attend(h):
            return drop(attn(h, key_mask_BxS, ctx=ctx, deterministic=self.deterministic),
                        deterministic=self.deterministic)

        if cfg.norm == "pre":
            x_BxSxD = x_BxSxD + attend(layer_norm(cfg, "ln_attention", self.dtype)(x_BxSxD))
            x_BxSxD = x_BxSxD + drop(mlp(layer_norm(cfg, "ln_mlp", self.dtype)(x_BxSxD)),
                                     deterministic=self.deterministic)
        else:
            x_BxSxD = layer_norm(cfg, "ln_attention", self.dtype)(x_BxSxD + attend(x_BxSxD))
            x_BxSxD = layer_norm(cfg, "ln_mlp", self.dtype)(
                x_BxSxD + drop(mlp(x_BxSxD), deterministic=self.deterministic))
        x_BxSxD = nn.with_logical_constraint(x_BxSxD, (axes.BATCH, axes.GENES, axes.EMBED))
        return x_BxSxD, None


def layer_runs(kinds: tuple[str, ...]) -> list[tuple[str, int]]:
    """Group consecutive equal kinds: (d, d, v) -> [(d, 2), (v, 1)]."""
    return [(k, len(list(g))) for k, g in itertools.groupby(kinds)]


class Encoder(nn.Module):
    """The stack of encoder blocks for `kinds` (one entry per layer), scanned per run of equal kinds."""

    config: ModelConfig
    kinds: tuple[str, ...]
    plan: Any = None
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BxSxD, key_mask_BxS, ctx: Optional[DiffusionContext] = None):
        # model.remat = block: each layer keeps only its input; the backward pass recomputes the rest
        block = nn.remat(EncoderBlock, prevent_cse=False) if self.config.remat == "block" else EncoderBlock
        for run, (kind, length) in enumerate(layer_runs(self.kinds)):
            stack = nn.scan(block, variable_axes={"params": 0, "intermediates": 0},
                            split_rngs={"params": True, "dropout": True},
                            in_axes=(nn.broadcast, nn.broadcast), length=length,
                            metadata_params={nn.PARTITION_NAME: None})
            x_BxSxD, _ = stack(self.config, kind, self.plan if kind == "diffusion" else None, self.dtype,
                               self.deterministic, name=f"layers_{run}")(x_BxSxD, key_mask_BxS, ctx)
        return x_BxSxD
