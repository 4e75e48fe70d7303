"""Cell-specific GRNs (GRNFormer §3.1): AUCell scores thresholded by a two-Gaussian mixture.

For every cell type and regulon, a two-component Gaussian mixture is fitted to the
regulon's AUC over the type's cells (a batched 1-D EM, vectorised over regulons;
sklearn's GaussianMixture is the test oracle). The threshold is

- "bimodal": both components carry >= `min_weight` of the cells and are separated
  (Ashman's D = sqrt(2)|mu1 - mu2| / sqrt(s1^2 + s2^2) >= `min_separation`, 2 by
  default -- the usual criterion for a clean two-mode split): the point between the
  means where the weighted densities are equal, pi1 N(x|mu1,s1) = pi2 N(x|mu2,s2);
- "skewed": otherwise, the right tail mu + 2 sigma (the paper's rule): of the dominant
  component when one dominates (the other carries < `min_weight` of the cells), else of
  the mixture as a whole (its mean and standard deviation). Two overlapping components
  of comparable weight describe one skewed mode; mu + 2 sigma of the heavier one alone
  would sit inside the distribution (on a gamma-shaped AUC it marks ~30 % of the cells
  active instead of the right tail's ~5 %);
- "constant": the AUC does not vary in the type; threshold = that value.

A regulon is active in a cell when its AUC is strictly above the threshold, and the
cell's GRN keeps the edges of its type's network whose regulator is active.

New cells (`grn-jax embed` / `eval` of a hybrid checkpoint) are not refitted: their
AUCell scores are compared with the thresholds fitted in training
(`CellSpecificGRNs.thresholds_record`, saved in the prepared shards' summary and so
in every checkpoint's tokenisation record) by `apply_thresholds`, using the
thresholds of the type each new cell is *assigned* without its label (the argmax of
GREmLN's kNN type posterior, see `grn_jax.inference.graph_sources`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import scipy.sparse as sp

from grn_jax.graphs.aucell import Regulons, aucell, regulons_from_network
from grn_jax.types import GeneNetwork

BIMODAL, SKEWED, CONSTANT = "bimodal", "skewed", "constant"
POOLED = "__all__"


@dataclasses.dataclass(frozen=True)
class TwoGaussians:
    """Batched fit, components ordered by mean: arrays [R, 2] (weights, means, variances), converged [R]."""

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    converged: np.ndarray


def fit_two_gaussians(x_NxR: np.ndarray, *, max_iter: int = 500, tol: float = 1e-7,
                      reg_covar: float = 1e-6) -> TwoGaussians:
    """Maximum-likelihood two-component 1-D Gaussian mixture of every column, by EM.

    Initialised from a split at each column's median (component means = the two halves'
    means). `reg_covar` is relative: reg_covar * var(column) is added to each variance
    (sklearn adds an absolute reg_covar), so the fit is invariant to the AUC scale.
    A column stops when its mean log-likelihood changes by less than `tol`; converged
    columns drop out of the remaining iterations. Constant columns return two equal
    components with zero variance.
    """
    x = np.asarray(x_NxR, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a [N >= 2, R] matrix of values, got shape {x.shape}")
    n, r = x.shape
    col_var = x.var(axis=0)
    const = col_var <= 1e-300
    reg = reg_covar * np.where(const, 1.0, col_var)
    med = np.median(x, axis=0)
    low = x <= med
    # responsibility of component 0 (component 1 has 1 - resp0); [N, R]
    resp0 = np.where(low.all(axis=0) | (~low).all(axis=0), 0.5, low.astype(np.float64))
    w, mu, var = np.zeros((r, 2)), np.zeros((r, 2)), np.ones((r, 2))
    prev = np.full(r, -np.inf)
    converged = const.copy()
    tiny = 10 * np.finfo(np.float64).tiny
    for _ in range(max_iter):  # EM iterations, vectorised over the unconverged columns and all cells
        idx = np.flatnonzero(~converged)
        if len(idx) == 0:
            break
        xs, r0 = x[:, idx], resp0[:, idx]
        r1 = 1.0 - r0
        n0, n1 = r0.sum(axis=0) + tiny, r1.sum(axis=0) + tiny
        m0, m1 = (r0 * xs).sum(axis=0) / n0, (r1 * xs).sum(axis=0) / n1
        d0, d1 = (xs - m0) ** 2, (xs - m1) ** 2
        v0, v1 = (r0 * d0).sum(axis=0) / n0 + reg[idx], (r1 * d1).sum(axis=0) / n1 + reg[idx]
        w[idx, 0], w[idx, 1] = n0 / n, n1 / n
        mu[idx, 0], mu[idx, 1] = m0, m1
        var[idx, 0], var[idx, 1] = v0, v1
        l0 = np.log(n0 / n) - 0.5 * np.log(2 * np.pi * v0) - 0.5 * d0 / v0
        l1 = np.log(n1 / n) - 0.5 * np.log(2 * np.pi * v1) - 0.5 * d1 / v1
        hi = np.maximum(l0, l1)
        lse = hi + np.log1p(np.exp(-np.abs(l0 - l1)))
        resp0[:, idx] = np.exp(l0 - lse)
        ll = lse.mean(axis=0)
        converged[idx] = np.abs(ll - prev[idx]) < tol
        prev[idx] = ll
    order = np.argsort(mu, axis=1, kind="stable")
    w, mu, var = (np.take_along_axis(a, order, axis=1) for a in (w, mu, var))
    mu[const] = x[0, const][:, None]
    var[const] = 0.0
    w[const] = 0.5
    return TwoGaussians(weights=w, means=mu, variances=var, converged=converged)


def weighted_intersection(w: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """x in (mu1, mu2) with w1 N(x|mu1, var1) = w2 N(x|mu2, var2), NaN where none exists. Arrays [R, 2]."""
    w1, w2, m1, m2 = w[:, 0], w[:, 1], mu[:, 0], mu[:, 1]
    v1, v2 = var[:, 0], var[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = 0.5 / v2 - 0.5 / v1
        b = m1 / v1 - m2 / v2
        c = 0.5 * m2**2 / v2 - 0.5 * m1**2 / v1 + np.log(w1 / w2) + 0.5 * np.log(v2 / v1)
        linear = -c / b
        disc = b**2 - 4 * a * c
        sq = np.sqrt(disc)
        # numerically stable roots of a x^2 + b x + c
        q = -0.5 * (b + np.copysign(sq, b))
        r1, r2 = q / a, c / q
        small_a = np.abs(a) <= 1e-12 * np.maximum(np.abs(0.5 / v1), np.abs(0.5 / v2))
        inside = lambda t: np.isfinite(t) & (t > m1) & (t < m2)  # noqa: E731
        quad = np.where(inside(r1), r1, np.where(inside(r2), r2, np.nan))
        out = np.where(small_a, np.where(inside(linear), linear, np.nan), quad)
    return out


def gmm_thresholds(x_NxR: np.ndarray, *, min_weight: float = 0.05, min_separation: float = 2.0,
                   **fit_kwargs) -> tuple[np.ndarray, np.ndarray, TwoGaussians]:
    """Activity threshold and mode ("bimodal"/"skewed"/"constant") of every column; see module doc."""
    fit = fit_two_gaussians(x_NxR, **fit_kwargs)
    w, mu, var = fit.weights, fit.means, fit.variances
    const = np.all(var == 0.0, axis=1)
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        ashman = np.sqrt(2.0) * np.abs(mu[:, 1] - mu[:, 0]) / np.sqrt(var.sum(axis=1))
    cross = weighted_intersection(w, mu, var)
    bimodal = ~const & (w.min(axis=1) >= min_weight) & (ashman >= min_separation) & np.isfinite(cross)
    dom = np.argmax(w, axis=1)
    rows = np.arange(len(dom))
    dominated = w[rows, dom] >= 1.0 - min_weight
    mix_mu = np.sum(w * mu, axis=1)
    mix_sd = np.sqrt(np.maximum(np.sum(w * (var + mu**2), axis=1) - mix_mu**2, 0.0))
    skew_t = np.where(dominated, mu[rows, dom] + 2.0 * sd[rows, dom], mix_mu + 2.0 * mix_sd)
    threshold = np.where(const, mu[:, 0], np.where(bimodal, cross, skew_t))
    mode = np.where(const, CONSTANT, np.where(bimodal, BIMODAL, SKEWED))
    return threshold, mode, fit


@dataclasses.dataclass(frozen=True)
class TypeGRN:
    """One cell type's regulons, their thresholds, and which are active in each of its cells."""

    regulons: Regulons
    threshold_R: np.ndarray
    mode_R: np.ndarray  # str
    cells: np.ndarray  # int64 [C_t], dataset rows of the type's cells
    auc_CxR: np.ndarray  # float64 [C_t, R]
    active_CxR: np.ndarray  # bool [C_t, R]
    fitted_on: str  # the type itself, or POOLED when the type had too few cells


