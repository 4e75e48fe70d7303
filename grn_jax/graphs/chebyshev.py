"""Chebyshev expansions of spectral filters on the normalised-Laplacian spectrum [0, 2].

GREmLN diffuses queries with `f(L) Q`, `f(lambda) = exp(-beta * lambda)` (papers/gremln.txt
§3.4, A.3). We expand `f` in Chebyshev polynomials of the shifted variable
`x = lambda - 1` (so `L~ = L - I` has its spectrum in [-1, 1]):

    f(L) Q = c_0 / 2 * Q + sum_{k=1..K} c_k T_k(L~) Q          (c_0 IS halved)

Coefficients come from Gauss–Chebyshev quadrature with N nodes, in float64, once per
(filter, tolerance) — never per sample or per layer — and are cast to the compute dtype
only when used. The order K is adaptive: the smallest K whose coefficient tail
`sum_{k>K} |c_k|` is at most `tol`. Because `|T_k(x)| <= 1` on [-1, 1], that tail bounds
the truncation error in operator 2-norm: `||f(L) - p_K(L)||_2 <= tol`.

For the heat kernel the closed form `c_k = 2 exp(-beta) (-1)^k I_k(beta)` (modified Bessel
function of the first kind) is the oracle the quadrature is tested against.

Public API: `ChebyshevPlan`, `heat_kernel_plan`, `chebyshev_plan`, `chebyshev_coefficients`,
`heat_kernel_coefficients_closed_form`, `truncation_order`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import numpy as np

# Default quadrature size: far more nodes than any order we keep, so aliasing
# (c_k picks up c_{2N-k}, ...) is far below float64 round-off for smooth filters.
DEFAULT_N_QUAD = 512
# Largest order adaptive truncation may choose before it reports the filter as too rough.
DEFAULT_MAX_ORDER = 256


@dataclasses.dataclass(frozen=True)
class ChebyshevPlan:
    """A truncated Chebyshev expansion of a spectral filter, ready to apply.

    `coeffs` holds c_0..c_K in float64 (c_0 NOT yet halved; `diffuse` halves it);
    `order` = K = number of sparse matmuls per application. `tail` bounds the truncation
    error in operator 2-norm: the sum of the dropped |c_k| (as computed, i.e. including
    float64 quadrature round-off), so `||f(L) Q - p_K(L) Q|| <= tail * ||Q||` per column. The plan is hashable
    and immutable, so it can be a static argument to `jax.jit`.
    """

    coeffs: tuple[float, ...]
    tol: float
    tail: float
    name: str = "filter"

    def __post_init__(self):
        if len(self.coeffs) < 1:
            raise ValueError("ChebyshevPlan.coeffs must hold at least c_0")
        if not all(math.isfinite(c) for c in self.coeffs):
            raise ValueError(f"ChebyshevPlan.coeffs must be finite, got {self.coeffs}")

    @property
    def order(self) -> int:
        """Highest polynomial degree K (the number of Laplacian products)."""
        return len(self.coeffs) - 1

    def as_array(self) -> np.ndarray:
        """Coefficients c_0..c_K as float64 [K+1], c_0 not halved."""
        return np.asarray(self.coeffs, dtype=np.float64)

    def evaluate(self, lam) -> np.ndarray:
        """The truncated expansion evaluated at eigenvalues `lam` (float64, numpy).

        Used by tests and by the exact reference to separate truncation from round-off.
        """
        x = np.asarray(lam, dtype=np.float64) - 1.0
        return np.polynomial.chebyshev.chebval(x, _halve_c0(self.as_array()))


def _halve_c0(c: np.ndarray) -> np.ndarray:
    out = np.array(c, dtype=np.float64, copy=True)
    out[0] *= 0.5
    return out


def chebyshev_coefficients(filter_fn: Callable[[np.ndarray], np.ndarray], order: int,
                           n_quad: int = DEFAULT_N_QUAD) -> np.ndarray:
    """Chebyshev coefficients c_0..c_order of `filter_fn(lambda)` on lambda in [0, 2].

    Gauss–Chebyshev quadrature (papers/gremln.txt A.3) in float64:
    `c_k = 2/N sum_i f(1 + cos theta_i) cos(k theta_i)`, `theta_i = pi (i - 1/2) / N`.
    `filter_fn` maps a float64 numpy array of eigenvalues to values of the same shape; it
    must be finite and non-negative on [0, 2] (a spectral *filter*, as in §3.2).
    Returns float64 [order + 1]; c_0 is not halved.
    """
    order = int(order)
    n_quad = int(n_quad)
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    if n_quad <= order:
        raise ValueError(f"n_quad ({n_quad}) must exceed order ({order}) for the quadrature to be exact "
                         f"on polynomials of that degree; raise n_quad")
    theta = np.pi * (np.arange(1, n_quad + 1, dtype=np.float64) - 0.5) / n_quad
    lam = 1.0 + np.cos(theta)
    vals = np.asarray(filter_fn(lam), dtype=np.float64)
    if vals.shape != lam.shape:
        raise ValueError(f"filter_fn must return one value per eigenvalue: shape {lam.shape}, got {vals.shape}")
    if not np.all(np.isfinite(vals)):
        bad = lam[~np.isfinite(vals)][0]
        raise ValueError(f"filter_fn is not finite at lambda={bad:.6g}; a spectral filter must be finite on [0, 2]")
    if np.any(vals < 0):
        bad = lam[vals < 0][0]
        raise ValueError(f"filter_fn is negative ({vals[vals < 0][0]:.3g}) at lambda={bad:.6g}; "
                         f"spectral filters must be non-negative on [0, 2]")
    k = np.arange(order + 1, dtype=np.float64)
    return (2.0 / n_quad) * (np.cos(np.outer(k, theta)) @ vals)


def heat_kernel_coefficients_closed_form(beta: float, order: int) -> np.ndarray:
    """Closed-form coefficients of exp(-beta * lambda): `2 exp(-beta) (-1)^k I_k(beta)`.

    `scipy.special.ive(k, beta) = I_k(beta) exp(-beta)` keeps this stable for large beta.
    Test oracle for `chebyshev_coefficients`; c_0 not halved. float64 [order + 1].
    """
    from scipy.special import ive

    _check_beta(beta)
    k = np.arange(int(order) + 1)
    return 2.0 * ((-1.0) ** k) * ive(k, float(beta))


def truncation_order(coeffs: np.ndarray, tol: float) -> int:
    """Smallest K with `sum_{k>K} |coeffs[k]| <= tol` (the operator-norm truncation bound)."""
    c = np.abs(np.asarray(coeffs, dtype=np.float64))
    # tails[K] = sum_{k > K} |c_k|
    tails = np.concatenate([np.cumsum(c[::-1])[::-1][1:], [0.0]])
    ok = np.nonzero(tails <= tol)[0]
    return int(ok[0])


def _quadrature_noise_floor(filter_fn, n_quad: int) -> float:
    """Round-off level of float64 Gauss–Chebyshev coefficients: 16 eps max|f| on the nodes."""
    theta = np.pi * (np.arange(1, n_quad + 1, dtype=np.float64) - 0.5) / n_quad
    return float(16 * np.finfo(np.float64).eps * np.max(np.abs(filter_fn(1.0 + np.cos(theta)))))


def _check_beta(beta) -> None:
    if not (isinstance(beta, (int, float, np.floating, np.integer)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta (diffusion rate) must be a finite number >= 0, got {beta!r}")


def _check_tol(tol) -> None:
    if not (isinstance(tol, (int, float, np.floating)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")


@functools.lru_cache(maxsize=256)
def chebyshev_plan(filter_fn: Callable[[np.ndarray], np.ndarray], tol: float = 1e-8, *,
                   n_quad: int = DEFAULT_N_QUAD, max_order: int = DEFAULT_MAX_ORDER,
                   name: str = "filter") -> ChebyshevPlan:
    """Adaptive-order plan for any non-negative spectral filter on [0, 2].

    Coefficients are computed once (float64 quadrature with `n_quad` nodes) and cached per
    (filter_fn, tol, n_quad, max_order, name); pass the same function object to hit the cache.
    Raises ValueError when even `max_order` terms leave a tail above `tol` (the filter is
    too rough for a polynomial of that degree on [0, 2]).
    """
    _check_tol(tol)
    if max_order >= n_quad:
        raise ValueError(f"max_order ({max_order}) must be below n_quad ({n_quad})")
    coeffs = chebyshev_coefficients(filter_fn, max_order, n_quad)
    # float64 quadrature leaves round-off of ~eps * max|f| in every c_k; summed over hundreds
    # of k that noise would swamp a small tol, so coefficients below this floor count as 0
    # in the tail (for smooth filters the true c_k decay geometrically past it).
    noise = _quadrature_noise_floor(filter_fn, n_quad)
    if tol <= 10 * noise:
        raise ValueError(f"tol={tol:g} is below what float64 quadrature resolves for filter {name!r} "
                         f"(round-off ~{noise:.1e} per coefficient); use tol > {10 * noise:.1e}")
    mag = np.where(np.abs(coeffs) > noise, np.abs(coeffs), 0.0)
    # The last tail is 0 by construction; beyond max_order we cannot see, so demand that the
    # last few coefficients are already negligible before trusting the adaptive choice.
    if np.sum(mag[-8:]) > tol:
        raise ValueError(f"filter {name!r} needs more than max_order={max_order} Chebyshev terms to reach "
                         f"tol={tol:g} (|c_k| for the last 8 k sum to {np.sum(mag[-8:]):.3g}); "
                         f"raise max_order/n_quad or tol")
    k = truncation_order(mag, tol)
    # report the unclipped sum: an upper estimate that includes the quadrature round-off
    tail = float(np.sum(np.abs(coeffs[k + 1:])))
    return ChebyshevPlan(coeffs=tuple(float(c) for c in coeffs[:k + 1]), tol=float(tol), tail=tail, name=name)


@functools.lru_cache(maxsize=256)
def heat_kernel_plan(beta: float, tol: float = 1e-8, *, n_quad: int = DEFAULT_N_QUAD,
                     max_order: int = DEFAULT_MAX_ORDER) -> ChebyshevPlan:
    """Adaptive-order plan for the heat kernel exp(-beta * L), cached per (beta, tol, ...).

    E.g. tol=1e-8: beta=0.1 -> K=4, beta=1 -> K=8, beta=10 -> K=20 (vs the paper's K=64).
    """
    _check_beta(beta)
    beta = float(beta)
    plan = chebyshev_plan(functools.partial(_heat, beta), tol, n_quad=n_quad, max_order=max_order,
                          name=f"heat(beta={beta:g})")
    return plan


def fixed_order_heat_kernel_plan(beta: float, order: int, *, n_quad: int = DEFAULT_N_QUAD) -> ChebyshevPlan:
    """The heat kernel at a fixed order K (e.g. the paper's K = 64); for comparisons."""
    _check_beta(beta)
    coeffs = chebyshev_coefficients(functools.partial(_heat, float(beta)), order, n_quad)
    full = chebyshev_coefficients(functools.partial(_heat, float(beta)), n_quad - 1, n_quad)
    tail = float(np.sum(np.abs(full[order + 1:])))
    return ChebyshevPlan(coeffs=tuple(float(c) for c in coeffs), tol=max(tail, np.finfo(np.float64).tiny),
                         tail=tail, name=f"heat(beta={float(beta):g}, K={int(order)})")


def _heat(beta: float, lam: np.ndarray) -> np.ndarray:
    return np.exp(-beta * lam)
