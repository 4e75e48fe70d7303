"""Dense, exact references for graph diffusion: `U f(Lambda) U^T Q` by batched `eigh`.

For tests and benchmarks only — O(S^3) per cell, never used in training. Masking
semantics match `grn_jax.graphs.diffusion.diffuse` exactly (CLS passes through, padding
returns zeros and never influences real positions).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
from jax.experimental import sparse

from grn_jax.graphs.diffusion import compute_dtype

SpectralFilter = Union[float, Callable[[jax.Array], jax.Array]]


def _filter_fn(spectral_filter: SpectralFilter) -> Callable[[jax.Array], jax.Array]:
    if callable(spectral_filter):
        return spectral_filter
    beta = float(spectral_filter)
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {spectral_filter!r}")
    return lambda lam: jnp.exp(-beta * lam)


def _dense(laplacian, dtype) -> jax.Array:
    lap = laplacian.todense() if isinstance(laplacian, sparse.BCOO) else jnp.asarray(laplacian)
    if lap.ndim != 3 or lap.shape[1] != lap.shape[2]:
        raise ValueError(f"laplacian must be [B, S, S], got shape {lap.shape}")
    return lap.astype(dtype)


def filter_matrix(laplacian, spectral_filter: SpectralFilter, dtype=jnp.float32) -> jax.Array:
    """Dense `f(L) = U f(Lambda) U^T`, [B, S, S]; `spectral_filter` = beta (heat kernel) or f(lambda)."""
    lap_BxSxS = _dense(laplacian, dtype)
    lam_BxS, u_BxSxS = jnp.linalg.eigh(lap_BxSxS)
    f_BxS = _filter_fn(spectral_filter)(lam_BxS)
    return jnp.einsum("bij,bj,bkj->bik", u_BxSxS, f_BxS, u_BxSxS)


def diffuse_exact(laplacian, q_BxSxD: jax.Array, spectral_filter: SpectralFilter, *,
                  node_mask_BxS: jax.Array, passthrough_mask_BxS: Optional[jax.Array] = None) -> jax.Array:
    """Exact `f(L) Q` by dense eigendecomposition per cell, with `diffuse`'s masking.

    `laplacian`: BCOO or dense [B, S, S]; `spectral_filter`: beta for exp(-beta lambda), or a
    jnp-callable on eigenvalues. Computes in float32 (float64 for float64 Q under x64).
    """
    b, s, _ = q_BxSxD.shape
    if passthrough_mask_BxS is None:
        passthrough_mask_BxS = jnp.zeros((b, s), bool)
    dtype = compute_dtype(q_BxSxD.dtype)
    graph_BxS = node_mask_BxS.astype(bool) & ~passthrough_mask_BxS.astype(bool)
    lap_BxSxS = _dense(laplacian, dtype)
    lam_BxS, u_BxSxS = jnp.linalg.eigh(lap_BxSxS)
    f_BxS = _filter_fn(spectral_filter)(lam_BxS)
    q0_BxSxD = jnp.where(graph_BxS[..., None], q_BxSxD.astype(dtype), 0)
    proj_BxSxD = jnp.einsum("bji,bjd->bid", u_BxSxS, q0_BxSxD)
    out_BxSxD = jnp.einsum("bij,bj,bjd->bid", u_BxSxS, f_BxS, proj_BxSxD)
    out_BxSxD = jnp.where(graph_BxS[..., None], out_BxSxD, 0).astype(q_BxSxD.dtype)
    return jnp.where(passthrough_mask_BxS[..., None], q_BxSxD, out_BxSxD)


def apply_dense_filter(filter_BxSxS: jax.Array, q_BxSxD: jax.Array, *, node_mask_BxS: jax.Array,
                       passthrough_mask_BxS: Optional[jax.Array] = None) -> jax.Array:
    """`f(L) Q` with a precomputed dense `f(L)` (from `filter_matrix`), same masking."""
    b, s, _ = q_BxSxD.shape
    if passthrough_mask_BxS is None:
        passthrough_mask_BxS = jnp.zeros((b, s), bool)
    dtype = compute_dtype(q_BxSxD.dtype)
    graph_BxS = node_mask_BxS.astype(bool) & ~passthrough_mask_BxS.astype(bool)
    q0_BxSxD = jnp.where(graph_BxS[..., None], q_BxSxD.astype(dtype), 0)
    out_BxSxD = jnp.einsum("bij,bjd->bid", filter_BxSxS.astype(dtype), q0_BxSxD)
    out_BxSxD = jnp.where(graph_BxS[..., None], out_BxSxD, 0).astype(q_BxSxD.dtype)
    return jnp.where(passthrough_mask_BxS[..., None], q_BxSxD, out_BxSxD)
