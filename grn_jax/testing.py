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