@dataclasses.dataclass(frozen=True)
class CellSpecificGRNs:
    """Per-type regulon activity for every cell of a dataset (rows in dataset order)."""

    networks: Mapping[str, GeneNetwork]
    types: Mapping[str, TypeGRN]
    cell_types: np.ndarray  # str [N]
    gene_names: np.ndarray  # str [G], the expression matrix's genes
    report: dict

    def active_regulons(self, cell: int) -> np.ndarray:
        """Names of the regulons active in dataset row `cell`."""
        t = self.types[str(self.cell_types[cell])]
        i = int(np.searchsorted(t.cells, cell))
        return t.regulons.names[t.active_CxR[i]]

    def thresholds_record(self) -> dict:
        """What new cells need to be scored like the training cells (JSON-able): per type, the regulon names,
        sizes, thresholds, modes and fit group, plus the AUCell parameters and the gene universe."""
        p = self.report.get("params", {})
        return {
            "version": 1, "top_fraction": float(p.get("top_fraction", 0.05)),
            "min_regulon_size": int(p.get("min_regulon_size", 2)), "n_genes": int(len(self.gene_names)),
            "gene_names_sha256": _names_digest(self.gene_names),
            "types": {t: {"regulons": g.regulons.names.tolist(), "sizes": g.regulons.sizes.tolist(),
                          "threshold": [float(x) for x in g.threshold_R], "mode": [str(m) for m in g.mode_R],
                          "fitted_on": g.fitted_on} for t, g in self.types.items()},
        }

    def cell_network(self, cell: int) -> GeneNetwork:
        """The cell's GRN over all genes: its type's edges whose regulator is active in it."""
        ctype = str(self.cell_types[cell])
        net = self.networks[ctype]
        keep = np.isin(np.asarray(net.regulator).astype(str), self.active_regulons(cell))
        return GeneNetwork(np.asarray(net.regulator)[keep], np.asarray(net.target)[keep],
                           np.asarray(net.mi)[keep], np.asarray(net.pvalue)[keep],
                           {**net.params, "cell_specific": {"cell": int(cell), "cell_type": ctype}})


