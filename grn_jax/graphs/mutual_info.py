"""Mutual information between regulators and genes, on ranks (copula space).

Two estimators of the same quantity (nats):

* `gaussian_copula_mi` -- the fast one. Each gene is rank-transformed to
  normal scores; MI of the copula-normal pair is `-0.5 log(1 - r^2)` with `r`
  the correlation of the scores, so the whole regulator x gene matrix is one
  matrix multiply, computed in JAX over fixed-size gene blocks (memory bounded
  by `N x block`, one compile for every block).
* `adaptive_partition_mi` -- faithful to ARACNe-AP (Lachmann et al. 2016): on
  ranks, recursively split a cell of the rank plane into four equal-marginal
  quadrants while a chi-square test (3 dof, 7.815 = p 0.05) rejects
  uniformity (the root is always split, quadrants with <= 2 points stop);
  every leaf adds `n log(n / (w_x w_y))`, and `MI = sum / N + log N`.
  The pivots do not depend on the data, so the top levels of every pair's
  tree come from rank-bin counts -- for a regulator x gene grid, depths 1-2
  of every pair from one product of cumulative-indicator matrices, depth 3
  only for the pairs that get there -- and the cells still live below from
  binary searches in the pair's sorted Morton codes (`adaptive_partition_mi_grid`); with numba
  installed, depths 2 and below run in one compiled kernel instead (`_ap_deep_py`: per pair,
  depth-3 prefix counts, then a counting sort of the live points per level; same visit order,
  same leaf values, same bits; the numpy stages stay as the fallback, `GRN_JAX_NO_NUMBA=1`). Pivots
  use half-open rank intervals `[lo, mid) / [mid, hi)`; ARACNe-AP's `<=`
  pivot differs by one rank on odd widths.

Inputs are (cells x genes) matrices; constant or non-finite columns raise.
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

CHI2_3DOF_P05 = 7.815  # chi-square critical value, 3 dof, p = 0.05 (ARACNe-AP)


def check_expression(x_NxG: np.ndarray, genes: Optional[Sequence[str]] = None, *, what: str = "expression") -> None:
    """Raise ValueError naming the first NaN/inf entry (cell row, gene) and the count."""
    x_NxG = np.asarray(x_NxG)
    if x_NxG.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (cells x genes) matrix, got shape {x_NxG.shape}")
    bad = ~np.isfinite(x_NxG)
    if bad.any():
        cell, gene = np.argwhere(bad)[0]
        name = genes[gene] if genes is not None else f"column {gene}"
        raise ValueError(
            f"{what} has {int(bad.sum())} non-finite values (NaN/inf); first at cell row {cell}, gene {name!r}. "
            "Impute or drop those cells/genes before inferring a network.")


def constant_columns(x_NxG: np.ndarray, min_cells: int = 1) -> np.ndarray:
    """Boolean [G]: genes with fewer than `min_cells` cells away from the gene's median value.

    min_cells=1: exactly constant genes (no information). Larger values also flag
    genes detected in only a handful of cells: two such genes seen in the same
    cell look almost identical on ranks, which gives spurious near-maximal MI and
    a degenerate permutation-null tail.
    """
    x_NxG = np.asarray(x_NxG)
    if min_cells <= 1:
        return np.all(x_NxG == x_NxG[:1], axis=0)
    return np.count_nonzero(x_NxG != np.median(x_NxG, axis=0, keepdims=True), axis=0) < min_cells


def _check_not_constant(x_NxG: np.ndarray, genes: Optional[Sequence[str]], what: str, min_cells: int = 1) -> None:
    const = constant_columns(x_NxG, min_cells)
    if const.any():
        idx = np.flatnonzero(const)
        names = [genes[i] if genes is not None else f"column {i}" for i in idx[:5]]
        how = (f"constant across all {x_NxG.shape[0]} cells" if min_cells <= 1 else
               f"constant or nearly so (fewer than {min_cells} of {x_NxG.shape[0]} cells differ from the gene's "
               "median)")
        raise ValueError(
            f"{what}: {len(idx)} gene(s) are {how}, so their mutual information is undefined or unreliable "
            f"(first: {names}). Drop them first (grn_jax.graphs.constant_columns(x, min_cells) finds them).")


def rank_transform(x_NxG: np.ndarray, *, ties: str = "average", rng: Optional[np.random.Generator] = None,
                   dense_GxN: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-gene ranks 0..N-1 along cells.

    ties="average" gives mid-ranks (float64; the copula estimator);
    ties="random" breaks ties by an independent random order per gene (int32
    permutations; ARACNe's estimator needs distinct ranks, and a shared order
    would correlate the tie-breaks of different genes). `dense_GxN`:
    `dense_ranks(x_NxG)`, when the caller ranks the same values more than once.
    """
    x_NxG = np.asarray(x_NxG)
    if ties == "average":
        return _midranks(x_NxG)
    if ties == "random":
        rng = rng if rng is not None else np.random.default_rng(0)
        key_NxG = rng.random(x_NxG.shape)
        dense_GxN = dense_ranks(x_NxG) if dense_GxN is None else dense_GxN
        ranks_GxN = None if dense_GxN is None else _random_tie_ranks(dense_GxN, key_NxG)
        if ranks_GxN is not None:
            return ranks_GxN.T
        order_NxG = np.lexsort((key_NxG, x_NxG), axis=0)
        ranks_NxG = np.empty(x_NxG.shape, dtype=np.int32)
        np.put_along_axis(ranks_NxG, order_NxG, np.arange(x_NxG.shape[0], dtype=np.int32)[:, None], axis=0)
        return ranks_NxG
    raise ValueError(f"ties must be 'average' or 'random', got {ties!r}")


def dense_ranks(x_NxG: np.ndarray) -> Optional[np.ndarray]:
    """Each gene's values as dense ranks 0, 1, ... (ties share one; uint16 [G, N], gene-major), or None for
    >= 2^16 cells or non-finite values (then `rank_transform` lexsorts)."""
    x_NxG = np.asarray(x_NxG)
    n, g = x_NxG.shape
    if n == 0 or g == 0 or n >= 1 << 16 or not np.isfinite(x_NxG).all():
        return None
    x_GxN = np.ascontiguousarray(x_NxG.T)
    order = np.argsort(x_GxN, axis=1)
    xs = np.take_along_axis(x_GxN, order, axis=1)
    step = np.zeros((g, n), np.uint16)
    np.not_equal(xs[:, 1:], xs[:, :-1], out=step[:, 1:])
    dense_GxN = np.empty((g, n), np.uint16)
    np.put_along_axis(dense_GxN, order, np.cumsum(step, axis=1, dtype=np.uint16), axis=1)
    return dense_GxN


