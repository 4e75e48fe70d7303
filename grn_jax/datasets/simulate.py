"""A GRN-driven single-cell count simulator with cell types and gene knockouts.

Why: no Perturb-seq data can be installed here, yet edge recovery and perturbation
tasks need data whose regulatory network is known. `simulate` draws a random,
sparse, signed TF -> target network and samples counts from it.

Model (vectorised over cells; Python loops run only over the 3 network levels, fixed-size
cell blocks, and genes while the network is drawn):

1. Network. `n_tfs` of the genes are TFs. A third of them (at least two per cell type,
   at most n_tfs - 1) are *master* TFs (level 0) whose activity is
   set by the cell type; the other TFs (level 1) are regulated by 1-2 masters; of the
   non-TF genes a fraction `unregulated_fraction` has no regulator, the rest
   (level 2) have 1-4 TF regulators chosen with probability ~ 1/rank**hub_exponent,
   so a few hub TFs regulate many genes. Each edge has a strength |w| ~ U(1, 3) and
   is a repression with probability `repression_fraction`.
2. Expression (steady state, degradation rate 1, Hill kinetics). Masters sit at an
   ON (4) or OFF (1) level given by the cell type's programme. Every other gene i:
       x_i = s_i * (b_i + sum_{j act} |w_ij| h_j + sum_{j rep} |w_ij| (1 - h_j)) * eps_i
   with h_j = x_j^n / (K_j^n + x_j^n), K_j the geometric midpoint of regulator j's
   noise-free levels across cell types, s_i ~ LogNormal(0, 1.2) a gene scale,
   b_i ~ U(0.1, 0.5) a basal rate and eps ~ LogNormal(0, intrinsic_noise) intrinsic
   noise that propagates downstream (what makes edges recoverable from data).
   A knocked-out gene is set to exactly 0 before its targets are computed.
3. Technical noise. Library sizes L_c ~ mean_library_size * LogNormal(0,
   library_size_sd); counts ~ Poisson(L_c * x_ci / sum_i x_ci); each non-zero count is
   then dropped with probability dropout / (1 + lambda_ci) (low means drop more).

Everything is drawn from `numpy.random.Generator`s seeded from `seed`, in fixed-size
cell chunks, so the result is a pure function of the arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from grn_jax.types import GeneNetwork

_CHUNK = 4096  # cells per vectorised block; fixed so results do not depend on it
_MASTER_ON, _MASTER_OFF = 4.0, 1.0  # moderate contrast keeps Hill responses sensitive
CONTROL = "control"


@dataclasses.dataclass(frozen=True)
class SimulatedData:
    """Simulated counts and the network that generated them.

    adata: CSR int32 counts in X; var_names "G0001"...; var["is_tf"], var["level"]
        (0 master TF, 1 regulated TF, 2 regulated gene, -1 unregulated gene),
        var["n_targets"]; obs["cell_type"], obs["perturbation"] (KO gene or "control"),
        obs["library_size"]; uns["simulation"] holds the arguments.
    network: ground truth in the ARACNe format. `mi` holds the absolute regulatory
        strength |w| (a valid non-negative edge weight); `pvalue` is 0 for every true
        edge. The sign is in `sign` (row-aligned); `signed_weights` = sign * mi.
    sign: int8 [E], +1 activation, -1 repression.
    programmes: bool [n_cell_types, n_masters], which master TFs each type switches on;
        `master_tfs` names the columns.
    """

    adata: ad.AnnData
    network: GeneNetwork
    sign: np.ndarray
    programmes: np.ndarray
    master_tfs: np.ndarray

    @property
    def signed_weights(self) -> np.ndarray:
        return self.sign.astype(np.float64) * np.asarray(self.network.mi, np.float64)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _sparse_signed(n_src, n_dst, src, dst, w) -> sp.csr_matrix:
    return sp.csr_matrix((w, (src, dst)), shape=(n_src, n_dst), dtype=np.float32)


def simulate(
    n_cells: int = 2000,
    n_genes: int = 500,
    n_tfs: int | None = None,
    n_cell_types: int = 3,
    knockouts: Union[int, Sequence[str]] = 3,
    knockout_fraction: float = 0.2,
    seed: int = 0,
    *,
    unregulated_fraction: float = 0.2,
    repression_fraction: float = 0.3,
    hub_exponent: float = 1.0,
    hill_n: float = 2.0,
    intrinsic_noise: float = 0.5,
    mean_library_size: float = 3000.0,
    library_size_sd: float = 0.3,
    dropout: float = 0.1,
) -> SimulatedData:
    """Simulate `n_cells` x `n_genes` integer counts from a random signed GRN.

    knockouts: an int k knocks out the k TFs with most targets; or a list of gene
        names. `knockout_fraction` of the cells are split evenly among them (the rest
        are "control"); knocked-out genes have exactly zero counts in their cells.
    See the module docstring for the generative model. Returns `SimulatedData`.
    """
    n_tfs = max(2, n_genes // 10) if n_tfs is None else n_tfs
    _check(n_cells >= 1, f"n_cells must be >= 1, got {n_cells}")
    _check(n_tfs >= 2, f"n_tfs must be >= 2 (masters and regulated TFs), got {n_tfs}")
    _check(n_genes > n_tfs, f"n_genes ({n_genes}) must exceed n_tfs ({n_tfs}): targets need genes")
    _check(n_cell_types >= 1, f"n_cell_types must be >= 1, got {n_cell_types}")
    for name, val in (("knockout_fraction", knockout_fraction), ("unregulated_fraction", unregulated_fraction),
                      ("repression_fraction", repression_fraction)):
        _check(0.0 <= val <= 1.0, f"{name} must be in [0, 1], got {val}")
    _check(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}")
    for name, val in (("intrinsic_noise", intrinsic_noise), ("library_size_sd", library_size_sd),
                      ("hub_exponent", hub_exponent)):
        _check(val >= 0.0, f"{name} must be >= 0, got {val}")
    _check(hill_n > 0 and mean_library_size > 0, "hill_n and mean_library_size must be > 0")

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    genes = np.array([f"G{i + 1:0{max(4, len(str(n_genes)))}d}" for i in range(n_genes)])
    perm = rng.permutation(n_genes)
    tf_idx = np.sort(perm[:n_tfs])
    n_master = min(n_tfs - 1, max(n_tfs // 3, 2 * n_cell_types, 1))
    _check(2 ** min(n_master, 30) - 1 >= n_cell_types,
           f"{n_cell_types} cell types need distinct programmes but only {n_master} master TFs exist; "
           f"raise n_tfs")
    tf_order = rng.permutation(tf_idx)
    masters, reg_tfs = np.sort(tf_order[:n_master]), np.sort(tf_order[n_master:])
    non_tf = np.setdiff1d(np.arange(n_genes), tf_idx)
    n_unreg = int(round(unregulated_fraction * len(non_tf)))
    shuffled = rng.permutation(non_tf)
    targets2 = np.sort(shuffled[n_unreg:])  # the first n_unreg stay unregulated

    # Hub preference: TF of rank r is chosen with probability ~ 1 / r**hub_exponent.
    hub_rank = rng.permutation(n_tfs)
    all_tfs = np.sort(tf_idx)
    p_hub = 1.0 / (hub_rank + 1.0) ** hub_exponent
    p_hub /= p_hub.sum()

    src, dst = [], []
    k1 = rng.integers(1, 3, size=len(reg_tfs))
    for t, k in zip(reg_tfs, k1):  # network construction, not per cell
        src.append(rng.choice(masters, size=min(k, n_master), replace=False))
        dst.append(np.full(min(k, n_master), t))
    k2 = np.minimum(1 + rng.poisson(1.0, size=len(targets2)), min(4, n_tfs))
    for t, k in zip(targets2, k2):
        src.append(rng.choice(all_tfs, size=k, replace=False, p=p_hub))
        dst.append(np.full(k, t))
    src = np.concatenate(src) if src else np.zeros(0, np.int64)
    dst = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    n_edges = len(src)
    strength = rng.uniform(1.0, 3.0, size=n_edges)
    sign = np.where(rng.random(n_edges) < repression_fraction, -1, 1).astype(np.int8)

    gene_scale = rng.lognormal(0.0, 1.2, size=n_genes)
    basal = rng.uniform(0.1, 0.5, size=n_genes)
    level = np.full(n_genes, -1, np.int8)
    level[masters], level[reg_tfs], level[targets2] = 0, 1, 2

    # Cell-type programmes: distinct non-empty subsets of the masters.
    programmes = np.zeros((n_cell_types, n_master), bool)
    seen = set()
    for c in range(n_cell_types):
        while True:
            row = rng.random(n_master) < 0.5
            if row.any() and row.tobytes() not in seen:
                break
        seen.add(row.tobytes())
        programmes[c] = row

    # Signed weights as a TF x gene sparse matrix (rows index positions in all_tfs).
    tf_pos = np.full(n_genes, -1)
    tf_pos[all_tfs] = np.arange(n_tfs)
    w_signed = _sparse_signed(n_tfs, n_genes, tf_pos[src], dst, sign * strength)
    rep_mass = np.asarray(_sparse_signed(n_tfs, n_genes, tf_pos[src], dst,
                                         np.where(sign < 0, strength, 0.0)).sum(axis=0)).ravel()
    offset = (basal + rep_mass).astype(np.float32)  # production = offset + h @ w_signed
    scale = gene_scale.astype(np.float32)
    master_level = np.where(programmes, _MASTER_ON, _MASTER_OFF) * gene_scale[masters]

    # Hill constants: geometric midpoint of each TF's noise-free levels across types.
    hill_k = np.ones(n_tfs, np.float32)
    hill_k[tf_pos[masters]] = np.sqrt(_MASTER_ON * _MASTER_OFF) * gene_scale[masters]
    x0 = np.zeros((n_cell_types, n_genes), np.float32)
    x0[:, masters] = master_level
    h0 = _hill(x0[:, all_tfs], np.where(level[all_tfs] == 0, hill_k, 1.0), hill_n)
    x0_l1 = (scale * (offset + (h0 * (level[all_tfs] == 0)) @ w_signed))[:, reg_tfs]
    hill_k[tf_pos[reg_tfs]] = np.sqrt(x0_l1.min(axis=0) * x0_l1.max(axis=0))

    # Knockouts.
    if isinstance(knockouts, (int, np.integer)):
        _check(0 <= knockouts <= n_tfs, f"knockouts={knockouts}: must be between 0 and n_tfs={n_tfs}")
        n_targets_tf = np.bincount(tf_pos[src], minlength=n_tfs)
        ko_idx = all_tfs[np.argsort(-n_targets_tf, kind="stable")[:knockouts]]
    else:
        names = list(knockouts)
        unknown = [g for g in names if g not in set(genes)]
        _check(not unknown, f"knockouts {unknown} are not simulated genes (names are {genes[0]}..{genes[-1]})")
        _check(len(set(names)) == len(names), f"knockouts contain duplicates: {names}")
        ko_idx = np.searchsorted(genes, names)
    n_ko_cells = int(round(knockout_fraction * n_cells)) if len(ko_idx) else 0

    # Per-cell assignments (global draws, independent of chunking).
    cell_type = rng.integers(0, n_cell_types, size=n_cells)
    ko_of_cell = np.full(n_cells, -1)
    if n_ko_cells:
        chosen = rng.permutation(n_cells)[:n_ko_cells]
        ko_of_cell[chosen] = ko_idx[np.arange(n_ko_cells) % len(ko_idx)]
    library = (mean_library_size * rng.lognormal(0.0, library_size_sd, size=n_cells)).astype(np.float32)

    blocks = []
    chunk_seeds = np.random.SeedSequence([seed, 1]).spawn((n_cells + _CHUNK - 1) // _CHUNK)
    is_master_col = (level[all_tfs] == 0)
    for b, ss in enumerate(chunk_seeds):  # memory-bounded blocks of cells, each fully vectorised
        lo, hi = b * _CHUNK, min(n_cells, (b + 1) * _CHUNK)
        blocks.append(_simulate_block(
            np.random.default_rng(ss), cell_type[lo:hi], ko_of_cell[lo:hi], library[lo:hi],
            n_genes=n_genes, masters=masters, reg_tfs=reg_tfs, all_tfs=all_tfs, is_master_col=is_master_col,
            master_level=master_level.astype(np.float32), hill_k=hill_k, hill_n=hill_n, w_signed=w_signed,
            offset=offset, scale=scale, intrinsic_noise=intrinsic_noise, dropout=dropout))
    counts = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, n_genes), dtype=np.int32)
    counts.sort_indices()

    type_names = np.array([f"type_{c}" for c in range(n_cell_types)])
    obs = pd.DataFrame({
        "cell_type": pd.Categorical(type_names[cell_type], categories=type_names),
        "perturbation": pd.Categorical(np.where(ko_of_cell >= 0, genes[np.maximum(ko_of_cell, 0)], CONTROL)),
        "library_size": library,
    }, index=[f"cell{i}" for i in range(n_cells)])
    n_targets = np.bincount(src, minlength=n_genes)
    var = pd.DataFrame({"is_tf": np.isin(np.arange(n_genes), all_tfs), "level": level,
                        "n_targets": n_targets.astype(np.int32)}, index=genes)
    args = dict(n_cells=n_cells, n_genes=n_genes, n_tfs=n_tfs, n_cell_types=n_cell_types,
                knockouts=[str(g) for g in genes[ko_idx]], knockout_fraction=knockout_fraction, seed=seed,
                unregulated_fraction=unregulated_fraction, repression_fraction=repression_fraction,
                hub_exponent=hub_exponent, hill_n=hill_n, intrinsic_noise=intrinsic_noise,
                mean_library_size=mean_library_size, library_size_sd=library_size_sd, dropout=dropout)
    adata = ad.AnnData(X=counts, obs=obs, var=var, uns={"simulation": dict(args)})
    network = GeneNetwork(
        regulator=genes[src], target=genes[dst], mi=strength.astype(np.float64),
        pvalue=np.zeros(n_edges), params={
            "method": "grn_jax.datasets.simulate (ground truth)", **args,
            "mi": "absolute regulatory strength |w|; sign in SimulatedData.sign (+1 act, -1 rep)"})
    return SimulatedData(adata=adata, network=network, sign=sign, programmes=programmes,
                         master_tfs=genes[masters])


def _dense_to_csr(d: np.ndarray) -> sp.csr_matrix:
    """CSR of a dense int matrix via one flatnonzero (faster than scipy's generic path)."""
    n, g = d.shape
    flat = np.flatnonzero(d)
    indptr = np.searchsorted(flat, np.arange(n + 1, dtype=np.int64) * g)
    return sp.csr_matrix((d.ravel()[flat], (flat % g).astype(np.int32), indptr), shape=(n, g))


def _hill(x, k, n):
    xn = np.power(np.maximum(x, 0.0), n)
    return xn / (np.power(k, n) + xn)


def _simulate_block(rng, cell_type, ko, library, *, n_genes, masters, reg_tfs, all_tfs, is_master_col,
                    master_level, hill_k, hill_n, w_signed, offset, scale, intrinsic_noise, dropout):
    """Counts for one block of cells (CSR int32): levels 0 -> 1 -> 2, then technical noise."""
    n = len(cell_type)
    rows = np.arange(n)
    has_ko = ko >= 0
    noise = np.exp(intrinsic_noise * rng.standard_normal((n, n_genes), dtype=np.float32))
    x = np.zeros((n, n_genes), np.float32)
    x[:, masters] = master_level[cell_type] * noise[:, masters]
    x[rows[has_ko], ko[has_ko]] = 0.0
    # Level 1: regulated TFs from the masters only.
    h = _hill(x[:, all_tfs], hill_k, hill_n) * is_master_col
    prod = (w_signed.T @ h.T).T + offset
    x[:, reg_tfs] = (scale * prod * noise)[:, reg_tfs]
    x[rows[has_ko], ko[has_ko]] = 0.0
    # Level 2 (and unregulated genes, whose production is the basal offset).
    h = _hill(x[:, all_tfs], hill_k, hill_n)
    prod = (w_signed.T @ h.T).T + offset
    rest = np.ones(n_genes, bool)
    rest[all_tfs] = False
    x[:, rest] = (scale * prod * noise)[:, rest]
    x[rows[has_ko], ko[has_ko]] = 0.0

    lam = x * (library / x.sum(axis=1))[:, None]
    counts = _dense_to_csr(rng.poisson(lam).astype(np.int32))
    if dropout > 0 and counts.nnz:
        r = np.repeat(np.arange(n), np.diff(counts.indptr))
        p = dropout / (1.0 + lam[r, counts.indices])
        counts.data[rng.random(counts.nnz) < p] = 0
        counts.eliminate_zeros()
    return counts


def simulate_to_dir(out_dir, *, overwrite: bool = False, **kwargs) -> dict:
    """Simulate (`simulate(**kwargs)`) and write OUT/data.h5ad, OUT/network.tsv (ground truth,
    mi = |w|, with its params), OUT/edge_signs.tsv (regulator, target, sign) and OUT/summary.json.

    Returns the summary (cells per type and perturbation, genes, TFs, edges, files).
    """
    import json
    import os

    from grn_jax.graphs.network_io import write_network

    paths = {name: os.path.join(out_dir, name) for name in ("data.h5ad", "network.tsv", "edge_signs.tsv",
                                                             "summary.json")}
    from grn_jax._io import atomic_path, atomic_write_text, check_out_dir

    check_out_dir(out_dir)
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]} exists; pass overwrite=True (--overwrite) or choose another output folder")
    sim = simulate(**kwargs)
    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(paths["data.h5ad"]) as tmp:
        sim.adata.write_h5ad(tmp)
    write_network(sim.network, paths["network.tsv"])
    with atomic_path(paths["edge_signs.tsv"]) as tmp:
        pd.DataFrame({"regulator": sim.network.regulator, "target": sim.network.target, "sign": sim.sign}).to_csv(
            tmp, sep="\t", index=False)
    obs = sim.adata.obs
    summary = {
        "cells": int(sim.adata.n_obs), "genes": int(sim.adata.n_vars), "tfs": int(sim.adata.var["is_tf"].sum()),
        "edges": int(sim.network.num_edges), "repressions": int((sim.sign < 0).sum()),
        "cells_per_type": {str(k): int(v) for k, v in obs["cell_type"].value_counts(sort=False).items()},
        "cells_per_perturbation": {str(k): int(v) for k, v in obs["perturbation"].value_counts(sort=False).items()},
        "nonzero_fraction": float(sim.adata.X.nnz / max(1, sim.adata.n_obs * sim.adata.n_vars)),
        "arguments": sim.adata.uns["simulation"], "files": paths,
    }
    atomic_write_text(paths["summary.json"], json.dumps(summary, indent=2, default=str))
    return summary
