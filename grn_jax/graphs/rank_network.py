"""Regulator -> gene networks from |Spearman| correlation, with ARACNe's DPI on top (`method="spearman"`).

Why not MI + permutation null + bootstrap consensus (`aracne.infer_network`)? On
counts simulated from known networks with realistic depth (benchmarks/bench_grn.py),
the copula-MI ranking that ARACNe thresholds is the Spearman ranking up to a
monotone map (AUPR within a few per cent), the consensus adds no signal, and the
permutation null + 20 bootstraps cost 20-100x the time. This method makes the
ranking itself the network, in one pass over the cells:

1. Spearman rho of every (regulator, gene) pair on mid-ranks of the expression
   (ranks of log1p CP10k = ranks of CP10k: normalisation is the caller's).
   Computed on *integer* centred doubled mid-ranks (2 r - (n - 1)) in float64:
   every product and partial sum is an integer below 2^53, so the result is
   exact and identical whatever the gene-chunk size or the BLAS thread count.
2. Two-sided p-values from t = rho sqrt((n - 2) / (1 - rho^2)) ~ t(n - 2) (as
   scipy.stats.spearmanr), Benjamini-Hochberg at `fdr` over all candidate pairs.
3. Optional DPI (`aracne.dpi_prune`) on the edges that passed, weighted by the
   Gaussian-equivalent MI -0.5 log(1 - rho^2) (monotone in |rho|); max/min only,
   so it is exact too.

The `mi` column holds that MI equivalent (nats, the edge weight) and `pvalue` the
raw t-test p-value; like ARACNe's MI, the weight carries no sign (params count
the negatively correlated edges).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from scipy import stats

from grn_jax.graphs import aracne
from grn_jax.graphs import mutual_info as mi_lib
from grn_jax.types import GeneNetwork

MAX_EXACT_CELLS = 200_000  # n^3 < 2^53: integer rank products stay exact in float64


def centred_ranks(x_NxG: np.ndarray) -> np.ndarray:
    """2 * mid-rank - (n - 1) per gene (float64 [N, G], integer-valued, column sums 0)."""
    n = x_NxG.shape[0]
    return 2.0 * mi_lib.rank_transform(x_NxG, ties="average") - (n - 1.0)


def spearman_matrix(x_NxG: np.ndarray, reg_idx: Sequence[int], *, chunk: int = 512) -> np.ndarray:
    """Spearman rho [R, G] between regulator columns `reg_idx` and every gene, `chunk` genes at a time.

    Exact (see module docstring), so any `chunk` gives the same bits. Genes with
    no variation get rho 0 with everything.
    """
    x_NxG = np.asarray(x_NxG)
    n, g = x_NxG.shape
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if n > MAX_EXACT_CELLS:
        raise ValueError(f"{n} cells: the exact rank correlation supports up to {MAX_EXACT_CELLS}; "
                         "subsample (AracneConfig.max_cells / --max-cells)")
    c_NxG = centred_ranks(x_NxG)
    reg_idx = np.asarray(reg_idx, np.int64)
    c_NxR = np.ascontiguousarray(c_NxG[:, reg_idx])
    ss_G = np.einsum("ng,ng->g", c_NxG, c_NxG)  # integer sums: exact
    s_RxG = np.empty((reg_idx.size, g))
    for lo in range(0, g, chunk):  # memory N x chunk beyond the ranks
        s_RxG[:, lo:lo + chunk] = c_NxR.T @ c_NxG[:, lo:lo + chunk]
    denom = np.sqrt(np.outer(ss_G[reg_idx], ss_G))
    rho = np.divide(s_RxG, denom, out=np.zeros_like(s_RxG), where=denom > 0)
    return np.clip(rho, -1.0, 1.0)


def spearman_pvalue(rho, n: int) -> np.ndarray:
    """Two-sided p-value of Spearman rho on n cells (t approximation with n - 2 dof)."""
    rho = np.abs(np.asarray(rho, np.float64))
    with np.errstate(divide="ignore"):
        t = rho * np.sqrt((n - 2.0) / np.maximum(1.0 - rho * rho, 1e-300))
    return 2.0 * stats.t.sf(t, n - 2)


def infer_rank_network(x_NxG: np.ndarray, genes: Sequence[str], regulators: Sequence[str],
                       config: aracne.AracneConfig = aracne.AracneConfig(), *, name: str = "") -> GeneNetwork:
    """|Spearman| network of one group of cells: BH at `config.fdr`, then DPI if `config.dpi`.

    Uses `config.fdr`, `dpi`, `dpi_tolerance`, `max_cells` (a seeded subsample),
    `min_informative_cells`, `block` (gene chunk) and `seed`; the MI estimator,
    null and bootstrap settings belong to `aracne.infer_network` and are not used.
    Raises EmptyNetworkError when no pair passes.
    """
    t0 = time.perf_counter()
    cfg = config
    label = name or "group"
    x_NxG, genes = aracne.check_group(x_NxG, genes, cfg.min_informative_cells, label)
    reg_idx, missing = aracne.resolve_regulators(genes, regulators)
    n_all = x_NxG.shape[0]
    if cfg.max_cells and n_all > cfg.max_cells:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(n_all, cfg.max_cells, replace=False))
        x_NxG = x_NxG[rows]
    n = x_NxG.shape[0]
    rho_RxG = spearman_matrix(x_NxG, reg_idx, chunk=cfg.block)
    cand_RxG = np.ones(rho_RxG.shape, bool)
    cand_RxG[np.arange(reg_idx.size), reg_idx] = False
    p_RxG = spearman_pvalue(rho_RxG, n)
    q = np.ones_like(p_RxG)
    q[cand_RxG] = stats.false_discovery_control(p_RxG[cand_RxG], method="bh")
    passed = cand_RxG & (q <= cfg.fdr) & (rho_RxG != 0)
    mi_RxG = np.where(passed, mi_lib.gaussian_mi_closed_form(np.clip(rho_RxG, -1 + 1e-12, 1 - 1e-12)), 0.0)
    n_passed = int(passed.sum())
    if n_passed == 0:
        raise aracne.EmptyNetworkError(
            f"{label}: no (regulator, gene) pair has a Spearman correlation significant at FDR {cfg.fdr} "
            f"({n} cells, {reg_idx.size} regulators, {len(genes)} genes); use more cells or a larger fdr")
    keep = aracne.dpi_prune(mi_RxG, reg_idx, cfg.dpi_tolerance) & passed if cfg.dpi else passed
    r_i, g_i = np.nonzero(keep)
    order = np.lexsort((g_i, -mi_RxG[r_i, g_i], r_i))  # per regulator, strongest first; ties by gene index
    r_i, g_i = r_i[order], g_i[order]
    gene_arr = np.asarray(genes, dtype=object)
    rho_kept = rho_RxG[r_i, g_i]
    params = {
        "method": "spearman", "fdr": cfg.fdr, "dpi": cfg.dpi, "dpi_tolerance": cfg.dpi_tolerance,
        "max_cells": cfg.max_cells, "min_informative_cells": cfg.min_informative_cells, "seed": cfg.seed,
        "name": name, "n_cells": int(n_all), "n_cells_used": int(n), "n_genes": len(genes),
        "n_regulators": int(reg_idx.size), "n_regulators_missing": len(missing),
        "regulators_missing_first": missing[:20], "edges_passing_fdr": n_passed, "n_edges": int(r_i.size),
        "min_abs_rho_passing": float(np.abs(rho_RxG[passed]).min()),
        "n_negative_edges": int((rho_kept < 0).sum()),
        "weight": "-0.5 log(1 - rho^2) (Gaussian-equivalent MI, nats)",
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return GeneNetwork(regulator=gene_arr[reg_idx[r_i]], target=gene_arr[g_i], mi=mi_RxG[r_i, g_i],
                       pvalue=p_RxG[r_i, g_i], params=params)