def fit_cell_specific_grns(
    x_NxG, gene_names: Sequence[str], networks: Union[GeneNetwork, Mapping[str, GeneNetwork]],
    cell_types: Optional[Sequence] = None, *, top_fraction: float = 0.05, min_regulon_size: int = 2,
    min_cells: int = 20, min_weight: float = 0.05, min_separation: float = 2.0,
) -> CellSpecificGRNs:
    """AUCell + per-(type, regulon) GMM thresholds -> each cell's active regulons.

    x_NxG: counts or normalised expression (dense or CSR), columns = `gene_names`.
    networks: one network for every cell, or one per cell type (keys = type labels).
    cell_types: label per row (None: one group). A type with fewer than `min_cells`
    cells has its thresholds fitted on all cells pooled (counted in the report).
    """
    n = x_NxG.shape[0]
    gene_names = np.asarray([str(g) for g in gene_names])
    if x_NxG.shape[1] != len(gene_names):
        raise ValueError(f"expression has {x_NxG.shape[1]} genes but {len(gene_names)} gene_names were given")
    if n < 2:
        raise ValueError(f"need at least 2 cells to fit activity thresholds, got {n}")
    labels = np.full(n, POOLED) if cell_types is None else np.asarray(cell_types).astype(str)
    if len(labels) != n:
        raise ValueError(f"cell_types has {len(labels)} entries for {n} cells")
    present = sorted(np.unique(labels).tolist())
    if isinstance(networks, GeneNetwork):
        networks = {t: networks for t in present}
    missing = [t for t in present if t not in networks]
    if missing:
        raise ValueError(f"cell types {missing[:5]} have no network (networks given for {sorted(networks)[:5]}); "
                         "pass one network per type present, or a single GeneNetwork for all cells")
    x_csr = sp.csr_matrix(x_NxG) if sp.issparse(x_NxG) else np.asarray(x_NxG)
    types, report = {}, {"n_cells": int(n), "types": {}, "pooled_fallback": []}
    for t in present:  # loop over cell types; vectorised over cells and regulons within
        cells = np.flatnonzero(labels == t)
        regs = regulons_from_network(networks[t], gene_names, min_size=min_regulon_size)
        auc = aucell(x_csr[cells], regs, top_fraction=top_fraction)
        fitted_on = t
        fit_x = auc
        if len(cells) < min_cells:
            fitted_on = POOLED
            fit_x = aucell(x_csr, regs, top_fraction=top_fraction)
            report["pooled_fallback"].append(t)
        thr, mode, fit = gmm_thresholds(fit_x, min_weight=min_weight, min_separation=min_separation)
        active = auc > thr[None, :]
        types[t] = TypeGRN(regs, thr, mode, cells, auc, active, fitted_on)
        report["types"][t] = {
            "cells": int(len(cells)), "regulons": int(len(regs.names)), "regulon_report": regs.report,
            "fitted_on": fitted_on, "bimodal": int((mode == BIMODAL).sum()), "skewed": int((mode == SKEWED).sum()),
            "constant": int((mode == CONSTANT).sum()), "em_not_converged": int((~fit.converged).sum()),
            "mean_active_regulons_per_cell": float(active.sum(axis=1).mean()) if len(cells) else 0.0,
        }
    report["networks_without_cells"] = sorted(str(t) for t in networks if str(t) not in types)
    report["params"] = dict(top_fraction=top_fraction, min_regulon_size=min_regulon_size, min_cells=min_cells,
                            min_weight=min_weight, min_separation=min_separation)
    return CellSpecificGRNs(networks=dict(networks), types=types, cell_types=labels, gene_names=gene_names,
                            report=report)


