"""Output heads: the masked-bin decoder and a cell classification head.

Heads map hidden states to logits; the losses that consume them live in
`grn_jax.train` (models/ holds no objective).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from grn_jax import axes
from grn_jax.models.blocks import dense


class MaskedBinHead(nn.Module):
    """Linear decoder over expression bins, dec(H_i) = W H_i + b (papers/gremln.txt §3.3).

    Predicts `n_bins` classes (bin 0 = not expressed .. n_bins-1); MASK/PAD/CLS
    bin ids are inputs only, never targets. Logits are float32.
    """

    n_bins: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_BxSxD):
        logits = dense(self.n_bins, (axes.EMBED, axes.CLASSES), "decoder", self.dtype)(hidden_BxSxD)
        return nn.with_logical_constraint(logits.astype(jnp.float32), (axes.BATCH, axes.GENES, axes.CLASSES))


class ClassificationHead(nn.Module):
    """Cell-level classifier on a [B, D] embedding (CLS or mean-pooled): linear, or a one-hidden-layer MLP.

    Used by downstream tasks (cell-type annotation, perturbation labels); kept
    minimal on purpose so scores reflect the embedding, not the head
    (papers/gremln.txt §4).
    """

    n_classes: int
    hidden_dim: Optional[int] = None
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, emb_BxD, *, deterministic: bool = True):
        if self.n_classes < 2:
            raise ValueError(f"ClassificationHead.n_classes must be >= 2, got {self.n_classes}")
        h = emb_BxD
        if self.hidden_dim is not None:
            h = nn.gelu(dense(self.hidden_dim, (axes.EMBED, axes.MLP), "hidden", self.dtype)(h), approximate=False)
            h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
            names = (axes.MLP, axes.CLASSES)
        else:
            names = (axes.EMBED, axes.CLASSES)
        return dense(self.n_classes, names, "logits", self.dtype)(h).astype(jnp.float32)


class CellExpressionHead(nn.Module):
    """Every vocabulary gene's bin predicted from the CELL embedding alone (scGPT's GEPC/MVC idea, all genes).

    logits[b, v] = W2 gelu((W_c cell_b) * q_v + r_v) + b2 for every vocabulary gene v,
    q_v, r_v a learned query and bias per gene. Bin 0 means "not among the cell's tokens", so
    the pooled embedding must carry WHICH genes the cell expresses and at what
    rank; the masked-bin head alone lets each token encode its own bin and
    leaves the pooled embedding nearly the same for every cell. Cost
    B x V x hidden_dim per step: fine for vocabularies of a few thousand genes.
    Logits float32 [B, V, n_bins]; with `output="value"` one number per gene instead,
    [B, V, 1], the predicted bin / (n_bins - 1), fitted by squared error.
    """

    n_bins: int
    vocab_size: int
    hidden_dim: int
    dtype: Any = jnp.float32
    output: str = "value"  # "value" | "bins" (ModelConfig.cell_head_output)

    @nn.compact
    def __call__(self, cell_BxD):
        # the head's width is d_model-sized: its tables shard like the gene table (EMBED over fsdp)
        c_BxF = dense(self.hidden_dim, (axes.EMBED, axes.MLP), "cell_proj", self.dtype)(cell_BxD.astype(self.dtype))
        q_VxF = self.param("gene_query", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                      (axes.VOCAB, axes.EMBED)),
                           (self.vocab_size, self.hidden_dim), jnp.float32).astype(self.dtype)
        b_VxF = self.param("gene_bias", nn.with_logical_partitioning(nn.initializers.zeros, (axes.VOCAB, axes.EMBED)),
                           (self.vocab_size, self.hidden_dim), jnp.float32).astype(self.dtype)
        # multiplicative: gene v reads the cell through its own query (an inner-product decoder, as in scGPT's
        # MVC), not only through a shared nonlinearity of a sum
        h_BxVxF = nn.gelu(c_BxF[:, None, :] * q_VxF[None] + b_VxF[None], approximate=False)
        width = self.n_bins if self.output == "bins" else 1
        logits = dense(width, (axes.EMBED, axes.CLASSES), "decoder", self.dtype)(h_BxVxF)
        return nn.with_logical_constraint(logits.astype(jnp.float32), (axes.BATCH, axes.VOCAB, axes.CLASSES))
