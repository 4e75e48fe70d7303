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


def cell_expression_targets(gene_ids_BxS, bins_BxS, targets_BxS, loss_mask_BxS, token_mask_BxS, vocab_size: int,
                            n_bins: int, n_special: int):
    """(bin of every vocabulary gene in the cell [B, V], which vocabulary entries count [B, V]).

    A gene among the cell's tokens has its true bin (masked positions take it
    from `targets`, visible ones from their input bin); every other gene has
    bin 0. Special ids (PAD, MASK, CLS: the first `n_special`) and filler rows
    (no gene token) never count.
    """
    b, s = bins_BxS.shape
    true_BxS = jnp.where(loss_mask_BxS, targets_BxS, bins_BxS)
    genes_BxS = token_mask_BxS.astype(bool) & (jnp.arange(s) > 0)[None, :]
    ok_BxS = genes_BxS & (true_BxS >= 0) & (true_BxS < n_bins) & (gene_ids_BxS >= n_special)
    rows_BxS = jnp.broadcast_to(jnp.arange(b)[:, None], (b, s))
    tgt_BxV = jnp.zeros((b, vocab_size), jnp.int32).at[rows_BxS, jnp.where(ok_BxS, gene_ids_BxS, 0)].max(
        jnp.where(ok_BxS, true_BxS, 0).astype(jnp.int32))
    # filler rows (no gene token: batch padding) are not cells; their "all absent" targets would count
    real_Bx1 = ok_BxS.any(axis=1, keepdims=True)
    valid_BxV = (jnp.arange(vocab_size) >= n_special)[None, :] & real_Bx1
    return tgt_BxV, valid_BxV


def cell_value_error(pred_BxVx1, tgt_BxV, valid_BxV, n_bins: int):
    """(sum of squared error, count, rounded hits) of a value-output cell head (float32 scalars).

    The target of gene v is its bin scaled to [0, 1], tgt / (n_bins - 1); a hit is a
    prediction that rounds to the true bin, so `cell_accuracy` reads as for the
    softmax head.
    """
    scale = float(n_bins - 1)
    pred_BxV = pred_BxVx1[..., 0].astype(jnp.float32)
    mask = valid_BxV.astype(jnp.float32)
    err_BxV = jnp.square(pred_BxV - tgt_BxV.astype(jnp.float32) / scale)
    hit_BxV = (jnp.clip(jnp.round(pred_BxV * scale), 0, scale) == tgt_BxV) & valid_BxV
    return jnp.sum(err_BxV * mask), jnp.sum(mask), jnp.sum(hit_BxV.astype(jnp.float32))