def _random_tie_ranks(dense_GxN: np.ndarray, key_NxG: np.ndarray) -> Optional[np.ndarray]:
    """Ranks [G, N] (int32) of each gene's cells by (value, key), the order of `np.lexsort((key, x), axis=0)`,
    gene-major from the dense ranks d: one sort of d + key / 2 (the dense ranks are >= 1 apart and key / 2 <
    1/2, so the order is by d, then key, unless rounding makes two sums equal -- checked; then one sort by
    key and a stable radix sort by d). None (the caller lexsorts) if a key repeats within a gene, where
    lexsort's index order would decide."""
    g, n = dense_GxN.shape
    key_GxN = np.ascontiguousarray(key_NxG.T)
    both = dense_GxN + 0.5 * key_GxN
    order = np.argsort(both, axis=1)
    sorted_both = np.take_along_axis(both, order, axis=1)
    if (sorted_both[:, 1:] == sorted_both[:, :-1]).any():
        by_key = np.argsort(key_GxN, axis=1)
        ks = np.take_along_axis(key_GxN, by_key, axis=1)
        if (ks[:, 1:] == ks[:, :-1]).any():
            return None
        order = np.take_along_axis(by_key, np.argsort(np.take_along_axis(dense_GxN, by_key, axis=1), axis=1,
                                                      kind="stable"), axis=1)
    ranks_GxN = np.empty((g, n), np.int32)
    np.put_along_axis(ranks_GxN, order, np.broadcast_to(np.arange(n, dtype=np.int32), (g, n)), axis=1)
    return ranks_GxN


def _midranks(x_NxG: np.ndarray) -> np.ndarray:
    """0-based mid-ranks per column (float64 [N, G]) without a per-column loop.

    Single-cell data are mostly zeros: for non-negative data only the non-zero
    entries are sorted (one segmented sort keyed by gene), zeros share the rank
    (n_zero - 1) / 2 and the non-zeros follow; otherwise every entry is sorted.
    """
    n, g = x_NxG.shape
    if n == 0 or g == 0:
        return np.zeros(x_NxG.shape)
    x_GxN = np.ascontiguousarray(x_NxG.T)  # gene-major: sorts and scans run along memory
    if x_GxN.min() >= 0:
        gene, cell = np.nonzero(x_GxN)
        vals = x_GxN[gene, cell]
        n_zero_G = n - np.bincount(gene, minlength=g)
        ranks_GxN = np.broadcast_to(0.5 * (n_zero_G - 1.0)[:, None], (g, n)).copy()
    else:
        gene = np.repeat(np.arange(g), n)
        cell = np.tile(np.arange(n), g)
        vals = x_GxN.ravel()
        n_zero_G = np.zeros(g, np.int64)
        ranks_GxN = np.empty((g, n))
    order = np.lexsort((vals, gene))  # by gene, then value
    gs, vs = gene[order], vals[order]
    m = gs.size
    if m:
        pos = np.arange(m)
        counts_G = np.bincount(gs, minlength=g)
        seg_start = (np.cumsum(counts_G) - counts_G)[gs]  # first entry of this gene in the sorted list
        new_group = np.ones(m, bool)
        new_group[1:] = (vs[1:] != vs[:-1]) | (gs[1:] != gs[:-1])
        start = np.maximum.accumulate(np.where(new_group, pos, 0))
        last = np.ones(m, bool)
        last[:-1] = new_group[1:]
        end = np.minimum.accumulate(np.where(last, pos, m - 1)[::-1])[::-1]
        ranks_GxN[gs, cell[order]] = n_zero_G[gs] + 0.5 * (start + end) - seg_start
    return ranks_GxN.T


def copula_scores(x_NxG: np.ndarray, genes: Optional[Sequence[str]] = None, *,
                  allow_constant: bool = False) -> np.ndarray:
    """Normal scores of mid-ranks, centred and scaled to unit variance per gene (float32 [N, G]).

    Constant genes raise unless `allow_constant`, in which case their scores
    are all 0 (so every MI with them is 0).
    """
    check_expression(x_NxG, genes)
    if not allow_constant:
        _check_not_constant(x_NxG, genes, "copula_scores")
    n = x_NxG.shape[0]
    z_NxG = special.ndtri((rank_transform(x_NxG) + 1.0) / (n + 1.0))
    z_NxG -= z_NxG.mean(axis=0, keepdims=True)
    sd_G = z_NxG.std(axis=0, keepdims=True)
    z_NxG = np.divide(z_NxG, sd_G, out=np.zeros_like(z_NxG), where=sd_G > 0)
    return z_NxG.astype(np.float32)


