"""Masked-bin objective: cross-entropy and accuracy over masked gene positions.

Returned as (sum, count) pairs rather than means so that gradient accumulation
over micro-batches and sharded reductions give exactly the big-batch mean:
mean = sum(sums) / sum(counts), whatever the split.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def masked_bin_cross_entropy(logits_BxSxC, targets_BxS, loss_mask_BxS):
    """(sum of cross-entropy over masked positions, number of masked positions); float32.

    Logits are upcast to float32 first so a bfloat16 forward pass still gets a
    float32 loss. Positions outside `loss_mask_BxS` contribute exactly zero
    (their targets may hold any value, e.g. 0).
    """
    logits = logits_BxSxC.astype(jnp.float32)
    safe_targets = jnp.where(loss_mask_BxS, targets_BxS, 0)
    ce_BxS = optax.softmax_cross_entropy_with_integer_labels(logits, safe_targets)
    mask = loss_mask_BxS.astype(jnp.float32)
    return jnp.sum(ce_BxS * mask), jnp.sum(mask)


def masked_bin_correct(logits_BxSxC, targets_BxS, loss_mask_BxS):
    """Number of masked positions whose argmax bin equals the target (float32 scalar)."""
    pred_BxS = jnp.argmax(logits_BxSxC, axis=-1)
    hit = (pred_BxS == targets_BxS) & loss_mask_BxS
    return jnp.sum(hit.astype(jnp.float32))


def safe_mean(total, count):
    """total / count, and 0 when nothing was counted (a batch with no masked position)."""
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def cell_expression_targets(bins_BxS, targets_BxS, loss_mask_BxS, token_mask_BxS, n_bins: int):
    """(true bin of every gene token, which positions count) for the cell-embedding objective.

    Masked positions take their hidden true bin from `targets`, visible ones
    their input bin; CLS (position 0), padding and non-bin ids never count.
    """
    s = bins_BxS.shape[1]
    true_BxS = jnp.where(loss_mask_BxS, targets_BxS, bins_BxS)
    genes_BxS = token_mask_BxS.astype(bool) & (jnp.arange(s) > 0)[None, :]
    valid_BxS = genes_BxS & (true_BxS >= 0) & (true_BxS < n_bins)
    return jnp.where(valid_BxS, true_BxS, 0), valid_BxS