def _names_digest(names) -> str:
    import hashlib

    return hashlib.sha256("\n".join(str(g) for g in names).encode()).hexdigest()


def apply_thresholds(x_NxG, gene_names: Sequence[str], networks: Mapping[str, GeneNetwork], record: dict,
                     cell_types: Sequence) -> CellSpecificGRNs:
    """Active regulons of new cells against training's thresholds (`thresholds_record`); nothing is refitted.

    x_NxG: the new cells over the training gene universe (`gene_names`, checked against
    the record); networks: the training networks by type (regulons are rebuilt from
    them and must match the record's names and sizes); cell_types: the type whose
    thresholds each cell is scored with (assigned without the cell's label).
    A regulon is active when the cell's AUC is strictly above its threshold.
    """
    gene_names = np.asarray([str(g) for g in gene_names])
    if len(gene_names) != record["n_genes"] or _names_digest(gene_names) != record["gene_names_sha256"]:
        raise ValueError(f"cell-specific thresholds were fitted over {record['n_genes']} other genes than the "
                         f"{len(gene_names)} given; score new cells over the training gene universe (the vocabulary)")
    if x_NxG.shape[1] != len(gene_names):
        raise ValueError(f"expression has {x_NxG.shape[1]} genes but {len(gene_names)} gene_names were given")
    labels = np.asarray(cell_types).astype(str)
    if len(labels) != x_NxG.shape[0]:
        raise ValueError(f"cell_types has {len(labels)} entries for {x_NxG.shape[0]} cells")
    unknown = sorted(set(labels) - set(record["types"]))
    if unknown:
        raise ValueError(f"cells assigned to types {unknown[:5]} that have no fitted thresholds (fitted: "
                         f"{sorted(record['types'])[:10]})")
    x_csr = sp.csr_matrix(x_NxG) if sp.issparse(x_NxG) else np.asarray(x_NxG)
    types, nets = {}, {}
    for t in sorted(set(labels)):  # loop over assigned types; vectorised over their cells and regulons
        rec = record["types"][t]
        if t not in networks:
            raise ValueError(f"no network for cell type {t!r}; pass the networks the checkpoint was trained with")
        regs = regulons_from_network(networks[t], gene_names, min_size=record["min_regulon_size"])
        if regs.names.tolist() != rec["regulons"] or regs.sizes.tolist() != rec["sizes"]:
            raise ValueError(f"cell type {t!r}: the network's regulons ({len(regs.names)}) differ from those the "
                             f"thresholds were fitted for ({len(rec['regulons'])}); pass the training networks")
        cells = np.flatnonzero(labels == t)
        auc = aucell(x_csr[cells], regs, top_fraction=record["top_fraction"])
        thr = np.asarray(rec["threshold"], np.float64)
        types[t] = TypeGRN(regs, thr, np.asarray(rec["mode"]), cells, auc, auc > thr[None, :], rec["fitted_on"])
        nets[t] = networks[t]
    report = {"n_cells": int(len(labels)), "assigned_types": {t: int(len(g.cells)) for t, g in types.items()},
              "mean_active_regulons_per_cell": {t: float(g.active_CxR.sum(axis=1).mean()) for t, g in types.items()},
              "params": {"top_fraction": record["top_fraction"], "min_regulon_size": record["min_regulon_size"]}}
    return CellSpecificGRNs(networks=nets, types=types, cell_types=labels, gene_names=gene_names, report=report)


