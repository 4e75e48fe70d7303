"""AUCell: per-cell enrichment of each regulon among the cell's top-ranked genes.

Why: GRNFormer (§3.1) decides which regulons are active in a single cell from
their AUCell scores (Aibar et al. 2017). A regulon is a TF plus its targets.

Score of regulon R in cell c: rank the cell's genes by expression, highest first
(0-based rank r_g); with K = max(1, round(top_fraction * n_genes)) the recovery
curve counts regulon genes within the top t ranks, and its area up to K is
    area = sum_{g in R, r_g < K} (K - r_g);
AUC = area / (K * |R|), in [0, 1). Ties (notably the unexpressed genes) share the
average of (K - r)_+ over the ranks they span, so scores are exact and do not
depend on gene order. Per-cell rankings make the score invariant to library size:
counts and normalised values give the same AUC. Vectorised: one argsort per cell
block and one sparse matrix product for all regulons.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from grn_jax.types import GeneNetwork

_BLOCK_ELEMS = 1 << 22  # cells x genes per vectorised block (bounded memory)


@dataclasses.dataclass(frozen=True)
class Regulons:
    """Regulons over a gene list: `membership_GxR[g, r]` is True when gene g is in regulon r.

    `names[r]` is the regulon's TF. `report` counts regulons dropped for being
    smaller than `min_size` genes present, and edges whose genes are not in the list.
    """

    names: np.ndarray  # str [R]
    membership_GxR: sp.csc_matrix  # bool [G, R]
    report: dict

    @property
    def sizes(self) -> np.ndarray:
        return np.asarray(self.membership_GxR.sum(axis=0)).ravel().astype(np.int64)


def regulons_from_network(network: GeneNetwork, gene_names: Sequence[str], *, min_size: int = 2,
                          include_tf: bool = True) -> Regulons:
    """Regulons (TF + its targets) of `network`, restricted to `gene_names`.

    A regulon with fewer than `min_size` genes present is dropped and counted in
    `report["regulons_too_small"]`; edges with a gene absent from `gene_names` are
    counted in `report["edges_unknown_gene"]`. Raises ValueError if no regulon is left.
    """
    names = np.asarray([str(g) for g in gene_names])
    index = {g: i for i, g in enumerate(names)}
    if len(index) != len(names):
        raise ValueError("gene_names contains duplicates; pass unique gene names")
    reg = np.asarray(network.regulator).astype(str)
    tgt = np.asarray(network.target).astype(str)
    r_idx = np.array([index.get(g, -1) for g in reg], np.int64)
    t_idx = np.array([index.get(g, -1) for g in tgt], np.int64)
    tfs = np.unique(reg)
    tf_pos = np.searchsorted(tfs, reg)
    known_t = t_idx >= 0
    rows, cols = [t_idx[known_t]], [tf_pos[known_t]]
    if include_tf:
        tf_gene = np.array([index.get(g, -1) for g in tfs], np.int64)
        rows.append(tf_gene[tf_gene >= 0])
        cols.append(np.flatnonzero(tf_gene >= 0))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    m = sp.csc_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(len(names), len(tfs)), dtype=bool)
    sizes = np.asarray(m.sum(axis=0)).ravel()
    keep = sizes >= min_size
    report = {"regulons_in": int(len(tfs)), "regulons_kept": int(keep.sum()),
              "regulons_too_small": int((~keep).sum()), "min_size": int(min_size),
              "regulons_too_small_example": tfs[~keep][:5].tolist(),
              "edges_unknown_gene": int(((r_idx < 0) | (t_idx < 0)).sum())}
    if not keep.any():
        raise ValueError(f"no regulon has >= {min_size} genes among the {len(names)} given genes "
                         f"({len(tfs)} regulators in the network, {report['edges_unknown_gene']} edges name "
                         "unknown genes); check that the network and the data use the same gene symbols")
    return Regulons(names=tfs[keep], membership_GxR=m[:, keep].tocsc(), report=report)


def top_rank_credit(x_CxG: np.ndarray, k: int) -> np.ndarray:
    """(K - rank)_+ for every gene of every cell, ties sharing the average over their ranks.

    x_CxG: dense [C, G] expression. Returns float64 [C, G].
    """
    x = np.asarray(x_CxG)
    c, g = x.shape
    order = np.argsort(-x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    credit = np.maximum(k - np.arange(g, dtype=np.float64), 0.0)  # credit of each sorted position
    cum = np.concatenate([np.zeros((c, 1)), np.cumsum(np.broadcast_to(credit, (c, g)), axis=1)], axis=1)
    new = np.ones((c, g), bool)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    pos = np.arange(g)
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    end_flags = np.ones((c, g), bool)
    end_flags[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(end_flags, pos, g)[:, ::-1], axis=1)[:, ::-1] + 1
    mean_sorted = (np.take_along_axis(cum, end, axis=1) - np.take_along_axis(cum, start, axis=1)) / (end - start)
    out = np.empty((c, g), np.float64)
    np.put_along_axis(out, order, mean_sorted, axis=1)
    return out


def aucell(x_CxG, regulons: Regulons, *, top_fraction: float = 0.05) -> np.ndarray:
    """AUC [C, R] of every regulon in every cell (see module docstring).

    x_CxG: counts or normalised expression, dense or sparse, genes in the order the
    regulons were built with. Each cell's scores depend on that cell alone.
    """
    n_cells, n_genes = x_CxG.shape
    if regulons.membership_GxR.shape[0] != n_genes:
        raise ValueError(f"expression has {n_genes} genes but the regulons were built over "
                         f"{regulons.membership_GxR.shape[0]}; build them with this matrix's gene names")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    k = max(1, int(round(top_fraction * n_genes)))
    m = regulons.membership_GxR.astype(np.float64)
    denom = k * regulons.sizes.astype(np.float64)
    block = max(1, _BLOCK_ELEMS // max(n_genes, 1))
    out = np.empty((n_cells, m.shape[1]), np.float64)
    for start in range(0, n_cells, block):  # bounded memory; each block is fully vectorised
        xb = x_CxG[start:start + block]
        xb = xb.toarray() if sp.issparse(xb) else np.asarray(xb)
        if not np.all(np.isfinite(xb)):
            r, gcol = np.argwhere(~np.isfinite(xb))[0]
            raise ValueError(f"expression of cell {start + r}, gene {gcol} is {xb[r, gcol]}; AUCell needs finite values")
        credit = top_rank_credit(xb, k)
        out[start:start + block] = (credit @ m) / denom
    return out
