"""Token embeddings: gene-ID embedding ⊕ expression-bin embedding (papers/gremln.txt §3.1).

Each half is d_model/2 wide and the two are concatenated, E = [E^g || E^r].
The CLS token is an ordinary vocabulary entry (GENE_CLS, BinSpec.cls_id), so
it needs no special code path. The gene-ID table is also the GRNFormer GNN's
node-feature table, hence `GeneEmbed` is exposed on its own.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from grn_jax import axes

_EMBED_INIT = nn.initializers.normal(stddev=0.02)


class _Embed(nn.Embed):
    """`nn.Embed` (same parameter) whose lookup reads the table whole on the embed axis.

    Under FSDP the table's embed dimension lives on `fsdp`; gathering rows from
    it directly gives a [cells, S, features/fsdp] result for the global batch,
    which XLA can only turn into the batch-sharded activation by replicating it
    ("involuntary full rematerialization"). Un-sharding the table first (the
    usual FSDP all-gather of a weight before use) keeps the lookup local.
    """

    def __call__(self, inputs):
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError("embedding lookup: ids must be integers")
        table = nn.with_logical_constraint(self.embedding, (axes.VOCAB, None))
        (table,) = self.promote_dtype(table, dtype=self.dtype, inexact=False)
        return jnp.take(table, inputs, axis=0)


class GeneEmbed(nn.Module):
    """Gene-ID embedding table [vocab, features]."""

    vocab_size: int
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, gene_ids_BxS):
        table = _Embed(self.vocab_size, self.features, dtype=self.dtype, name="table",
                         embedding_init=nn.with_logical_partitioning(_EMBED_INIT, (axes.VOCAB, axes.EMBED)))
        return table(gene_ids_BxS)


class TokenEmbed(nn.Module):
    """[gene-ID embedding || bin embedding] -> [B, S, d_model]; returns (tokens, gene_emb)."""

    gene_vocab_size: int
    bin_vocab_size: int
    d_model: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, gene_ids_BxS, bins_BxS):
        half = self.d_model // 2
        gene_BxSxH = GeneEmbed(self.gene_vocab_size, half, self.dtype, name="gene")(gene_ids_BxS)
        bin_table = _Embed(self.bin_vocab_size, half, dtype=self.dtype, name="bin",
                             embedding_init=nn.with_logical_partitioning(_EMBED_INIT, (axes.VOCAB, axes.EMBED)))
        bin_BxSxH = bin_table(bins_BxS)
        x_BxSxD = jnp.concatenate([gene_BxSxH, bin_BxSxH], axis=-1)
        x_BxSxD = nn.with_logical_constraint(x_BxSxD, (axes.BATCH, axes.GENES, axes.EMBED))
        return x_BxSxD, gene_BxSxH