class CellSpecificNetworkSource:
    """`GraphSource` (grn_jax.data.graph_source) of cell-specific GRNs, for `TokenBatch.cell_graph`.

    Each dataset row gets the edges of its type's network whose regulator is active
    in it (`fit_cell_specific_grns`), restricted to the genes it is queried with.
    `gene_names` are the index space of the queries (the pipeline passes the
    vocabulary tokens). Edges whose regulon was dropped (too small) are never active
    and are counted in `report`.
    """

    def __init__(self, grns: CellSpecificGRNs, gene_names: Sequence[str]):
        from grn_jax.data.graph_source import _gene_index, _index_network

        index = _gene_index(gene_names)
        self.num_genes = len(index)
        self.grns = grns
        self._names = np.asarray([str(g) for g in gene_names])
        self._types = sorted(grns.types)
        self._nets, self._reg_of_edge = [], []
        self.report = {"networks": {}, "edges_without_regulon": {}}
        if "params" in grns.report and "types" in grns.report:  # fitted here (not `apply_thresholds`)
            self.report["thresholds"] = grns.thresholds_record()
        for t in self._types:
            net = _index_network(grns.networks[t], index, self.num_genes, t)
            regs = grns.types[t].regulons.names
            reg_names = self._names[net.src]
            pos = np.searchsorted(regs, reg_names)
            ok = (pos < len(regs)) & (regs[np.minimum(pos, len(regs) - 1)] == reg_names)
            self._nets.append(net)
            self._reg_of_edge.append(np.where(ok, pos, -1))
            self.report["networks"][t] = net.report
            self.report["edges_without_regulon"][t] = int((~ok).sum())
        n = len(grns.cell_types)
        self._type_code = np.searchsorted(self._types, grns.cell_types)
        self._row_in_type = np.zeros(n, np.int64)
        for t in self._types:
            self._row_in_type[grns.types[t].cells] = np.arange(len(grns.types[t].cells))

    def _active_edges(self, code: int, cells: np.ndarray) -> np.ndarray:
        """bool [C, E_t]: which of type `code`'s edges are active in each of `cells`."""
        reg = self._reg_of_edge[code]
        act = self.grns.types[self._types[code]].active_CxR[self._row_in_type[cells]]
        return act[:, np.maximum(reg, 0)] & (reg >= 0)[None, :]

    def _check(self, cell_idx: np.ndarray) -> np.ndarray:
        cell_idx = np.asarray(cell_idx, np.int64)
        if cell_idx.size and (cell_idx.min() < 0 or cell_idx.max() >= len(self.grns.cell_types)):
            bad = cell_idx[(cell_idx < 0) | (cell_idx >= len(self.grns.cell_types))][0]
            raise ValueError(f"cell {bad} is outside the {len(self.grns.cell_types)} cells the GRNs were fitted on")
        return cell_idx

    def cell_edges(self, cell_idx: np.ndarray, genes_CxG: sp.csr_matrix):
        from grn_jax.data.graph_source import CellEdges, _edges_among

        cell_idx = self._check(cell_idx)
        genes_CxG = sp.csr_matrix(genes_CxG, dtype=bool)
        codes = self._type_code[cell_idx]
        rows_all, src_all, dst_all, w_all = [], [], [], []
        for code, net in enumerate(self._nets):  # loop over cell types, vectorised over cells
            members = np.flatnonzero(codes == code)
            if len(members) == 0 or len(net.src) == 0:
                continue
            rows, e = _edges_among(net, genes_CxG[members])
            reg = self._reg_of_edge[code][e]
            act = self.grns.types[self._types[code]].active_CxR[self._row_in_type[cell_idx[members[rows]]]]
            keep = (reg >= 0) & act[np.arange(len(rows)), np.maximum(reg, 0)]
            rows_all.append(members[rows[keep]])
            src_all.append(net.src[e[keep]])
            dst_all.append(net.dst[e[keep]])
            w_all.append(net.weight[e[keep]])
        return CellEdges.from_parts(genes_CxG.shape[0], rows_all, src_all, dst_all, w_all)

    def cell_neighbours(self, cell_idx: np.ndarray, genes_CxG: sp.csr_matrix) -> sp.csr_matrix:
        cell_idx = self._check(cell_idx)
        genes_CxG = sp.csr_matrix(genes_CxG, dtype=bool)
        codes = self._type_code[cell_idx]
        reach = sp.csr_matrix(genes_CxG.shape, dtype=np.float32)
        for code, net in enumerate(self._nets):
            members = np.flatnonzero(codes == code)
            if len(members) == 0 or len(net.src) == 0:
                continue
            marked = genes_CxG[members].toarray()
            act = self._active_edges(code, cell_idx[members])
            e_idx = np.arange(len(net.src))
            to_dst = sp.csr_matrix((np.ones(len(e_idx), np.float32), (e_idx, net.dst)), shape=(len(e_idx), self.num_genes))
            to_src = sp.csr_matrix((np.ones(len(e_idx), np.float32), (e_idx, net.src)), shape=(len(e_idx), self.num_genes))
            hit = (sp.csr_matrix((marked[:, net.src] & act).astype(np.float32)) @ to_dst
                   + sp.csr_matrix((marked[:, net.dst] & act).astype(np.float32)) @ to_src)
            sel = sp.csr_matrix((np.ones(len(members), np.float32), (members, np.arange(len(members)))),
                                shape=(genes_CxG.shape[0], len(members)))
            reach = reach + sel @ hit
        return (reach.astype(bool) > genes_CxG).tocsr()