def bucket(n: int, minimum: int = 64) -> int:
    """Round n up to a static-shape bucket: a multiple of 2^(floor(log2 n) - 2) (at least `minimum`), so
    under 25 % padding and only a few distinct shapes (hence compiles) across cell types and bootstraps."""
    n = max(int(n), 1)
    step = max(minimum, 1 << max(0, n.bit_length() - 3))
    return -(-n // step) * step


@functools.partial(jax.jit, static_argnames=("block",))
def _gc_mi_blocks(zr_NxR: jax.Array, zg_NxG: jax.Array, n_cells: jax.Array, block: int) -> jax.Array:
    """Zero-padded cells add nothing to the dot products; `n_cells` is the true count."""
    n, g = zg_NxG.shape
    nb = g // block
    zg_BxNxK = jnp.moveaxis(zg_NxG.reshape(n, nb, block), 1, 0)

    def one(zb_NxK):
        r_RxK = jnp.einsum("nr,nk->rk", zr_NxR, zb_NxK, precision=jax.lax.Precision.HIGHEST) / n_cells
        r2_RxK = jnp.minimum(r_RxK * r_RxK, 1.0 - 1e-7)
        return -0.5 * jnp.log1p(-r2_RxK)

    mi_BxRxK = jax.lax.map(one, zg_BxNxK)
    return jnp.moveaxis(mi_BxRxK, 0, 1).reshape(zr_NxR.shape[1], g)


def gaussian_copula_mi(z_NxR: np.ndarray, z_NxG: np.ndarray, *, block: int = 512) -> np.ndarray:
    """MI [R, G] (nats) between copula scores of regulators and genes (from `copula_scores`).

    Cells, regulators and genes are zero-padded to buckets (`bucket`; genes to a
    multiple of `block`) so cell types and bootstraps of similar size share one
    compiled kernel; genes are processed one block at a time under `lax.map`, so
    peak extra memory is `R x block` per step.
    """
    z_NxR = np.asarray(z_NxR, np.float32)
    z_NxG = np.asarray(z_NxG, np.float32)
    if z_NxR.shape[0] != z_NxG.shape[0]:
        raise ValueError(f"regulator scores have {z_NxR.shape[0]} cells, gene scores {z_NxG.shape[0]}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    (n, r), g = z_NxR.shape, z_NxG.shape[1]
    g_pad = bucket(g)
    block = min(block, g_pad)
    g_pad = -(-g_pad // block) * block
    n_pad, r_pad = bucket(n), bucket(r, minimum=8)
    zr = np.zeros((n_pad, r_pad), np.float32)
    zr[:n, :r] = z_NxR
    zg = np.zeros((n_pad, g_pad), np.float32)
    zg[:n, :g] = z_NxG
    mi = _gc_mi_blocks(jnp.asarray(zr), jnp.asarray(zg), jnp.float32(n), block)
    return np.asarray(mi)[:r, :g]


def gaussian_mi_closed_form(rho) -> np.ndarray:
    """MI of a bivariate normal with correlation rho: -0.5 log(1 - rho^2) (nats)."""
    rho = np.asarray(rho, np.float64)
    return -0.5 * np.log1p(-rho * rho)


def _leaf_info(n, wx, wy) -> np.ndarray:
    n = np.asarray(n, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = n * np.log(n / (np.asarray(wx, np.float64) * np.asarray(wy, np.float64)))
    return np.where(n > 0, v, 0.0)


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # scanning the loaded libraries costs ~1 ms: once per process


def _one_blas_thread():
    return _blas_controller().limit(limits=1, user_api="blas")


HIST_DEPTH = 3  # the adaptive tree's top levels come from one 2^3 x 2^3 rank histogram per pair
_DEEP_POINTS = 1 << 19  # points per chunk of deep pairs: their sorted codes stay in cache for the binary searches


def _interval_tree(n: int, depth: int):
    """The fixed equal-marginal interval tree of ranks 0..n-1 (the same on both axes, whatever the data).

    Returns bins_N (each rank's interval index at `depth`; the children of interval b are 2b, 2b+1),
    widths (a list of depth + 1 arrays: interval widths per level) and the (lo, hi) bounds of the intervals
    at `depth`, matching the half-open pivots of the recursion (mid = (lo + hi) // 2).
    """
    lo, hi = np.zeros(1, np.int64), np.full(1, n, np.int64)
    idx = np.zeros(n, np.int64)
    v = np.arange(n)
    widths = [hi - lo]
    for _ in range(depth):
        mid = (lo + hi) // 2
        idx = 2 * idx + (v >= mid[idx])
        lo, hi = np.stack([lo, mid], 1).ravel(), np.stack([mid, hi], 1).ravel()
        widths.append(hi - lo)
    return idx, widths, (lo, hi)


def _ap_from_hist(h_PxBxB: np.ndarray, widths, n: int, chi2_threshold: float):
    """The leaf sum [P] of the top D levels of each pair's adaptive tree from its depth-D rank histogram,
    and the cells [P, 2^D, 2^D] still live at depth D (split parent, > 2 points), which the deep-tree stage finishes."""
    p, b = h_PxBxB.shape[:2]
    depth = b.bit_length() - 1
    hist = [None] * (depth + 1)
    hist[depth] = np.rint(h_PxBxB).astype(np.int32)  # integer counts: exact sums up the pyramid
    for d in range(depth - 1, -1, -1):
        s = 1 << d
        hist[d] = hist[d + 1].reshape(p, s, 2, s, 2).sum(axis=(2, 4), dtype=np.int32)
    acc = np.zeros(p)
    split = np.ones((p, 1, 1), bool)  # the root always splits
    for d in range(1, depth + 1):
        cnt = hist[d].astype(np.float64)
        parent_split = split.repeat(2, axis=1).repeat(2, axis=2)
        area = np.outer(widths[d], widths[d]).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            info = np.where(cnt > 0, cnt * np.log(cnt / area), 0.0)
        live = parent_split & (cnt > 2)
        acc += np.where(parent_split & (cnt <= 2), info, 0.0).sum(axis=(1, 2))  # small quadrants are leaves
        if d == depth:
            return acc, live
        s = 1 << d
        exp = cnt / 4.0
        with np.errstate(divide="ignore", invalid="ignore"):
            chi2 = ((hist[d + 1].reshape(p, s, 2, s, 2) - exp[:, :, None, :, None]) ** 2).sum(axis=(2, 4)) / exp
        split = live & (chi2 > chi2_threshold)
        acc += np.where(live & ~split, info, 0.0).sum(axis=(1, 2))  # uniform cells are leaves
        if not split.any():
            return acc, np.zeros((p, b, b), bool)


def _ap_top2(cum_4x4xP: np.ndarray, widths, chi2_threshold: float):
    """Depths 1 and 2 of P adaptive trees from their cumulative depth-2 counts cum[a, b] = #(x-bin <= a,
    y-bin <= b) (integers). Returns the sum [P] of the leaves at depths 1-2 and the live
    depth-2 cells (split parent, > 2 points) as (pair, x interval, y interval), sorted, which `_ap_deep`
    continues."""
    rows = np.empty_like(cum_4x4xP)  # differences along x, then y: the depth-2 counts [4, 4, P]
    rows[0] = cum_4x4xP[0]
    np.subtract(cum_4x4xP[1:], cum_4x4xP[:-1], out=rows[1:])
    h = np.empty_like(rows)
    h[:, 0] = rows[:, 0]
    np.subtract(rows[:, 1:], rows[:, :-1], out=h[:, 1:])
    kids = h.reshape(2, 2, 2, 2, -1)  # [x half, x quarter, y half, y quarter, P]
    c1_int = kids.sum(axis=(1, 3))  # [2, 2, P] the root's quadrants
    c1 = c1_int.astype(np.float64)
    a1 = np.outer(widths[1], widths[1]).astype(np.float64)[:, :, None]
    # chi2 = sum (k - c/4)^2 / (c/4): the sum is exact in floats (quarter-integers), so it is computed as the
    # integer sum (4k - c)^2 / 16 -- the same float, then the same one rounding in the division.
    wide = np.int32 if int(cum_4x4xP[3, 3].max(initial=0)) <= 5792 else np.int64  # 64 n^2 < 2^31
    dev = 4 * kids.astype(wide, copy=False) - c1_int[:, None, :, None].astype(wide, copy=False)
    np.square(dev, out=dev)
    with np.errstate(divide="ignore", invalid="ignore"):
        exp = c1 / 4.0
        chi2 = dev.sum(axis=(1, 3)) / 16.0
        chi2 /= exp
        info = np.log(c1 / a1)
        info *= c1
    split = (c1 > 2) & (chi2 > chi2_threshold)  # the root always splits; its small or uniform quadrants are leaves
    info[(c1 <= 0) | split] = 0.0
    acc = info.sum(axis=(0, 1))
    qi, qj, pair = np.nonzero(split)  # the (few) split quadrants: children with <= 2 points are leaves
    k_Sx2x2 = kids[qi, :, qj, :, pair]
    w2 = np.asarray(widths[2], np.float64).reshape(2, 2)
    acc += np.bincount(pair, _leaf_info(np.where(k_Sx2x2 > 2, 0, k_Sx2x2), w2[qi][:, :, None],
                                        w2[qj][:, None, :]).sum(axis=(1, 2)), minlength=acc.size)
    s, ci, cj = np.nonzero(k_Sx2x2 > 2)  # the live depth-2 cells, in (pair, x interval, y interval) order
    cell_pair, ix, iy = pair[s], 2 * qi[s] + ci, 2 * qj[s] + cj
    order = np.lexsort((iy, ix, cell_pair))
    return acc, (cell_pair[order], ix[order], iy[order])


def adaptive_partition_mi(xr_NxP: np.ndarray, yr_NxP: np.ndarray, *, chi2_threshold: float = CHI2_3DOF_P05,
                          max_points: int = 1 << 22) -> np.ndarray:
    """ARACNe adaptive-partitioning MI [P] (nats) of P pairs of rank vectors.

    `xr_NxP[:, p]`, `yr_NxP[:, p]` must each be a permutation of 0..N-1
    (`rank_transform(..., ties="random")`). Pairs are processed in chunks of at
    most `max_points` (pair, cell) points to bound memory.
    """
    xr_NxP = np.asarray(xr_NxP)
    yr_NxP = np.asarray(yr_NxP)
    if xr_NxP.shape != yr_NxP.shape or xr_NxP.ndim != 2:
        raise ValueError(f"rank matrices must both be [N, P]; got {xr_NxP.shape} and {yr_NxP.shape}")
    n, p = xr_NxP.shape
    if n < 8:
        raise ValueError(f"adaptive partitioning needs at least 8 cells, got {n}")
    tree = _interval_tree(n, HIST_DEPTH)
    nb = 1 << HIST_DEPTH
    out = np.empty(p, np.float64)
    chunk = max(1, max_points // n)
    for start in range(0, p, chunk):
        stop = min(p, start + chunk)
        code_PxN = (np.arange(stop - start)[:, None] * (nb * nb) + tree[0][xr_NxP[:, start:stop].T] * nb
                    + tree[0][yr_NxP[:, start:stop].T])
        h = np.bincount(code_PxN.ravel(), minlength=(stop - start) * nb * nb).reshape(-1, nb, nb)
        cols = np.arange(stop - start)
        out[start:stop] = _ap_finish(h, xr_NxP[:, start:stop].T, yr_NxP[:, start:stop].T, cols, cols, tree,
                                     chi2_threshold, max_points)
    return out


def _ap_finish(h_PxBxB, xr_AxN, yr_BxN, a_P, b_P, tree, chi2_threshold: float,
               max_points: int = 1 << 22) -> np.ndarray:
    """MI [P] of the pairs (xr[a_P[p]], yr[b_P[p]]) (rank rows, pair-major) from their depth-D histograms,
    continuing the trees that go deeper from their live depth-D cells (`_ap_sorted`)."""
    _, widths, _ = tree
    n, nb = xr_AxN.shape[1], h_PxBxB.shape[1]
    acc, live_PxBxB = _ap_from_hist(h_PxBxB, widths, n, chi2_threshold)
    deep_all = np.flatnonzero(live_PxBxB.any(axis=(1, 2)))
    step = max(1, max_points // n)
    for s in range(0, deep_all.size, step):
        deep = deep_all[s:s + step]
        pair, cx, cy = np.nonzero(live_PxBxB[deep])
        below = np.zeros(deep.size)
        sx, sy = _morton_axes(n, xr_AxN[a_P[deep]], yr_BxN[b_P[deep]])
        _ap_sorted(below, sx | sy, pair, cx, cy, nb.bit_length() - 1, chi2_threshold)
        acc[deep] += below
    return acc / n + np.log(n)


@functools.lru_cache(maxsize=16)
def _full_paths(n: int):
    """Every rank's path through the fixed interval tree down to depth D = ceil(log2 n) (where every
    interval has width <= 1), its bits spread to the even bit positions (int64 [n]); and the interval
    widths per depth 0..D. Read-only (cached)."""
    depth = max(1, (n - 1).bit_length())
    idx, widths, _ = _interval_tree(n, depth)
    return depth, _spread_bits(idx, depth), widths


def _spread_bits(i: np.ndarray, bits: int) -> np.ndarray:
    """Bit b of each int to bit 2b (int64): one axis of a Morton code."""
    i = np.asarray(i, np.int64)
    out = np.zeros(i.shape, np.int64)
    for b in range(bits):
        out |= ((i >> b) & 1) << (2 * b)
    return out


_QX_4, _QY_4 = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])  # quadrant q = 2 x-half + y-half


def _ap_level(acc, counts_Sx4, cell_pair, ix, iy, d: int, widths, chi2_threshold: float):
    """One level of the trees below S live cells at depth d, given their quadrant counts [S, 4] (int):
    adds the leaves to acc [P] (uniform cells, then quadrants of <= 2 points, in cell order) with
    the recursion's arithmetic; returns the live quadrants [S, 4] and the quadrants' intervals at depth d + 1."""
    seg_len = counts_Sx4.sum(axis=1)
    expected = seg_len / 4.0
    chi2 = ((counts_Sx4 - expected[:, None]) ** 2).sum(axis=1) / expected
    split = chi2 > chi2_threshold
    leaf = ~split  # cells that pass the uniformity test are leaves
    np.add.at(acc, cell_pair[leaf], _leaf_info(seg_len[leaf], widths[d][ix[leaf]], widths[d][iy[leaf]]))
    cix, ciy = 2 * ix[:, None] + _QX_4, 2 * iy[:, None] + _QY_4
    small = split[:, None] & (counts_Sx4 <= 2)  # quadrants with <= 2 points are leaves
    np.add.at(acc, np.broadcast_to(cell_pair[:, None], small.shape)[small],
              _leaf_info(counts_Sx4[small], widths[d + 1][cix[small]], widths[d + 1][ciy[small]]))
    return split[:, None] & (counts_Sx4 > 2), cix, ciy


def _morton_axes(n: int, xr_AxN: np.ndarray, yr_BxN: np.ndarray):
    """Each rank row's half of its points' Morton codes: x paths on the odd bits, y paths on the even bits
    (int32 while the codes fit, for n <= 2^15; else int64). A pair's codes are `sx[a] | sy[b]`."""
    depth, spread, _ = _full_paths(n)
    spread = spread.astype(np.int32) if 2 * depth < 31 else spread
    return (spread << 1)[xr_AxN], spread[yr_BxN]


def _ap_sorted(acc, code_PxN: np.ndarray, cell_pair, ix, iy, depth0: int, chi2_threshold: float,
               acc_index: Optional[np.ndarray] = None) -> None:
    """Adds to acc the leaves of the trees below the live cells (cell_pair, ix, iy) at depth `depth0`
    (sorted by pair) of P pairs, given their points' Morton codes [P, N] (`_morton_axes`; sorted here, in
    place), level by level, without touching the points after the sort. Pair p's leaves go to
    acc[acc_index[p]] (default acc[p]). `code_PxN` is overwritten.

    Each point's Morton code interleaves its x and y paths through the fixed tree (x bit first: the
    quadrant order q = 2 x-half + y-half), so after sorting each pair's codes every cell at every depth is a
    contiguous run, and a cell's four quadrant counts are differences of binary-search positions in the
    sorted codes (three searches per live cell and level instead of a pass over its points). Cells are
    visited, and their leaves added, level by level, in (cell, quadrant) order, with `_ap_level`'s arithmetic.
    """
    (p, n), depth = code_PxN.shape, _full_paths(code_PxN.shape[1])[0]
    widths = _full_paths(n)[2]
    # Pair p's codes offset by p << 2D: one ascending array. int32 while the largest key fits.
    dt = np.int32 if code_PxN.dtype == np.int32 and (p << (2 * depth)) < (1 << 31) else np.int64
    code_PxN = code_PxN.astype(dt, copy=False)
    code_PxN += (np.arange(p, dtype=dt) << (2 * depth))[:, None]
    code_PxN.sort(axis=1)
    flat = code_PxN.ravel()

    def find(keys):
        return np.searchsorted(flat, keys.astype(dt, copy=False))

    cell_pair = np.asarray(cell_pair, np.int64)
    ix, iy = np.asarray(ix, np.int64), np.asarray(iy, np.int64)
    m = (_spread_bits(ix, depth0) << 1) | _spread_bits(iy, depth0)  # the cells' Morton prefixes
    base = cell_pair << (2 * depth)
    shift = 2 * (depth - depth0)
    start, end = find(base + (m << shift)), find(base + ((m + 1) << shift))
    d = depth0
    while m.size:
        shift = 2 * (depth - d - 1)
        bounds = np.stack([start] + [find(base + ((4 * m + q) << shift)) for q in (1, 2, 3)] + [end], axis=1)
        live, cix, ciy = _ap_level(acc, np.diff(bounds, axis=1), cell_pair if acc_index is None else
                                   acc_index[cell_pair], ix, iy, d, widths, chi2_threshold)
        cell_pair = np.broadcast_to(cell_pair[:, None], live.shape)[live]
        ix, iy, m = cix[live], ciy[live], (4 * m[:, None] + np.arange(4))[live]
        start, end = bounds[:, :4][live], bounds[:, 1:][live]
        base = cell_pair << (2 * depth)
        d += 1


# --- compiled deep trees (numba, when it imports) -------------------------------------------------------------

_NUMBA_DISABLED = os.environ.get("GRN_JAX_NO_NUMBA", "") not in ("", "0")  # force the numpy path


@functools.lru_cache(maxsize=1)
def _deep_kernel():
    """The numba kernel `_ap_deep_numba` compiled (cached on disk after the first run), or None without numba."""
    if _NUMBA_DISABLED:
        return None
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a declared dependency
        return None
    return numba.njit(cache=True, nogil=True)(_ap_deep_py)


def _ap_deep_py(xr_RxN, yr_GxN, a_P, b_P, cell_ptr, m2_C, ix, iy, px_N, py_N, lo2, hi2, lo3, hi3, wmin_D,
                leaf_Dx2x2xN, chi2_threshold, out_P):
    """Leaf sums out[p] of the trees of pairs (xr[a_P[p]], yr[b_P[p]]) below their live depth-2 cells
    (cells cell_ptr[p]:cell_ptr[p + 1] of (m2, ix, iy), Morton prefix and intervals, in `_ap_level`'s order).
    Plain loops for numba. Depth 2 from the pair's 64 depth-3 Morton-prefix counts (px | py per point); the
    pairs still live at depth 3: their points in live cells, grouped by cell, then level by level as
    `_ap_level` over those cells: the uniform cells' leaves in cell order, then the split cells' quadrants of
    <= 2 points in (cell, quadrant) order, then the live quadrants' points moved to their segments (a counting
    sort). Leaf values come from the table `leaf[d, wx - wmin[d], wy - wmin[d], k]` (`_leaf_info`'s numpy
    values, so the same bits), chi-square with `_ap_level`'s float operations (its sum of quarter-integer
    squares is exact in any order). Returns 0, or 1 if a tree would go below the table's depth (ranks that
    are not permutations)."""
    n = xr_RxN.shape[1]
    n_depth = wmin_D.shape[0]
    h3 = np.zeros(64, np.int64)
    slot = np.full(64, -1, np.int64)
    xs = np.empty(n, np.int64)
    ys = np.empty(n, np.int64)
    xs2 = np.empty(n, np.int64)
    ys2 = np.empty(n, np.int64)
    qs = np.empty(n, np.int64)
    size = n + 68
    start = np.empty(size, np.int64)
    seg = np.empty(size, np.int64)
    lox = np.empty(size, np.int64)
    hix = np.empty(size, np.int64)
    loy = np.empty(size, np.int64)
    hiy = np.empty(size, np.int64)
    nstart = np.empty(size, np.int64)
    nseg = np.empty(size, np.int64)
    nlox = np.empty(size, np.int64)
    nhix = np.empty(size, np.int64)
    nloy = np.empty(size, np.int64)
    nhiy = np.empty(size, np.int64)
    cnt = np.empty((size, 4), np.int64)
    split = np.empty(size, np.bool_)
    fill = np.empty(size, np.int64)
    code = np.empty(size, np.int64)
    fq = np.empty(4, np.int64)
    wm2, wm3 = wmin_D[2], wmin_D[3]
    for p in range(a_P.shape[0]):
        c0, c1 = cell_ptr[p], cell_ptr[p + 1]
        acc = 0.0
        xrow = xr_RxN[a_P[p]]
        yrow = yr_GxN[b_P[p]]
        for j in range(64):
            h3[j] = 0
        for i in range(n):
            h3[px_N[xrow[i]] | py_N[yrow[i]]] += 1
        for c in range(c0, c1):  # depth 2: uniform cells are leaves
            b = 4 * m2_C[c]
            k0, k1, k2, k3 = h3[b], h3[b + 1], h3[b + 2], h3[b + 3]
            m = k0 + k1 + k2 + k3
            e = m / 4.0
            t0, t1, t2, t3 = k0 - e, k1 - e, k2 - e, k3 - e
            chi2 = (((t0 * t0 + t1 * t1) + t2 * t2) + t3 * t3) / e
            split[c - c0] = chi2 > chi2_threshold
            if not split[c - c0]:
                acc += leaf_Dx2x2xN[2, hi2[ix[c]] - lo2[ix[c]] - wm2, hi2[iy[c]] - lo2[iy[c]] - wm2, m]
        ncell = 0
        pos = 0
        for c in range(c0, c1):  # the split cells' quadrants: <= 2 points are leaves, the others live
            if split[c - c0]:
                b = 4 * m2_C[c]
                for q in range(4):
                    k = h3[b + q]
                    cx = 2 * ix[c] + (q >> 1)
                    cy = 2 * iy[c] + (q & 1)
                    if k <= 2:
                        acc += leaf_Dx2x2xN[3, hi3[cx] - lo3[cx] - wm3, hi3[cy] - lo3[cy] - wm3, k]
                    else:
                        code[ncell] = b + q
                        start[ncell] = pos
                        fill[ncell] = pos
                        seg[ncell] = k
                        pos += k
                        lox[ncell], hix[ncell], loy[ncell], hiy[ncell] = lo3[cx], hi3[cx], lo3[cy], hi3[cy]
                        ncell += 1
        if ncell == 0:
            out_P[p] = acc
            continue
        for c in range(ncell):
            slot[code[c]] = c
        for i in range(n):  # the points of the live depth-3 cells, grouped by cell
            s = slot[px_N[xrow[i]] | py_N[yrow[i]]]
            if s >= 0:
                k = fill[s]
                xs[k] = xrow[i]
                ys[k] = yrow[i]
                fill[s] = k + 1
        for c in range(ncell):
            slot[code[c]] = -1
        d = 3
        while ncell > 0:
            if d + 1 >= n_depth:
                return 1
            wm, wm1 = wmin_D[d], wmin_D[d + 1]
            for c in range(ncell):  # quadrant counts, chi-square, uniform cells are leaves
                mx = (lox[c] + hix[c]) // 2
                my = (loy[c] + hiy[c]) // 2
                k0 = k1 = k2 = k3 = 0
                for k in range(start[c], start[c] + seg[c]):
                    q = 2 * np.int64(xs[k] >= mx) + np.int64(ys[k] >= my)
                    qs[k] = q
                    k0 += q == 0
                    k1 += q == 1
                    k2 += q == 2
                    k3 += q == 3
                cnt[c, 0] = k0
                cnt[c, 1] = k1
                cnt[c, 2] = k2
                cnt[c, 3] = k3
                m = seg[c]
                e = m / 4.0
                t0, t1, t2, t3 = k0 - e, k1 - e, k2 - e, k3 - e
                chi2 = (((t0 * t0 + t1 * t1) + t2 * t2) + t3 * t3) / e
                split[c] = chi2 > chi2_threshold
                if not split[c]:
                    acc += leaf_Dx2x2xN[d, hix[c] - lox[c] - wm, hiy[c] - loy[c] - wm, m]
            for c in range(ncell):  # the split cells' quadrants with <= 2 points are leaves
                if split[c]:
                    mx = (lox[c] + hix[c]) // 2
                    my = (loy[c] + hiy[c]) // 2
                    for q in range(4):
                        k = cnt[c, q]
                        if k <= 2:
                            wx = hix[c] - mx if q >= 2 else mx - lox[c]
                            wy = hiy[c] - my if q % 2 == 1 else my - loy[c]
                            acc += leaf_Dx2x2xN[d + 1, wx - wm1, wy - wm1, k]
            nnew = 0
            pos = 0
            for c in range(ncell):  # the live quadrants, in (cell, quadrant) order, and their points
                if not split[c]:
                    continue
                mx = (lox[c] + hix[c]) // 2
                my = (loy[c] + hiy[c]) // 2
                first = nnew
                for q in range(4):
                    k = cnt[c, q]
                    fq[q] = -1
                    if k > 2:
                        nstart[nnew] = pos
                        nseg[nnew] = k
                        fq[q] = pos
                        pos += k
                        nlox[nnew] = mx if q >= 2 else lox[c]
                        nhix[nnew] = hix[c] if q >= 2 else mx
                        nloy[nnew] = my if q % 2 == 1 else loy[c]
                        nhiy[nnew] = hiy[c] if q % 2 == 1 else my
                        nnew += 1
                if nnew == first:
                    continue
                for k in range(start[c], start[c] + seg[c]):
                    q = qs[k]
                    j = fq[q]
                    if j >= 0:
                        xs2[j] = xs[k]
                        ys2[j] = ys[k]
                        fq[q] = j + 1
            xs, xs2 = xs2, xs
            ys, ys2 = ys2, ys
            start, nstart = nstart, start
            seg, nseg = nseg, seg
            lox, nlox = nlox, lox
            hix, nhix = nhix, hix
            loy, nloy = nloy, loy
            hiy, nhiy = nhiy, hiy
            ncell = nnew
            d += 1
        out_P[p] = acc
    return 0


@functools.lru_cache(maxsize=16)
def _deep_tables(n: int):
    """For `_ap_deep_py` at n points: each rank's depth-3 Morton-prefix half (x on the odd bits, y on the even
    bits), the depth-2 and depth-3 interval bounds, the minimum interval width per depth 0..D and the leaf
    values [D + 1, 2, 2, n + 1] (widths at depth d are wmin[d] or wmin[d] + 1) computed by `_leaf_info`
    (numpy), so the kernel adds the same bits."""
    bin3, _, (lo3, hi3) = _interval_tree(n, 3)
    _, _, (lo2, hi2) = _interval_tree(n, 2)
    widths = _full_paths(n)[2]
    wmin = np.array([w.min() for w in widths], np.int64)
    assert all(w.max() - w.min() <= 1 for w in widths)
    shape = (wmin.size, 2, 2, n + 1)
    k = np.broadcast_to(np.arange(n + 1, dtype=np.float64), shape)
    wx = np.broadcast_to((wmin[:, None, None, None] + np.arange(2)[None, :, None, None]).astype(np.float64), shape)
    wy = np.broadcast_to((wmin[:, None, None, None] + np.arange(2)[None, None, :, None]).astype(np.float64), shape)
    leaf = np.ascontiguousarray(_leaf_info(k, wx, wy), np.float64)
    py = _spread_bits(bin3, 3)
    i64 = functools.partial(np.ascontiguousarray, dtype=np.int64)
    return i64(py << 1), i64(py), i64(lo2), i64(hi2), i64(lo3), i64(hi3), wmin, leaf


def _ap_deep(kernel, xr_RxN, yr_GxN, a_P, b_P, cell_pair, ix, iy, chi2_threshold: float) -> np.ndarray:
    """Leaf sums [P] below the live depth-2 cells (cell_pair sorted; pair p = (xr[a_P[p]], yr[b_P[p]])) by the
    compiled kernel: the values `_ap_level` + `_ap_sorted` give, bit for bit."""
    n = xr_RxN.shape[1]
    p = a_P.size
    cell_ptr = np.searchsorted(np.asarray(cell_pair, np.int64), np.arange(p + 1))
    ix, iy = np.asarray(ix, np.int64), np.asarray(iy, np.int64)
    m2 = (_spread_bits(ix, 2) << 1) | _spread_bits(iy, 2)
    out = np.empty(p, np.float64)
    err = kernel(xr_RxN, yr_GxN, np.asarray(a_P, np.int64), np.asarray(b_P, np.int64), cell_ptr, m2, ix, iy,
                 *_deep_tables(n), float(chi2_threshold), out)
    if err:
        raise ValueError("adaptive partitioning: rank vectors must be permutations of 0..N-1")
    return out

def adaptive_partition_mi_grid(xr_NxR: np.ndarray, yr_NxG: np.ndarray, *, chi2_threshold: float = CHI2_3DOF_P05,
                               max_points: int = 1 << 22) -> np.ndarray:
    """Adaptive-partitioning MI [R, G] of every (column of `xr_NxR`, column of `yr_NxG`) pair of rank vectors.

    The partition's intervals do not depend on the data (half-open halves of 0..N-1), so the top levels of
    every pair's tree come from rank-bin histograms, in three stages:

    1. every pair's 4 x 4 (depth-2) histogram from its 3 x 3 cumulative counts #(x < c_a, y < c_b) at the
       depth-2 cuts c -- one product of (cells x 3R) and (cells x 3G) indicator matrices, 9 multiply-adds
       per cell and pair instead of 64; integer counts < 2^24, exact in float32 whatever the BLAS or the
       chunk. Depths 1 and 2 of the tree follow (`_ap_top2`); a pair with no live depth-2 cell is done
       (about 95 % of independent pairs, e.g. the permutation null's);
    2. the pairs with a live depth-2 cell: each point's Morton code (its x and y paths through the fixed
       tree, interleaved); the counts of the codes' depth-3 prefixes give those cells' quadrants, and one
       level of `_ap_level`;
    3. the pairs still live at depth 3: their codes sorted once, after which every cell at every depth
       is a contiguous run and its quadrant counts come from binary searches (`_ap_sorted`), level by
       level, in (cell, quadrant) order with `_ap_level`'s arithmetic.

    With numba, stages 2-3 are one compiled loop per deep pair (`_ap_deep_py`, compiled once and cached on
    disk): the same cells visited in the same order with the same float operations, so the same bits (tested
    against the numpy stages).

    A pair's value depends only on its two rank vectors, never on the chunk or the other pairs (tested:
    same bits for every `max_points`). Equal to the plain recursion to rounding (the leaves are summed in
    another order); `adaptive_partition_mi` (one pair per column, from 8 x 8 histograms) agrees likewise.
    """
    xr_NxR, yr_NxG = np.asarray(xr_NxR), np.asarray(yr_NxG)
    if xr_NxR.ndim != 2 or yr_NxG.ndim != 2 or xr_NxR.shape[0] != yr_NxG.shape[0]:
        raise ValueError(f"rank matrices must be [N, R] and [N, G]; got {xr_NxR.shape} and {yr_NxG.shape}")
    (n, r), g = xr_NxR.shape, yr_NxG.shape[1]
    if n < 8:
        raise ValueError(f"adaptive partitioning needs at least 8 cells, got {n}")
    tree = _interval_tree(n, HIST_DEPTH)
    _, widths, (_, hi_B) = tree
    nb = 1 << HIST_DEPTH
    cuts_3 = hi_B[1:-1:2]  # the depth-2 interval ends below n: x in depth-2 bin <= a  <=>  x < cuts_3[a]
    xr_RxN = np.ascontiguousarray(xr_NxR.T)
    yr_GxN = np.ascontiguousarray(yr_NxG.T)
    below_Nx3 = (np.arange(n)[:, None] < cuts_3).astype(np.float32)  # per rank: the indicators x < c_a
    ux = below_Nx3[xr_NxR].reshape(n, -1)  # [N, R * 3]
    mi = np.empty((r, g), np.float64)
    depth = _full_paths(n)[0]
    sx_RxN = sy_GxN = None  # the rows' Morton halves, once some pair goes below depth 2
    chunk = max(1, max_points // (max(r, 1) * nb * nb))
    kernel = _deep_kernel()
    if kernel is not None:
        xr32_RxN, yr32_GxN = (np.ascontiguousarray(v, np.int32) for v in (xr_RxN, yr_GxN))
    for lo in range(0, g, chunk):
        hi = min(g, lo + chunk)
        gc = hi - lo
        uy = below_Nx3[yr_NxG[:, lo:hi]].reshape(n, -1)
        with _one_blas_thread():  # small products: on a busy shared machine BLAS threads make them 20x slower
            c = uy.T @ ux  # [3 Gc, 3 R]: pair (r, g) at rows 3g.., cols 3r..
        # Cumulative counts [4, 4, P] (pair p = r * gc + g - lo), the last row / column the known marginals.
        cum = np.empty((4, 4, r, gc), np.int32)  # sums of 0/1 below 2^24: exact in float32
        cum[:3, :3] = c.reshape(gc, 3, r, 3).transpose(3, 1, 2, 0)
        cum[3, :3] = cum[:3, 3] = cuts_3[:, None, None]
        cum[3, 3] = n
        acc, (cell_pair, ix, iy) = _ap_top2(cum.reshape(4, 4, -1), widths, chi2_threshold)
        if cell_pair.size and kernel is not None:  # the compiled deep trees: same visits, same bits
            deep, cell_pair = np.unique(cell_pair, return_inverse=True)
            pr, pg = np.divmod(deep, gc)
            acc[deep] += _ap_deep(kernel, xr32_RxN, yr32_GxN, pr, lo + pg, cell_pair, ix, iy, chi2_threshold)
        elif cell_pair.size:
            deep, cell_pair = np.unique(cell_pair, return_inverse=True)  # pair index r * gc + (g - lo)
            if sx_RxN is None:
                sx_RxN, sy_GxN = _morton_axes(n, xr_RxN, yr_GxN)
                # their depth-3 prefixes (6 bits) as bytes
                px_RxN, py_GxN = ((h >> (2 * (depth - 3))).astype(np.uint8) for h in (sx_RxN, sy_GxN))
            pr, pg = np.divmod(deep, gc)
            below = np.zeros(deep.size)
            m2 = (_spread_bits(ix, 2) << 1) | _spread_bits(iy, 2)  # the live cells' depth-2 Morton prefixes
            step = max(1, min(min(max_points, _DEEP_POINTS) // n, (1 << 31 >> (2 * depth)) - 1))
            for s0 in range(0, deep.size, step):  # chunks of deep pairs; their cells are contiguous
                s1 = min(deep.size, s0 + step)
                c0, c1 = np.searchsorted(cell_pair, [s0, s1])
                cp, cx, cy = cell_pair[c0:c1] - s0, ix[c0:c1], iy[c0:c1]
                a, b = pr[s0:s1], lo + pg[s0:s1]
                # Depth 3 from each pair's depth-3 Morton prefix counts; only pairs still live below are sorted.
                pre_PxN = (px_RxN[a] | py_GxN[b]).astype(np.int32)
                pre_PxN += (np.arange(s1 - s0, dtype=np.int32) * 64)[:, None]
                h3 = np.bincount(pre_PxN.ravel(), minlength=(s1 - s0) * 64).reshape(-1, 64)
                sub = below[s0:s1]  # a view: the leaves below depth 2 are added in place
                live, cix, ciy = _ap_level(sub, h3[cp[:, None], 4 * m2[c0:c1, None] + np.arange(4)], cp, cx, cy, 2,
                                           widths, chi2_threshold)
                cp = np.broadcast_to(cp[:, None], live.shape)[live]
                if cp.size:
                    still, row = np.unique(cp, return_inverse=True)
                    _ap_sorted(sub, sx_RxN[a[still]] | sy_GxN[b[still]], row, cix[live], ciy[live], 3,
                               chi2_threshold, acc_index=still)
            acc[deep] += below
        out = acc / n + np.log(n)
        mi[:, lo:hi] = out.reshape(r, gc)
    return mi


def adaptive_partition_mi_matrix(ranks_NxG: np.ndarray, regulator_idx: Sequence[int], *,
                                 chi2_threshold: float = CHI2_3DOF_P05, max_points: int = 1 << 22) -> np.ndarray:
    """MI [R, G] by adaptive partitioning between regulator columns and every gene (self pairs are 0)."""
    ranks_NxG = np.asarray(ranks_NxG)
    reg = np.asarray(regulator_idx, np.int64)
    mi = adaptive_partition_mi_grid(ranks_NxG[:, reg], ranks_NxG, chi2_threshold=chi2_threshold,
                                    max_points=max_points)
    mi[np.arange(reg.size), reg] = 0.0  # self pairs
    return mi
