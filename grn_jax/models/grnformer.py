"""GRNFormer: a backbone whose final layer is the structure adapter, and its attention read-out.

`GRNFormer(config)` is `GREmLN` with `config.adapter` required; the backbone is
vanilla or GDKA per `config.attention` (GDKA + adapter is a combination
neither paper tried). The read-out follows papers/grnformer.txt §4.6:

    phi_j = 1 / (H N) sum_h sum_i a_ij^(h)     (per cell; i over its N real query genes)
    rho   = E[phi_j | j in TFs] / E[phi_j | j not in TFs]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from grn_jax.models.gremln import GREmLN, gene_token_mask
from grn_jax.types import TokenBatch


class GRNFormer(GREmLN):
    """GREmLN whose last layer is the GRNFormer structure adapter (config.adapter must be set)."""

    def __post_init__(self):
        if self.config.adapter is None:
            raise ValueError("GRNFormer needs ModelConfig.adapter (an AdapterConfig); "
                             "use GREmLN for a model without the structure adapter")
        super().__post_init__()


def fusion_attention_weights(model: GREmLN, variables, batch: TokenBatch) -> jax.Array:
    """Cross-attention weights of the fusion layer at inference: [B, H, S(query), S(key)]."""
    if model.config.adapter is None:
        raise ValueError("the model has no GRNFormer adapter (config.adapter is None): no fusion attention")

    @jax.jit
    def weights(v, b):
        _, state = model.apply(v, b, deterministic=True, mutable=["intermediates"])
        (w,) = state["intermediates"]["adapter"]["fusion"]["weights"]
        return w

    return weights(variables, batch)


def attention_importance(model: GREmLN, variables, batch: TokenBatch) -> jax.Array:
    """Per-gene attention importance phi [B, S]; 0 at CLS and padding (papers/grnformer.txt §4.6)."""
    w_BxHxSxT = fusion_attention_weights(model, variables, batch).astype(jnp.float32)
    genes_BxS = gene_token_mask(jnp.asarray(batch.token_mask, bool))
    h = w_BxHxSxT.shape[1]
    n_B = jnp.maximum(genes_BxS.sum(axis=1), 1).astype(jnp.float32)
    summed_BxT = jnp.einsum("bhst,bs->bt", w_BxHxSxT, genes_BxS.astype(jnp.float32))
    return jnp.where(genes_BxS, summed_BxT / (h * n_B[:, None]), 0.0)


def tf_enrichment_ratio(phi_BxS, gene_ids_BxS, token_mask_BxS, is_tf_vocab) -> float:
    """rho = mean phi over TF gene tokens / mean phi over non-TF gene tokens, pooled over the batch.

    `is_tf_vocab` is a bool array over the gene vocabulary. Raises ValueError
    when the batch holds no TF or no non-TF gene token (rho is undefined).
    """
    phi = np.asarray(phi_BxS, np.float64)
    genes = np.asarray(gene_token_mask(jnp.asarray(token_mask_BxS, bool)))
    is_tf_vocab = np.asarray(is_tf_vocab, bool)
    ids = np.asarray(gene_ids_BxS)
    if ids.max() >= is_tf_vocab.shape[0]:
        raise ValueError(f"gene id {ids.max()} is outside is_tf_vocab (length {is_tf_vocab.shape[0]}); "
                         f"pass a TF flag for every vocabulary entry")
    tf = is_tf_vocab[ids] & genes
    other = ~is_tf_vocab[ids] & genes
    if not tf.any() or not other.any():
        raise ValueError(f"TF enrichment needs both TF and non-TF gene tokens; batch has {int(tf.sum())} TF and "
                         f"{int(other.sum())} non-TF tokens")
    return float(phi[tf].mean() / phi[other].mean())
