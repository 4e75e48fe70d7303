"""Optimiser and learning-rate schedule (papers/gremln.txt A.5).

AdamW; linear warm-up from `peak * warmup_start_factor` to `peak` over the first
`warmup_fraction` of the steps, then cosine annealing to `peak * end_lr_factor`
at the last step; gradients clipped by global norm. Weight decay applies to
matrices only (not biases, norm scales).
"""

from __future__ import annotations

import jax
import optax

from grn_jax.train.config import TrainConfig


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Learning rate as a function of the optimiser step (0-based)."""
    o = cfg.optim
    warmup = cfg.warmup_steps
    decay_steps = max(cfg.steps - warmup, 1)
    cosine = optax.cosine_decay_schedule(init_value=o.peak_lr, decay_steps=decay_steps, alpha=o.end_lr_factor)
    if warmup == 0:
        return cosine
    linear = optax.linear_schedule(init_value=o.peak_lr * o.warmup_start_factor, end_value=o.peak_lr,
                                   transition_steps=warmup)
    return optax.join_schedules([linear, cosine], boundaries=[warmup])


def _decay_mask(params):
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """clip-by-global-norm (optional) -> AdamW with the warm-up + cosine schedule."""
    o = cfg.optim
    adamw = optax.adamw(learning_rate=make_schedule(cfg), b1=o.b1, b2=o.b2, eps=o.eps,
                        weight_decay=o.weight_decay, mask=_decay_mask)
    if o.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(o.clip_norm), adamw)
