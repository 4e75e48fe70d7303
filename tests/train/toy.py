"""A tiny logically-annotated Flax model and token batches for training tests.

Independent of grn_jax.models so the training machinery is tested on its own:
an embedding, one attention-like mixing layer with heads, an MLP and a bin head,
every parameter annotated with grn_jax.axes names.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from grn_jax import axes
from grn_jax.types import BinSpec, GraphBatch, TokenBatch

N_BINS = 5
BIN_SPEC = BinSpec(N_BINS)
VOCAB = 16


class ToyModel(nn.Module):
    d: int = 16
    heads: int = 4
    mlp: int = 32

    @nn.compact
    def __call__(self, batch: TokenBatch, *, deterministic: bool = True):
        init = nn.initializers.normal(0.5)
        gene_emb = self.param("gene_emb", nn.with_logical_partitioning(init, (axes.VOCAB, axes.EMBED)),
                              (VOCAB, self.d))
        bin_emb = self.param("bin_emb", nn.with_logical_partitioning(init, (axes.VOCAB, axes.EMBED)),
                             (BIN_SPEC.vocab_size, self.d))
        h = gene_emb[batch.gene_ids] + bin_emb[batch.bins]
        h = nn.with_logical_constraint(h, (axes.BATCH, axes.GENES, axes.EMBED))
        dh = self.d // self.heads
        wq = self.param("wq", nn.with_logical_partitioning(init, (axes.EMBED, axes.HEADS, axes.HEAD_DIM)),
                        (self.d, self.heads, dh))
        wo = self.param("wo", nn.with_logical_partitioning(init, (axes.HEADS, axes.HEAD_DIM, axes.EMBED)),
                        (self.heads, dh, self.d))
        q = jnp.einsum("bsd,dhk->bshk", h, wq) / np.sqrt(dh)
        mask = batch.token_mask
        logits = jnp.einsum("bshk,bthk->bhst", q, q)
        logits = jnp.where(mask[:, None, None, :], logits, -1e9)
        att = jax.nn.softmax(logits, axis=-1)
        o = jnp.einsum("bhst,bthk->bshk", att, q)
        h = h + jnp.einsum("bshk,hkd->bsd", o, wo)
        w1 = self.param("w1", nn.with_logical_partitioning(init, (axes.EMBED, axes.MLP)), (self.d, self.mlp))
        b1 = self.param("b1", nn.with_logical_partitioning(nn.initializers.zeros, (axes.MLP,)), (self.mlp,))
        w2 = self.param("w2", nn.with_logical_partitioning(init, (axes.MLP, axes.EMBED)), (self.mlp, self.d))
        h = h + jax.nn.gelu(h @ w1 + b1[None, None, :]) @ w2
        wout = self.param("wout", nn.with_logical_partitioning(init, (axes.EMBED, axes.CLASSES)), (self.d, N_BINS))
        return h @ wout


def toy_apply(model: ToyModel):
    def apply_fn(params, batch, *, deterministic, rngs):
        return model.apply({"params": params}, batch, deterministic=deterministic, rngs=rngs)
    return apply_fn


def toy_init(model: ToyModel, batch: TokenBatch):
    def init_params(rng):
        return model.init(rng, batch)["params"]
    return init_params


def toy_mask(rate: float = 0.3):
    """Mask real gene positions (not CLS, not padding) with probability `rate`."""
    def mask_fn(key, batch: TokenBatch) -> TokenBatch:
        u = jax.random.uniform(key, batch.bins.shape)
        gene = batch.token_mask & (jnp.arange(batch.bins.shape[1])[None, :] > 0)
        m = gene & (u < rate)
        return batch.replace(bins=jnp.where(m, BIN_SPEC.mask_id, batch.bins),
                             targets=jnp.where(m, batch.bins, 0).astype(jnp.int32), loss_mask=m)
    return mask_fn


def toy_batch(n_cells: int = 8, seq: int = 8, n_edges: int = 4, seed: int = 0) -> TokenBatch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq + 1, size=n_cells)
    pos = np.arange(seq)[None, :]
    token_mask = pos < lengths[:, None]
    gene_ids = np.where(token_mask, rng.integers(3, VOCAB, size=(n_cells, seq)), 0).astype(np.int32)
    gene_ids[:, 0] = 2
    bins = np.where(token_mask, rng.integers(0, N_BINS, size=(n_cells, seq)), BIN_SPEC.pad_id).astype(np.int32)
    bins[:, 0] = BIN_SPEC.cls_id
    z = np.zeros((n_cells, n_edges), np.int32)
    graph = GraphBatch(senders=z, receivers=z, weights=np.zeros((n_cells, n_edges), np.float32),
                       edge_mask=np.zeros((n_cells, n_edges), bool))
    return TokenBatch(gene_ids=gene_ids, bins=bins, targets=np.zeros_like(bins),
                      loss_mask=np.zeros((n_cells, seq), bool), token_mask=token_mask, graph=graph)
