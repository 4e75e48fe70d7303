"""Graphs for unseen cells: Bayesian integration of cell-type GRNs (GREmLN §4.2, eqs. 1-3).

A new cell's type is unknown (its label is never used), so its graph mixes the
per-type networks under a posterior over types:

- eq. 1: type c's network keeps edge e when Pr(e not in G_c | X_train, C=c) <= alpha.
  We read that exclusion probability from the network's `pvalue` column (ARACNe's
  consensus p-value: the chance the edge is there under the null of no edge); an
  edge absent from type c's network has exclusion probability 1.
- a k-nearest-neighbour classifier fitted only on training cells gives the posterior
  w_c(i) = Pr(C = c | x_i) (fraction of the k neighbours of each type, in the PCA
  space of log-normalised training expression);
- eq. 2: p_i(e) = sum_c w_c(i) Pr(e not in G_c | X_train, C = c);
- eq. 3: cell i's graph keeps e when p_i(e) <= alpha, restricted to the genes the cell
  is queried with (its expressed genes). A kept edge's weight is its posterior-mean
  weight sum_c w_c(i) mi_c(e) (mi_c = 0 where type c lacks the edge).

With a one-hot posterior on c, eq. 3 reduces to eq. 1 for type c.
`assign_networks` is the library entry point (used by `grn-jax grn assign`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np
import scipy.sparse as sp

from grn_jax.types import GeneNetwork

_BLOCK_ELEMS = 1 << 24  # cells x edges per vectorised block


@dataclasses.dataclass(frozen=True)
class EdgeExclusion:
    """Pr(e not in G_c | X_train, C=c) over the union of all types' edges.

    types [T]; regulator, target [E]; exclusion_TxE float64; weight_TxE float64
    (the type's `mi`, 0 where it lacks the edge).
    """

    types: np.ndarray
    regulator: np.ndarray
    target: np.ndarray
    exclusion_TxE: np.ndarray
    weight_TxE: np.ndarray
    report: dict


def edge_exclusion(networks: Mapping[str, GeneNetwork]) -> EdgeExclusion:
    """Stack the per-type networks' exclusion probabilities (`pvalue`) over their union of edges.

    A (regulator, target) pair listed twice in one network keeps its smallest p-value
    (counted in `report["duplicates"]`). p-values must lie in [0, 1].
    """
    if not networks:
        raise ValueError("edge_exclusion needs at least one cell-type network (got none)")
    types = np.array(sorted(str(t) for t in networks))
    keys, per_type = [], []
    for t in types:
        net = networks[t]
        p = np.asarray(net.pvalue, np.float64)
        bad = ~np.isfinite(p) | (p < 0) | (p > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"network {t!r}: edge {i} ({net.regulator[i]} -> {net.target[i]}) has pvalue {p[i]}; "
                             "exclusion probabilities must lie in [0, 1]")
        k = np.char.add(np.char.add(np.asarray(net.regulator).astype(str), "\t"), np.asarray(net.target).astype(str))
        keys.append(k)
        per_type.append((k, p, np.asarray(net.mi, np.float64)))
    union = np.unique(np.concatenate(keys)) if keys else np.zeros(0, str)
    excl = np.ones((len(types), len(union)))
    weight = np.zeros((len(types), len(union)))
    dups = {}
    for ti, (k, p, mi) in enumerate(per_type):
        pos = np.searchsorted(union, k)
        order = np.lexsort((p, pos))  # smallest p first within each pair
        pos_o = pos[order]
        first = np.ones(len(pos_o), bool)
        first[1:] = pos_o[1:] != pos_o[:-1]
        excl[ti, pos_o[first]] = p[order][first]
        weight[ti, pos_o[first]] = mi[order][first]
        dups[str(types[ti])] = int((~first).sum())
    split = np.char.partition(union.astype(str), "\t")
    return EdgeExclusion(types, split[:, 0], split[:, 2], excl, weight,
                         {"edges_union": int(len(union)), "duplicates": dups,
                          "edges_per_type": {str(t): int(len(k)) for t, (k, _, _) in zip(types, per_type)}})


def integrate_exclusion(posterior_NxT: np.ndarray, exclusion_TxE: np.ndarray) -> np.ndarray:
    """eq. 2: p_i(e) = sum_c w_c(i) Pr(e not in G_c); float64 [N, E]."""
    w = np.asarray(posterior_NxT, np.float64)
    if w.ndim != 2 or w.shape[1] != exclusion_TxE.shape[0]:
        raise ValueError(f"posterior has shape {w.shape}, expected [N, {exclusion_TxE.shape[0]}] (one column per type)")
    if np.any(w < 0) or not np.allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-9):
        raise ValueError("each posterior row must be non-negative and sum to 1")
    return w @ exclusion_TxE


class KnnTypePosterior:
    """Empirical posterior over cell types from the k nearest training cells (sklearn).

    Fitted on training features only; `posterior` returns the fraction of each type
    among a query's k neighbours, columns ordered as `types`.
    """

    def __init__(self, train_features, train_labels: Sequence, *, k: int = 15, types: Optional[Sequence[str]] = None):
        from sklearn.neighbors import KNeighborsClassifier

        labels = np.asarray(train_labels).astype(str)
        feats = np.asarray(train_features, np.float64)
        if feats.ndim != 2 or len(feats) != len(labels):
            raise ValueError(f"train_features {feats.shape} and train_labels ({len(labels)}) must have one row per cell")
        if k < 1 or k > len(labels):
            raise ValueError(f"k={k} must be between 1 and the number of training cells ({len(labels)})")
        self.types = np.array(sorted(set(labels))) if types is None else np.asarray(types).astype(str)
        unknown = sorted(set(labels) - set(self.types))
        if unknown:
            raise ValueError(f"training labels {unknown[:5]} are not among the types {self.types[:10].tolist()}")
        self.k = k
        self._clf = KNeighborsClassifier(n_neighbors=k).fit(feats, labels)

    def posterior(self, features) -> np.ndarray:
        proba = self._clf.predict_proba(np.asarray(features, np.float64))
        out = np.zeros((proba.shape[0], len(self.types)))
        out[:, np.searchsorted(self.types, self._clf.classes_)] = proba
        return out


class ExpressionEmbedding:
    """log1p(CP10k) then PCA, fitted on the training cells; queries are aligned to training genes by name.

    Test genes absent from training are ignored and training genes absent from the
    test data read as 0; both are counted in `report` of `transform`'s caller.
    """

    def __init__(self, train_x, train_genes: Sequence[str], *, n_components: int = 50, seed: int = 0):
        from sklearn.decomposition import PCA

        self.genes = np.asarray([str(g) for g in train_genes])
        if len(set(self.genes)) != len(self.genes):
            raise ValueError("train_genes contains duplicates")
        x = _lognorm(train_x, "training")
        n_comp = int(max(1, min(n_components, x.shape[0] - 1, x.shape[1] - 1)))
        self.pca = PCA(n_components=n_comp, svd_solver="arpack" if sp.issparse(x) else "full", random_state=seed)
        self.train_features = self.pca.fit_transform(x)

    def transform(self, x, genes: Sequence[str]) -> tuple[np.ndarray, dict]:
        genes = np.asarray([str(g) for g in genes])
        index = {g: i for i, g in enumerate(genes)}
        cols = np.array([index.get(g, -1) for g in self.genes])
        found = cols >= 0
        report = {"train_genes_missing_in_query": int((~found).sum()),
                  "query_genes_not_in_training": int(len(genes) - found.sum())}
        if found.mean() < 0.5:
            raise ValueError(f"only {int(found.sum())} of the {len(self.genes)} training genes are in the query data; "
                             "the kNN classifier would compare cells on different genes (check gene naming)")
        x = sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)
        sel = sp.csr_matrix((np.ones(found.sum()), (cols[found], np.flatnonzero(found))),
                            shape=(len(genes), len(self.genes)))
        aligned = x @ sel
        return self.pca.transform(_lognorm(aligned, "query")), report


def _lognorm(x, what: str):
    x = sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else np.asarray(x, np.float64)
    data = x.data if sp.issparse(x) else x
    if not np.all(np.isfinite(data)) or np.any(data < 0):
        raise ValueError(f"{what} expression has negative or non-finite values; pass raw counts")
    tot = np.asarray(x.sum(axis=1)).ravel()
    scale = np.divide(1e4, tot, out=np.zeros_like(tot), where=tot > 0)
    if sp.issparse(x):
        return (sp.diags(scale) @ x).log1p().tocsr()
    return np.log1p(x * scale[:, None])


class IntegratedNetworkSource:
    """`GraphSource` of eq. 3: per-cell graphs of unseen cells from their type posterior.

    posterior_NxT: one row per dataset cell (columns = `exclusion.types`);
    gene_names: the index space of queries (the tokenizer passes vocabulary tokens).
    """

    def __init__(self, exclusion: EdgeExclusion, posterior_NxT: np.ndarray, gene_names: Sequence[str], *,
                 alpha: float = 0.05, report: Optional[dict] = None):
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.exclusion = exclusion
        self.posterior = np.asarray(posterior_NxT, np.float64)
        integrate_exclusion(self.posterior[:1], exclusion.exclusion_TxE)  # validates shapes and rows
        names = [str(g) for g in gene_names]
        index = {g: i for i, g in enumerate(names)}
        if len(index) != len(names):
            raise ValueError("gene_names contains duplicates; pass unique gene names (e.g. the vocabulary tokens)")
        self.num_genes = len(names)
        src = np.array([index.get(g, -1) for g in exclusion.regulator], np.int64)
        dst = np.array([index.get(g, -1) for g in exclusion.target], np.int64)
        known = (src >= 0) & (dst >= 0)
        loops = known & (src == dst)
        keep = known & ~loops
        self._edge = np.flatnonzero(keep)
        self._src, self._dst = src[keep].astype(np.int32), dst[keep].astype(np.int32)
        self.report = {**(report or {}), "alpha": self.alpha, "edges_union": int(len(src)),
                       "edges_unknown_gene": int((~known).sum()), "self_loops_removed": int(loops.sum()),
                       "edges_usable": int(keep.sum())}

    def _check(self, cell_idx) -> np.ndarray:
        cell_idx = np.asarray(cell_idx, np.int64)
        n = len(self.posterior)
        if cell_idx.size and (cell_idx.min() < 0 or cell_idx.max() >= n):
            raise ValueError(f"cell {cell_idx[(cell_idx < 0) | (cell_idx >= n)][0]} is outside the {n} cells "
                             "this source has posteriors for")
        return cell_idx

    def kept_edges(self, cell_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p [C, E'], keep [C, E']) over the usable union edges, before restricting to genes."""
        w = self.posterior[self._check(cell_idx)]
        p = w @ self.exclusion.exclusion_TxE[:, self._edge]
        return p, p <= self.alpha

    def _blocks(self, n):
        step = max(1, _BLOCK_ELEMS // max(1, len(self._edge)))
        return range(0, n, step), step

    def cell_edges(self, cell_idx: np.ndarray, genes_CxG: sp.csr_matrix):
        from grn_jax.data.graph_source import CellEdges

        cell_idx = self._check(cell_idx)
        genes_CxG = sp.csr_matrix(genes_CxG, dtype=bool)
        rows_all, e_all, w_all = [], [], []
        starts, step = self._blocks(len(cell_idx))
        wt = self.exclusion.weight_TxE[:, self._edge]
        for s in starts:  # bounded memory; each block fully vectorised
            cells = cell_idx[s:s + step]
            marked = genes_CxG[s:s + step].toarray()
            _, keep = self.kept_edges(cells)
            keep &= marked[:, self._src] & marked[:, self._dst]
            r, e = np.nonzero(keep)
            rows_all.append(r + s)
            e_all.append(e)
            w_all.append(np.einsum("ct,tc->c", self.posterior[cells[r]], wt[:, e]))
        rows = np.concatenate(rows_all) if rows_all else np.zeros(0, np.int64)
        e = np.concatenate(e_all) if e_all else np.zeros(0, np.int64)
        ptr = np.zeros(len(cell_idx) + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=len(cell_idx)), out=ptr[1:])
        weights = np.concatenate(w_all) if w_all else np.zeros(0)
        return CellEdges(ptr, self._src[e], self._dst[e], weights.astype(np.float32))

    def cell_neighbours(self, cell_idx: np.ndarray, genes_CxG: sp.csr_matrix) -> sp.csr_matrix:
        cell_idx = self._check(cell_idx)
        genes_CxG = sp.csr_matrix(genes_CxG, dtype=bool)
        n_e = len(self._edge)
        to_dst = sp.csr_matrix((np.ones(n_e, np.float32), (np.arange(n_e), self._dst)), shape=(n_e, self.num_genes))
        to_src = sp.csr_matrix((np.ones(n_e, np.float32), (np.arange(n_e), self._src)), shape=(n_e, self.num_genes))
        out = []
        starts, step = self._blocks(len(cell_idx))
        for s in starts:
            marked = genes_CxG[s:s + step].toarray()
            _, keep = self.kept_edges(cell_idx[s:s + step])
            hit = (sp.csr_matrix((marked[:, self._src] & keep).astype(np.float32)) @ to_dst
                   + sp.csr_matrix((marked[:, self._dst] & keep).astype(np.float32)) @ to_src)
            out.append(hit.astype(bool))
        reach = sp.vstack(out, format="csr") if out else sp.csr_matrix(genes_CxG.shape, dtype=bool)
        return (reach > genes_CxG).tocsr()

    def cell_network(self, cell: int) -> GeneNetwork:
        """Cell `cell`'s integrated network over all genes (eq. 3), pvalue column = p_i(e)."""
        p, keep = self.kept_edges(np.array([cell]))
        e = self._edge[keep[0]]
        w = self.posterior[cell] @ self.exclusion.weight_TxE[:, e]
        return GeneNetwork(self.exclusion.regulator[e], self.exclusion.target[e], w, p[0][keep[0]],
                           {"method": "GREmLN Bayesian graph integration (eqs. 1-3)", "alpha": self.alpha,
                            "cell": int(cell), "posterior": dict(zip(self.exclusion.types.tolist(),
                                                                     self.posterior[cell].tolist()))})


def assign_networks(train_x, train_genes: Sequence[str], train_labels: Sequence, networks: Mapping[str, GeneNetwork],
                    query_x, query_genes: Sequence[str], *, k: int = 15, alpha: float = 0.05,
                    n_components: int = 50, vocab_genes: Optional[Sequence[str]] = None,
                    seed: int = 0) -> IntegratedNetworkSource:
    """Graphs for unseen (query) cells from per-type networks; no query label is used.

    train_x / query_x: raw counts (dense or CSR), columns named by train_genes /
    query_genes (aligned by name). train_labels: the training cells' types; `networks`
    maps type -> GeneNetwork (pvalue = exclusion probability). Returns a GraphSource
    over `vocab_genes` (default: query_genes) whose `.posterior` holds each query
    cell's type posterior and `.report` what was aligned, filtered and kept.
    """
    excl = edge_exclusion(networks)
    labels = np.asarray(train_labels).astype(str)
    if len(labels) != train_x.shape[0]:
        raise ValueError(f"train_labels has {len(labels)} entries for {train_x.shape[0]} training cells")
    no_net = sorted(set(labels) - set(excl.types))
    if no_net:
        raise ValueError(f"training cell types {no_net[:5]} have no network (networks for {excl.types[:10].tolist()}); "
                         "infer one per training type or relabel those cells")
    emb = ExpressionEmbedding(train_x, train_genes, n_components=n_components, seed=seed)
    knn = KnnTypePosterior(emb.train_features, labels, k=k, types=excl.types)
    feats, align = emb.transform(query_x, query_genes)
    post = knn.posterior(feats)
    report = {"k": k, "n_components": int(emb.pca.n_components_), "train_cells": int(len(labels)),
              "query_cells": int(query_x.shape[0]), "gene_alignment": align, "exclusion": excl.report,
              "mean_max_posterior": float(post.max(axis=1).mean()) if len(post) else 0.0,
              "types_without_training_cells": sorted(set(excl.types) - set(labels))}
    return IntegratedNetworkSource(excl, post, query_genes if vocab_genes is None else vocab_genes,
                                   alpha=alpha, report=report)


def integration_factory(train_x, train_genes: Sequence[str], train_labels: Sequence,
                        networks: Mapping[str, GeneNetwork], *, chunk_cells: int = 8192, **kwargs):
    """A `(vocab, counts) -> GraphSource` factory for `grn_jax.data.prepare(graph=...)` on query data.

    The query counts (a `grn_jax.data.ingest.CountsSource`) are read chunk by chunk;
    `kwargs` go to `assign_networks` (k, alpha, n_components, seed).
    """
    def build(vocab, counts) -> IntegratedNetworkSource:
        x = sp.vstack([block for _, block in counts.chunks(chunk_cells)], format="csr")
        return assign_networks(train_x, train_genes, train_labels, networks, x, counts.gene_names,
                               vocab_genes=vocab.tokens, **kwargs)

    return build
