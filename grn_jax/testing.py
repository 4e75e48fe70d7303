"""Numerical tolerances: one helper per dtype, shared by tests, kernels and benchmarks.

Never loosen these to make a test pass; fix the numerics instead.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """`rel`: normwise relative error ||x - ref|| / ||ref||.
    `rtol`/`atol`: elementwise, for `np.testing.assert_allclose`."""

    rel: float
    rtol: float
    atol: float


_TOLERANCES = {
    np.dtype(np.float64): Tolerance(rel=1e-12, rtol=1e-10, atol=1e-12),
    np.dtype(np.float32): Tolerance(rel=1e-6, rtol=1e-5, atol=1e-6),
    np.dtype(jnp.bfloat16): Tolerance(rel=1e-2, rtol=2e-2, atol=1e-2),
    np.dtype(np.float16): Tolerance(rel=1e-3, rtol=2e-3, atol=1e-3),
}


def tolerance(dtype) -> Tolerance:
    """The tolerance for computations carried out in `dtype`."""
    key = np.dtype(dtype)
    if key not in _TOLERANCES:
        raise ValueError(f"no tolerance defined for dtype {key}; known: {sorted(str(k) for k in _TOLERANCES)}")
    return _TOLERANCES[key]


def relative_error(actual, expected) -> float:
    """Normwise relative error in float64; 0/0 counts as 0."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"shape mismatch: actual {a.shape} vs expected {e.shape}")
    num = np.linalg.norm((a - e).ravel())
    den = np.linalg.norm(e.ravel())
    if den == 0.0:
        return float(num)
    return float(num / den)


def assert_rel_close(actual, expected, dtype, *, what: str = "") -> None:
    """Assert normwise relative error within `tolerance(dtype).rel`."""
    err = relative_error(actual, expected)
    tol = tolerance(dtype).rel
    if not err <= tol:
        raise AssertionError(f"{what or 'value'}: relative error {err:.3e} > {tol:.0e} ({np.dtype(dtype)})")


def assert_allclose(actual, expected, dtype, *, err_msg: str = "") -> None:
    """Elementwise comparison with the per-dtype rtol/atol."""
    t = tolerance(dtype)
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=t.rtol, atol=t.atol, err_msg=err_msg)


def reordering_tolerance(dtype, n_terms: int, scale: float) -> Tolerance:
    """Tolerance for two computations of the same value in `dtype` that differ only in summation order.

    Differently shaped programs (another batch size, sequence bucket or padding)
    block their matmuls and reductions differently, so their results may differ
    by rounding however correct both are; such comparisons must not use the
    fixed `tolerance(dtype)` (its 1e-6 atol was exceeded by 1.26e-6 on one CPU).
    The bound is Higham's for a sum of `n_terms` terms of magnitude <= `scale`:
    gamma_n * scale, gamma_n = n u / (1 - n u), u the unit roundoff. Pass as
    `n_terms` the longest chain of additions the value goes through (e.g. the
    sum over layers of d_model + mlp_dim + sequence length) and as `scale` the
    largest magnitude involved. Any real dependence on batch-mates or padding
    (a missing mask) moves values by orders of magnitude more.
    """
    u = float(np.finfo(np.dtype(dtype)).eps) / 2.0
    if n_terms < 1 or n_terms * u >= 1.0:
        raise ValueError(f"reordering_tolerance: n_terms must be in [1, {int(1 / u)}), got {n_terms}")
    gamma = n_terms * u / (1.0 - n_terms * u)
    return Tolerance(rel=gamma, rtol=0.0, atol=gamma * float(scale))


def assert_reorder_close(actual, expected, dtype, *, n_terms: int, err_msg: str = "") -> None:
    """`actual` == `expected` up to `reordering_tolerance(dtype, n_terms, max|expected|)`, elementwise."""
    e = np.asarray(expected, np.float64)
    t = reordering_tolerance(dtype, n_terms, max(float(np.abs(e).max(initial=0.0)), 1.0))
    np.testing.assert_allclose(np.asarray(actual, np.float64), e, rtol=0.0, atol=t.atol, err_msg=err_msg)