def cell_specific_source(x_NxG, gene_names: Sequence[str], networks, cell_types=None, *,
                         vocab_genes: Optional[Sequence[str]] = None, **fit_kwargs) -> CellSpecificNetworkSource:
    """Fit cell-specific GRNs on a dataset and wrap them as a `GraphSource`.

    `vocab_genes` is the index space the tokenizer queries with (default: `gene_names`).
    """
    grns = fit_cell_specific_grns(x_NxG, gene_names, networks, cell_types, **fit_kwargs)
    return CellSpecificNetworkSource(grns, gene_names if vocab_genes is None else vocab_genes)


def cell_specific_factory(networks, cell_type_column: Optional[str] = None, *, chunk_cells: int = 8192,
                          **fit_kwargs):
    """A `(vocab, counts) -> GraphSource` factory for `grn_jax.data.prepare(cell_graph=...)`.

    Reads the opened counts (a `grn_jax.data.ingest.CountsSource`) chunk by chunk into
    one CSR matrix over the vocabulary's genes (the gene universe new cells are scored
    over at inference, `apply_thresholds`), fits the cell-specific GRNs on every row
    (QC happens later, in the pipeline, and only decides which rows are queried) and
    indexes them by the vocabulary; the source's report carries the thresholds.
    """
    def build(vocab, counts) -> CellSpecificNetworkSource:
        x = sp.vstack([vocab_gene_columns(block, vocab, counts.gene_names) for _, block in counts.chunks(chunk_cells)],
                      format="csr")
        labels = None
        if cell_type_column is not None:
            if cell_type_column not in counts.obs.columns:
                raise ValueError(f"cell_type_column={cell_type_column!r} is not an obs column "
                                 f"(columns: {list(counts.obs.columns)[:20]})")
            labels = np.asarray(counts.obs[cell_type_column]).astype(str)
        grns = fit_cell_specific_grns(x, vocab.genes, networks, labels, **fit_kwargs)
        return CellSpecificNetworkSource(grns, vocab.tokens)

    return build


def vocab_gene_columns(block, vocab, gene_names: Sequence[str]) -> sp.csr_matrix:
    """A CSR block re-indexed to the vocabulary's genes (`vocab.genes` order; specials and unknown genes dropped)."""
    from grn_jax.data.pipeline import _to_vocab_columns
    from grn_jax.types import GENE_SPECIAL_TOKENS

    ids = vocab.lookup(list(gene_names))
    return _to_vocab_columns(sp.csr_matrix(block), ids, len(vocab))[:, len(GENE_SPECIAL_TOKENS):].tocsr()
