"""ARACNe-style network inference for one group of cells.

Pipeline (Margolin et al. 2006; ARACNe-AP, Lachmann et al. 2016; GREmLN A.1):

1. MI between every regulator and every gene (`mutual_info`), on ranks.
2. An MI threshold from a permutation null: MI of random (regulator, gene)
   pairs with the regulator's cells shuffled; the null's upper tail is fitted
   log-linearly (as ARACNe-AP does) so p-values far below 1/n_null extrapolate.
3. The data processing inequality: in every regulator triangle
   (r, r2, g) whose three edges passed the threshold, the weakest edge is
   removed -- edge (r, g) goes if MI(r, g) < min(MI(r, r2), MI(r2, g)).
   Computed as a (max, min) matrix product in JAX, blocked over regulators.
4. Bootstraps (cells resampled with replacement) -- or any list of
   subnetworks, e.g. one per cluster -- consolidated by edge recurrence
   under a binomial null (p0 = mean edge density), Benjamini-Hochberg at
   `fdr` (5 %) over every candidate pair.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from grn_jax.graphs import mutual_info as mi_lib
from grn_jax.types import GeneNetwork

ESTIMATORS = ("gaussian", "adaptive")


class EmptyNetworkError(ValueError):
    """No edge survived (threshold, DPI, consensus): raised instead of returning an empty network."""


@dataclasses.dataclass(frozen=True)
class AracneConfig:
    """Parameters of one ARACNe run; all of them are written into every network's params."""

    estimator: str = "gaussian"  # "gaussian" (copula, fast) or "adaptive" (ARACNe-AP partitioning)
    mi_pvalue: float = 1e-4  # per-edge MI significance against the permutation null
    n_bootstraps: int = 20  # 0 or 1 = one run on the cells as given
    fdr: float = 0.05  # consensus: Benjamini-Hochberg level over candidate pairs
    dpi: bool = True
    dpi_tolerance: float = 0.0  # remove (r,g) if MI(r,g) < (1 - tol) * min(MI(r,r2), MI(r2,g))
    n_null_pairs: int = 20_000
    null_tail_fraction: float = 0.05
    max_cells: Optional[int] = None  # subsample each run to this many cells (GREmLN: ~500 suffice)
    min_informative_cells: int = 5  # genes with fewer cells away from their median value have no usable MI
    seed: int = 0
    block: int = 512  # gene block of the copula MI matmul
    # Rank methods (pcor, spearman): a regulator with fewer edges after FDR + DPI keeps its strongest other
    # targets at nominal p <= 0.05 up to this many (small cell types, where BH over R x G pairs keeps ~none).
    min_edges_per_regulator: int = 3
    progress: bool = False

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"AracneConfig.estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not 0.0 < self.mi_pvalue < 1.0:
            raise ValueError(f"AracneConfig.mi_pvalue must be in (0, 1), got {self.mi_pvalue}")
        if not 0.0 < self.fdr < 1.0:
            raise ValueError(f"AracneConfig.fdr must be in (0, 1), got {self.fdr}")
        if self.n_bootstraps < 0:
            raise ValueError(f"AracneConfig.n_bootstraps must be >= 0, got {self.n_bootstraps}")
        if not 0.0 <= self.dpi_tolerance < 1.0:
            raise ValueError(f"AracneConfig.dpi_tolerance must be in [0, 1), got {self.dpi_tolerance}")
        if self.n_null_pairs < 100:
            raise ValueError(f"AracneConfig.n_null_pairs must be >= 100 for a tail fit, got {self.n_null_pairs}")
        if not 0.0 < self.null_tail_fraction <= 0.5:
            raise ValueError(f"AracneConfig.null_tail_fraction must be in (0, 0.5], got {self.null_tail_fraction}")
        if self.min_informative_cells < 1:
            raise ValueError(f"AracneConfig.min_informative_cells must be >= 1, got {self.min_informative_cells}")
        if self.min_edges_per_regulator < 0:
            raise ValueError(f"AracneConfig.min_edges_per_regulator must be >= 0, got {self.min_edges_per_regulator}")
        if self.max_cells is not None and self.max_cells < 8:
            raise ValueError(f"AracneConfig.max_cells must be >= 8 or None, got {self.max_cells}")

    def to_params(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("progress")
        return d


# ----------------------------------------------------------------------------- MI


def _mi_matrix(x_NxG: np.ndarray, reg_idx: np.ndarray, cfg: AracneConfig, rng: np.random.Generator,
               z_NxG: Optional[np.ndarray] = None, dense_GxN: Optional[np.ndarray] = None) -> np.ndarray:
    """MI [R, G] with the configured estimator; self pairs set to 0.

    A bootstrap resample can leave a rare gene (nearly) constant; its MI is 0 in
    that run (no edge), which the consensus then counts as an absence. `z_NxG` (copula scores) and
    `dense_GxN` (`mi_lib.dense_ranks`) are precomputed transforms of `x_NxG`, if given.
    """
    const_G = mi_lib.constant_columns(x_NxG, cfg.min_informative_cells)
    if cfg.estimator == "gaussian":
        z_NxG = mi_lib.copula_scores(x_NxG, allow_constant=True) if z_NxG is None else z_NxG
        mi_RxG = mi_lib.gaussian_copula_mi(z_NxG[:, reg_idx], z_NxG, block=cfg.block).astype(np.float64)
    else:
        ranks_NxG = mi_lib.rank_transform(x_NxG, ties="random", rng=rng, dense_GxN=dense_GxN)
        mi_RxG = mi_lib.adaptive_partition_mi_matrix(ranks_NxG, reg_idx)
    mi_RxG[np.arange(reg_idx.size), reg_idx] = 0.0
    mi_RxG[:, const_G] = 0.0
    mi_RxG[const_G[reg_idx], :] = 0.0
    return mi_RxG


# ----------------------------------------------------------------------------- null


@dataclasses.dataclass(frozen=True)
class MINull:
    """Permutation null of MI for one number of cells: empirical body, log-linear fitted tail."""

    samples: np.ndarray  # sorted null MI values
    tail_start: float  # MI where the fitted tail takes over
    tail_fraction: float
    intercept: float  # log P(MI > t) = intercept + slope * t  for t >= tail_start
    slope: float

    def pvalue(self, mi) -> np.ndarray:
        mi = np.asarray(mi, np.float64)
        k = self.samples.size
        emp = (k - np.searchsorted(self.samples, mi, side="left") + 1.0) / (k + 1.0)
        tail = np.exp(np.minimum(self.intercept + self.slope * mi, 0.0))
        return np.where(mi >= self.tail_start, np.minimum(tail, self.tail_fraction), emp)

    def threshold(self, pvalue: float) -> float:
        """The MI whose null p-value is `pvalue`."""
        if pvalue >= self.tail_fraction:
            return float(np.quantile(self.samples, 1.0 - pvalue))
        return float((np.log(pvalue) - self.intercept) / self.slope)


def permutation_null(x_NxG: np.ndarray, reg_idx: np.ndarray, cfg: AracneConfig, rng: np.random.Generator,
                     z_NxG: Optional[np.ndarray] = None, dense_GxN: Optional[np.ndarray] = None) -> MINull:
    """MI of >= `cfg.n_null_pairs` (permuted regulator, gene) pairs, as ARACNe-AP calibrates its threshold.

    Each round permutes the cells of up to sqrt(K) random regulators independently
    and pairs every one of them with up to K / that many random genes, so the
    copula null is one (regulators x cells) @ (cells x genes) product per round
    rather than a gather of K x N permuted values. `z_NxG`, `dense_GxN`: precomputed copula scores, dense
    ranks (`mi_lib.dense_ranks`) of `x_NxG`.
    """
    n, g = x_NxG.shape
    k = cfg.n_null_pairs
    k_r = int(min(reg_idx.size, np.ceil(np.sqrt(k))))
    k_g = int(min(g, np.ceil(k / k_r)))
    if cfg.estimator == "gaussian":
        z_NxG = mi_lib.copula_scores(x_NxG, allow_constant=True) if z_NxG is None else z_NxG
    else:
        ranks_NxG = mi_lib.rank_transform(x_NxG, ties="random", rng=rng, dense_GxN=dense_GxN)
    rounds, got = [], 0
    while got < k:  # usually one round; more only when regulators x genes < K
        regs = rng.choice(reg_idx, k_r, replace=False)
        genes = rng.choice(g, k_g, replace=False)
        perm_RxN = rng.permuted(np.broadcast_to(np.arange(n), (k_r, n)), axis=1)
        rounds.append((regs, genes, perm_RxN))
        got += int((regs[:, None] != genes[None, :]).sum())  # never a regulator with itself
    null = []
    if cfg.estimator == "gaussian":
        for regs, genes, perm_RxN in rounds:
            zr_RxN = z_NxG[perm_RxN, regs[:, None]].astype(np.float64)
            r_RxG = zr_RxN @ z_NxG[:, genes].astype(np.float64) / n
            null.append(mi_lib.gaussian_mi_closed_form(np.clip(r_RxG, -1 + 1e-12, 1 - 1e-12))[
                regs[:, None] != genes[None, :]])
    else:  # every round's permuted regulators against the union of their genes: one histogram product,
        # over the rows that reach the first K pairs only (the last round's other regulators are never used)
        need, used = k, []
        for regs, genes, perm_RxN in rounds:
            upto = np.cumsum((regs[:, None] != genes[None, :]).sum(axis=1))
            rows = min(regs.size, int(np.searchsorted(upto, need)) + 1)
            used.append((regs[:rows], genes, perm_RxN[:rows]))
            need -= int(upto[rows - 1])
        cols = np.unique(np.concatenate([genes for _, genes, _ in used]))
        xr_NxK = np.concatenate([ranks_NxG[perm_RxN, regs[:, None]].T for regs, _, perm_RxN in used], axis=1)
        mi_KxC = mi_lib.adaptive_partition_mi_grid(xr_NxK, ranks_NxG[:, cols])
        row = 0
        for regs, genes, _ in used:
            block = mi_KxC[row:row + regs.size][:, np.searchsorted(cols, genes)]
            null.append(block[regs[:, None] != genes[None, :]])
            row += regs.size
    return fit_null(np.concatenate(null)[:k], cfg.null_tail_fraction)


def fit_null(null_mi: np.ndarray, tail_fraction: float = 0.05) -> MINull:
    """Least-squares fit of log survival vs MI over the top `tail_fraction` of the null."""
    samples = np.sort(np.asarray(null_mi, np.float64))
    k = samples.size
    surv = (k - np.arange(k)) / k  # P(MI >= samples[i])
    m = max(10, int(round(tail_fraction * k)))
    tx, ty = samples[-m:], np.log(surv[-m:])
    slope, intercept = np.polyfit(tx, ty, 1)
    if not slope < 0:
        raise ValueError(f"the permutation null's tail is not decreasing (slope {slope:.3g}); "
                         f"too few cells or null pairs (n_null_pairs={k})")
    return MINull(samples=samples, tail_start=float(tx[0]), tail_fraction=float(m / k),
                  intercept=float(intercept), slope=float(slope))


# ----------------------------------------------------------------------------- DPI


@functools.partial(jax.jit, static_argnames=("batch",))
def _dpi_witness(mi_RxG: jax.Array, reg_idx: jax.Array, batch: int = 8) -> jax.Array:
    """witness[r, g] = max over regulators r2 of min(MI(r, r2), MI(r2, g)); `batch` rows at a time."""
    mi_RxR = mi_RxG[:, reg_idx]

    def row(a_R):
        return jnp.max(jnp.minimum(a_R[:, None], mi_RxG), axis=0)

    return jax.lax.map(row, mi_RxR, batch_size=batch)


_DPI_BATCH_ELEMS = 1 << 25  # rows per DPI step so that batch x R x G stays ~128 MiB of float32


def dpi_prune(mi_RxG: np.ndarray, reg_idx: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """Edges [R, G] surviving the data processing inequality.

    `mi_RxG` holds MI of edges that passed the threshold and 0 elsewhere
    (self pairs included). An edge is removed when some regulator r2 forms a
    triangle with it in which it is the weakest edge (strictly, after the
    tolerance). All removals are decided on the pre-DPI network (as ARACNe).
    """
    mi_RxG = np.asarray(mi_RxG, np.float32)
    (r, g), reg_idx = mi_RxG.shape, np.asarray(reg_idx)
    # Pad to buckets (one compile for similar sizes): padded rows/columns hold MI 0, i.e. no edge, and
    # padded regulators point at a padded (all-zero) column, so they witness nothing.
    r_pad, g_pad = mi_lib.bucket(r, minimum=8), mi_lib.bucket(g + 1)
    mi_pad = np.zeros((r_pad, g_pad), np.float32)
    mi_pad[:r, :g] = mi_RxG
    reg_pad = np.full(r_pad, g_pad - 1, np.int32)
    reg_pad[:r] = reg_idx
    batch = int(max(1, min(r_pad, _DPI_BATCH_ELEMS // (r_pad * g_pad))))
    witness = np.asarray(_dpi_witness(jnp.asarray(mi_pad), jnp.asarray(reg_pad), batch))[:r, :g]
    return (mi_RxG > 0) & ~(mi_RxG < (1.0 - tolerance) * witness)


# ----------------------------------------------------------------------------- consensus


@dataclasses.dataclass(frozen=True)
class Consensus:
    """Edges kept by recurrence across runs (mask [R, G]), their binomial p-values and mean MI."""

    keep_RxG: np.ndarray
    pvalue_RxG: np.ndarray
    mean_mi_RxG: np.ndarray
    support_RxG: np.ndarray
    p0: float


def consensus(edges_BxRxG: np.ndarray, mi_BxRxG: np.ndarray, candidates_RxG: np.ndarray, fdr: float = 0.05) -> Consensus:
    """Consolidate B subnetworks by edge recurrence under a binomial null, BH at `fdr`.

    Under the null every candidate pair appears in each run independently with
    the mean edge density p0, so its count ~ Binomial(B, p0); p-values of all
    candidate pairs (absent ones count, with p = 1) go through Benjamini-Hochberg.
    """
    edges_BxRxG = np.asarray(edges_BxRxG, bool) & candidates_RxG[None]
    return consensus_from_counts(edges_BxRxG.sum(axis=0), (np.asarray(mi_BxRxG) * edges_BxRxG).sum(axis=0),
                                 edges_BxRxG.shape[0], candidates_RxG, fdr)


def consensus_from_counts(support_RxG: np.ndarray, mi_sum_RxG: np.ndarray, n_runs: int, candidates_RxG: np.ndarray,
                          fdr: float = 0.05) -> Consensus:
    """`consensus` from running totals (edge counts and summed MI over runs): memory O(R x G), not O(B x R x G)."""
    b = int(n_runs)
    support = np.where(candidates_RxG, np.asarray(support_RxG, np.int64), 0)
    m = int(candidates_RxG.sum())
    p0 = float(support.sum()) / (b * m) if m else 0.0
    if p0 <= 0.0:
        raise EmptyNetworkError("every subnetwork is empty: no edge passed the MI threshold in any run; "
                                "lower mi_pvalue or use more cells")
    pval = np.where(support > 0, stats.binom.sf(support - 1, b, p0), 1.0)
    adj = np.ones_like(pval)
    adj[candidates_RxG] = stats.false_discovery_control(pval[candidates_RxG], method="bh")
    keep = candidates_RxG & (support > 0) & (adj <= fdr)
    mean_mi = np.where(support > 0, np.asarray(mi_sum_RxG, np.float64) / np.maximum(support, 1), 0.0)
    return Consensus(keep, pval, mean_mi, support, p0)


# ----------------------------------------------------------------------------- one network


def _single_run(x_NxG, reg_idx, threshold, cfg, rng, z_NxG=None, dense_GxN=None):
    mi_RxG = _mi_matrix(x_NxG, reg_idx, cfg, rng, z_NxG, dense_GxN)
    passed = mi_RxG >= threshold
    kept = dpi_prune(np.where(passed, mi_RxG, 0.0), reg_idx, cfg.dpi_tolerance) if cfg.dpi else passed
    return mi_RxG, passed, kept


def resolve_regulators(genes: Sequence[str], regulators: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Indices of the regulators present in `genes` and the names that are missing; error if none are present."""
    genes = [str(g) for g in genes]
    pos = {g: i for i, g in enumerate(genes)}
    regs = list(dict.fromkeys(str(r) for r in regulators))
    if not regs:
        raise ValueError("the regulator list is empty; pass transcription factors (e.g. grn_jax.resources.human_tfs())")
    missing = [r for r in regs if r not in pos]
    idx = np.array([pos[r] for r in regs if r in pos], np.int64)
    if idx.size == 0:
        raise ValueError(f"none of the {len(regs)} regulators is among the {len(genes)} genes of the data "
                         f"(first regulators: {regs[:5]}, first genes: {genes[:5]}); check the gene naming "
                         "(symbols vs Ensembl ids) or pass a regulator list matching var_names")
    return idx, missing


def check_group(x_NxG: np.ndarray, genes: Sequence[str], min_informative_cells: int,
                name: str) -> tuple[np.ndarray, list[str]]:
    """(x as an array, genes as str) after the checks every network method needs: shape, unique names,
    finite values, >= 8 cells, every gene informative in >= `min_informative_cells` cells."""
    genes = [str(g) for g in genes]
    x_NxG = np.asarray(x_NxG)
    if x_NxG.ndim != 2 or x_NxG.shape[1] != len(genes):
        raise ValueError(f"expression has shape {x_NxG.shape} but {len(genes)} gene names were given")
    if len(set(genes)) != len(genes):
        dup = [g for g in dict.fromkeys(genes) if genes.count(g) > 1][:5]
        raise ValueError(f"gene names must be unique; duplicated: {dup}")
    mi_lib.check_expression(x_NxG, genes)
    if x_NxG.shape[0] < 8:
        raise ValueError(f"{name}: {x_NxG.shape[0]} cells; network inference needs at least 8 "
                         "(use more cells or a fallback)")
    mi_lib._check_not_constant(x_NxG, genes, name, min_informative_cells)
    return x_NxG, genes


def infer_network(x_NxG: np.ndarray, genes: Sequence[str], regulators: Sequence[str],
                  config: AracneConfig = AracneConfig(), *, name: str = "") -> GeneNetwork:
    """ARACNe network of one group of cells: threshold, DPI, bootstrap consensus.

    `x_NxG` is expression (counts or normalised; only ranks matter) of N cells.
    Genes must be finite and informative in >= `min_informative_cells` cells
    (ValueError names offenders; `constant_columns(x, k)` finds them).
    Returns edges regulator -> target with the run-averaged MI and the
    consensus p-value (the MI null p-value when there are no bootstraps);
    `params` records the config, counts and the MI threshold.
    """
    t0 = time.perf_counter()
    cfg = config
    x_NxG, genes = check_group(x_NxG, genes, cfg.min_informative_cells, name or "infer_network")
    n = x_NxG.shape[0]
    reg_idx, missing = resolve_regulators(genes, regulators)
    rng = np.random.default_rng(cfg.seed)
    n_run = min(n, cfg.max_cells) if cfg.max_cells else n

    def sample(bootstrap: bool):
        if bootstrap:
            return x_NxG[rng.integers(0, n, n_run)]
        return x_NxG[rng.choice(n, n_run, replace=False)] if n_run < n else x_NxG

    runs = max(1, cfg.n_bootstraps)
    null_x = sample(False)
    null_z = mi_lib.copula_scores(null_x, allow_constant=True) if cfg.estimator == "gaussian" else None
    null_dense = mi_lib.dense_ranks(null_x) if cfg.estimator == "adaptive" and runs == 1 else None
    null = permutation_null(null_x, reg_idx, cfg, rng, null_z, null_dense)
    threshold = null.threshold(cfg.mi_pvalue)
    candidates = np.ones((reg_idx.size, len(genes)), bool)
    candidates[np.arange(reg_idx.size), reg_idx] = False

    support = np.zeros(candidates.shape, np.int32)  # running totals: memory O(R x G) whatever the run count
    mi_sum = np.zeros(candidates.shape, np.float64)
    n_passed, n_kept = [], []
    it = range(runs)
    if cfg.progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"ARACNe {name}".strip(), unit="run")
    for _ in it:
        if runs > 1:
            mi_RxG, passed, kept = _single_run(sample(True), reg_idx, threshold, cfg, rng)
        else:  # one run on the cells as given: reuse the null's scores
            mi_RxG, passed, kept = _single_run(null_x, reg_idx, threshold, cfg, rng, null_z, null_dense)
        kept &= candidates
        support += kept
        mi_sum += np.where(kept, mi_RxG, 0.0)
        n_passed.append(int((passed & candidates).sum()))
        n_kept.append(int((kept & candidates).sum()))

    if runs > 1 and not support.any():
        raise EmptyNetworkError(
            f"{name or 'group'}: no edge passed the MI threshold {threshold:.4g} (p={cfg.mi_pvalue}) in any of "
            f"{runs} runs ({n} cells, {reg_idx.size} regulators, {len(genes)} genes); use more cells or a larger "
            "mi_pvalue")
    if runs > 1:
        cons = consensus_from_counts(support, mi_sum, runs, candidates, cfg.fdr)
        keep, pval, mi_val = cons.keep_RxG, cons.pvalue_RxG, cons.mean_mi_RxG
        extra = {"consensus_p0": cons.p0, "consensus_method": "binomial recurrence, Benjamini-Hochberg"}
    else:
        keep, mi_val = support > 0, mi_sum
        pval = null.pvalue(mi_val)
        extra = {}
    if not keep.any():
        why = ""
        if runs > 1:
            why = (f"; the {runs}-run consensus has edge density p0={extra['consensus_p0']:.3g}, so even an edge "
                   f"found in every run has p={extra['consensus_p0'] ** runs:.3g}: use more bootstraps")
        raise EmptyNetworkError(
            f"{name or 'group'}: the network is empty ({n} cells, {reg_idx.size} regulators, {len(genes)} genes, "
            f"MI threshold {threshold:.4g} at p={cfg.mi_pvalue}, edges passing per run {n_passed}{why}). "
            "Use more cells, a larger mi_pvalue or more genes")
    r_i, g_i = np.nonzero(keep)
    order = np.lexsort((-mi_val[r_i, g_i], r_i))
    r_i, g_i = r_i[order], g_i[order]
    gene_arr = np.asarray(genes, dtype=object)
    params = {
        "method": "aracne", **cfg.to_params(), **extra,
        "name": name, "n_cells": int(n), "n_cells_per_run": int(n_run), "n_genes": len(genes),
        "n_regulators": int(reg_idx.size), "n_regulators_missing": len(missing),
        "regulators_missing_first": missing[:20], "mi_threshold": float(threshold),
        "edges_passing_threshold_per_run": n_passed, "edges_after_dpi_per_run": n_kept,
        "n_edges": int(r_i.size), "seconds": round(time.perf_counter() - t0, 3),
    }
    return GeneNetwork(regulator=gene_arr[reg_idx[r_i]], target=gene_arr[g_i],
                       mi=mi_val[r_i, g_i].astype(np.float64), pvalue=np.asarray(pval)[r_i, g_i].astype(np.float64),
                       params=params)
