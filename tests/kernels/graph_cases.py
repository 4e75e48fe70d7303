"""Random per-cell graph batches and independent numpy/scipy oracles for the kernel tests."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.special


def random_graph_batch(rng, b, s, e, n_real, *, one_way=True):
    """Edge lists over positions 1..n_real[b]-1 (never CLS or padding), some slots masked.

    Returns senders, receivers (int32 [B, E]), weights (float32), edge_mask and
    token_mask (bool [B, S]); duplicates, reciprocal pairs and self-loops occur.
    """
    n_real = np.broadcast_to(np.asarray(n_real), (b,))
    snd = np.zeros((b, e), np.int32)
    rcv = np.zeros((b, e), np.int32)
    for i in range(b):
        snd[i] = rng.integers(1, n_real[i], e)
        rcv[i] = rng.integers(1, n_real[i], e)
    if not one_way:  # the last quarter of the slots repeats the first quarter reversed
        q = e // 4
        snd[:, e - q:], rcv[:, e - q:] = rcv[:, :q].copy(), snd[:, :q].copy()
    w = rng.uniform(0.05, 2.0, (b, e)).astype(np.float32)
    em = rng.random((b, e)) < 0.85
    tm = np.arange(s)[None, :] < n_real[:, None]
    return snd, rcv, w, em, tm


def dense_laplacian_np(snd, rcv, w, em, s):
    """L = I - D^-1/2 (W + W^T) D^-1/2 per cell, float64, by explicit loops (the oracle)."""
    b, e = snd.shape
    out = np.zeros((b, s, s))
    for i in range(b):
        a = np.zeros((s, s))
        for j in range(e):
            if em[i, j] and snd[i, j] != rcv[i, j]:
                a[snd[i, j], rcv[i, j]] += w[i, j]
                a[rcv[i, j], snd[i, j]] += w[i, j]
        d = a.sum(1)
        inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
        out[i] = np.eye(s) - inv[:, None] * a * inv[None, :]
    return out


def heat_coeffs(beta, k_terms):
    """Closed-form Chebyshev coefficients of exp(-beta lambda): 2 e^-beta (-1)^k I_k(beta), float64."""
    k = np.arange(k_terms)
    return 2.0 * (-1.0) ** k * scipy.special.ive(k, beta)


def diffuse_expm_np(lap_BxSxS, q_BxSxC, token_mask_BxS, beta):
    """Exact masked heat diffusion: graph rows get expm(-beta L) (masked q), CLS passes, padding -> 0."""
    b, s, _ = lap_BxSxS.shape
    out = np.zeros(q_BxSxC.shape)
    for i in range(b):
        nm = token_mask_BxS[i] & (np.arange(s) > 0)
        y = scipy.linalg.expm(-beta * lap_BxSxS[i]) @ (np.asarray(q_BxSxC[i], np.float64) * nm[:, None])
        out[i] = y * nm[:, None]
        out[i, 0] = q_BxSxC[i, 0]
    return out


def ell_to_dense(ell):
    """Dense [B, S, S] L~ from an ELL (duplicates in a row add)."""
    idx = np.asarray(ell.indices)
    val = np.asarray(ell.values, np.float64)
    b, s, r = idx.shape
    out = np.zeros((b, s, s))
    for i in range(b):
        np.add.at(out[i], (np.repeat(np.arange(s), r), idx[i].ravel()), val[i].ravel())
    return out


def has_gpu() -> bool:
    """Whether JAX sees a GPU (the Pallas-Triton classes are skipped without one)."""
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False
