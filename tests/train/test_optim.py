"""Schedule values at known steps (closed form, papers/gremln.txt A.5) and the optimiser's clipping."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grn_jax.testing import assert_allclose
from grn_jax.train.config import OptimConfig, TrainConfig
from grn_jax.train.optim import make_optimizer, make_schedule


def _closed_form(k, steps, peak, start, end):
    w = round(0.1 * steps)
    if k < w:
        return peak * start + (peak - peak * start) * k / w
    frac = min((k - w) / (steps - w), 1.0)
    return peak * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * frac)))


@pytest.mark.parametrize("end", [0.0, 0.1])
def test_schedule_matches_closed_form(end):
    cfg = TrainConfig(steps=200, optim=OptimConfig(peak_lr=3e-4, end_lr_factor=end))
    sched = make_schedule(cfg)
    assert cfg.warmup_steps == 20
    assert_allclose(sched(0), 3e-4 * 1e-5, np.float32)           # start factor 1e-5
    assert_allclose(sched(20), 3e-4, np.float32)                 # peak at the end of warm-up
    assert_allclose(sched(110), 3e-4 * (end + (1 - end) * 0.5), np.float32)  # half-way down the cosine
    assert_allclose(sched(200), 3e-4 * end, np.float32)          # end of training
    ks = np.arange(0, 201, 7)
    assert_allclose(np.array([sched(int(k)) for k in ks]),
                    np.array([_closed_form(int(k), 200, 3e-4, 1e-5, end) for k in ks]), np.float32)


def test_no_warmup_starts_at_peak():
    sched = make_schedule(TrainConfig(steps=10, optim=OptimConfig(warmup_fraction=0.0)))
    assert_allclose(sched(0), 3e-4, np.float32)


def test_clipping_bounds_the_update_norm():
    cfg = TrainConfig(steps=10, optim=OptimConfig(clip_norm=1.0, weight_decay=0.0))
    tx = make_optimizer(cfg)
    params = {"w": jnp.ones((3, 3))}
    grads = {"w": jnp.full((3, 3), 10.0)}
    clip = optax.clip_by_global_norm(1.0)
    clipped, _ = clip.update(grads, clip.init(params))
    assert_allclose(optax.tree.norm(clipped), 1.0, np.float32)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert np.all(np.isfinite(np.asarray(updates["w"])))


def test_bad_optim_values_name_the_field():
    with pytest.raises(ValueError, match="train.optim.peak_lr"):
        OptimConfig(peak_lr=0.0)
    with pytest.raises(ValueError, match="train.grad_accum"):
        TrainConfig(batch_size=6, grad_accum=4)
