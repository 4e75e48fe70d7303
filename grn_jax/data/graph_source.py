"""Where a cell's regulatory subgraph comes from: the `GraphSource` protocol and two sources.

The tokenizer asks a source, for a chunk of cells at once, which network edges
lie among each cell's genes. Sources work over *gene indices* (positions in the
`gene_names` they were built with; the pipeline passes the vocabulary tokens, so
a gene index is its vocabulary id). Two sources live here:

- `CellTypeNetworkSource`: one `GeneNetwork` per cell type (GREmLN, per-cell-type
  ARACNe networks);
- `SingleNetworkSource`: one network for every cell (e.g. a curated prior).

GRNFormer's cell-specific source (AUCell + GMM) implements the same protocol
elsewhere and feeds the optional `cell_graph` field.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import scipy.sparse as sp

from grn_jax.types import GeneNetwork


@dataclasses.dataclass(frozen=True)
class CellEdges:
    """Ragged per-cell edge lists over gene indices, CSR-style.

    Edges of chunk cell `i` are `src[ptr[i]:ptr[i+1]]` -> `dst[...]` with `weight[...]`,
    both ends among that cell's genes, no self-loops.
    """

    ptr: np.ndarray  # int64 [C + 1]
    src: np.ndarray  # int32 [N], gene index
    dst: np.ndarray  # int32 [N], gene index
    weight: np.ndarray  # float32 [N]

    def __post_init__(self):
        n = int(self.ptr[-1]) if len(self.ptr) else 0
        for name in ("src", "dst", "weight"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"CellEdges.{name} has {len(getattr(self, name))} entries, ptr[-1] says {n}")

    @property
    def num_cells(self) -> int:
        return len(self.ptr) - 1

    @staticmethod
    def empty(num_cells: int) -> "CellEdges":
        return CellEdges(np.zeros(num_cells + 1, np.int64), np.zeros(0, np.int32),
                         np.zeros(0, np.int32), np.zeros(0, np.float32))

    @staticmethod
    def from_parts(num_cells: int, rows, src, dst, weight) -> "CellEdges":
        """Assemble from lists of per-part arrays (row = chunk cell of each edge), grouped by cell.

        The sort is stable, so each cell keeps its edges in the order the parts gave them.
        """
        if not rows:
            return CellEdges.empty(num_cells)
        rows = np.concatenate(rows)
        order = np.argsort(rows, kind="stable")
        ptr = np.zeros(num_cells + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=num_cells), out=ptr[1:])
        return CellEdges(ptr, np.concatenate(src)[order].astype(np.int32),
                         np.concatenate(dst)[order].astype(np.int32),
                         np.concatenate(weight)[order].astype(np.float32))


@runtime_checkable
class GraphSource(Protocol):
    """A per-cell gene network, queried for a chunk of cells at once (vectorised)."""

    def cell_edges(self, cell_idx: np.ndarray, genes_CxG: sp.csr_matrix) -> CellEdges:
        """Edges among each cell's genes.

        cell_idx: int64 [C], the cells' row indices in the ingested dataset.
        genes_CxG: boolean CSR [C, G]; row i marks the genes that are tokens of cell i.
        """
        ...

    def cell_neighbours(self, cell_idx: np.ndarray, genes_CxG: sp.csr_matrix) -> sp.csr_matrix:
        """Boolean CSR [C, G]: genes adjacent (either direction) to a marked gene, not marked themselves."""
        ...


@dataclasses.dataclass(frozen=True)
class _IndexedNetwork:
    """A network mapped onto gene indices: deduplicated, self-loops removed."""

    src: np.ndarray  # int32 [E]
    dst: np.ndarray  # int32 [E]
    weight: np.ndarray  # float32 [E]
    adjacency: sp.csr_matrix  # bool [G, G], symmetrised
    report: dict


def _index_network(network: GeneNetwork, gene_index: Mapping[str, int], num_genes: int,
                   name: str) -> _IndexedNetwork:
    reg = np.asarray(network.regulator).astype(str)
    tgt = np.asarray(network.target).astype(str)
    weight = np.asarray(network.mi, dtype=np.float64)
    if not np.all(np.isfinite(weight)):
        bad = int(np.flatnonzero(~np.isfinite(weight))[0])
        raise ValueError(f"network {name!r}: edge {bad} ({reg[bad]} -> {tgt[bad]}) has non-finite weight "
                         f"{weight[bad]}; fix or drop that edge before building the graph source")
    if np.any(weight < 0):
        bad = int(np.flatnonzero(weight < 0)[0])
        raise ValueError(f"network {name!r}: edge {bad} ({reg[bad]} -> {tgt[bad]}) has negative weight "
                         f"{weight[bad]}; the Laplacian needs non-negative weights (use |weight|)")
    src = np.array([gene_index.get(g, -1) for g in reg], dtype=np.int64)
    dst = np.array([gene_index.get(g, -1) for g in tgt], dtype=np.int64)
    known = (src >= 0) & (dst >= 0)
    missing = np.unique(np.concatenate([reg[src < 0], tgt[dst < 0]]))
    loops = known & (src == dst)
    keep = known & ~loops
    src, dst, weight = src[keep], dst[keep], weight[keep]
    # Deduplicate (regulator, target) pairs deterministically: keep the largest weight.
    order = np.lexsort((-weight, dst, src))
    src, dst, weight = src[order], dst[order], weight[order]
    first = np.ones(len(src), bool)
    first[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    n_dup = int((~first).sum())
    src, dst, weight = src[first], dst[first], weight[first]
    adj = sp.csr_matrix((np.ones(2 * len(src), bool), (np.concatenate([src, dst]), np.concatenate([dst, src]))),
                        shape=(num_genes, num_genes), dtype=bool)
    report = {
        "edges_in": int(network.num_edges),
        "edges_kept": int(len(src)),
        "edges_unknown_gene": int((~known).sum()),
        "self_loops_removed": int(loops.sum()),
        "duplicates_removed": n_dup,
        "unknown_genes": int(len(missing)),
        "unknown_genes_example": missing[:5].tolist(),
    }
    return _IndexedNetwork(src.astype(np.int32), dst.astype(np.int32), weight.astype(np.float32), adj, report)


def _edges_among(net: _IndexedNetwork, genes_CxG: sp.csr_matrix, max_cells_x_edges: int = 1 << 25):
    """(row, edge) pairs with both edge ends marked in the row; rows processed in bounded blocks."""
    n_cells = genes_CxG.shape[0]
    n_edges = len(net.src)
    if n_cells == 0 or n_edges == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    block = max(1, max_cells_x_edges // n_edges)
    rows_out, edges_out = [], []
    for start in range(0, n_cells, block):  # bounded memory; each block is fully vectorised
        dense = genes_CxG[start:start + block].toarray()
        both = dense[:, net.src] & dense[:, net.dst]
        r, e = np.nonzero(both)
        rows_out.append(r + start)
        edges_out.append(e)
    return np.concatenate(rows_out), np.concatenate(edges_out)


def _gene_index(gene_names: Sequence[str]) -> dict[str, int]:
    names = [str(g) for g in gene_names]
    index = {g: i for i, g in enumerate(names)}
    if len(index) != len(names):
        raise ValueError("gene_names contains duplicates; pass unique gene names (e.g. the vocabulary tokens)")
    return index


class SingleNetworkSource:
    """The same network for every cell (e.g. a curated TF -> target prior)."""

    def __init__(self, network: GeneNetwork, gene_names: Sequence[str]):
        index = _gene_index(gene_names)
        self.num_genes = len(index)
        self._net = _index_network(network, index, self.num_genes, "network")
        self.report = {"network": self._net.report}

    def cell_edges(self, cell_idx: np.ndarray, genes_CxG: sp.csr_matrix) -> CellEdges:
        genes_CxG = sp.csr_matrix(genes_CxG, dtype=bool)
        rows, e = _edges_among(self._net, genes_CxG)
        ptr = np.zeros(genes_CxG.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=genes_CxG.shape[0]), out=ptr[1:])
        return CellEdges(ptr, self._net.src[e], self._net.dst[e], self._net.weight[e])

    def cell_neighbours(self, cell_idx: np.ndarray, genes_CxG: sp.csr_matrix) -> sp.csr_matrix:
        genes_CxG = sp.csr_matrix(genes_CxG, dtype=bool)
        reach = (genes_CxG @ self._net.adjacency).astype(bool)
        return (reach > genes_CxG).tocsr()


class CellTypeNetworkSource:
    """One network per cell type (GREmLN): each cell gets its type's network restricted to its genes.

    `cell_types[i]` is the type of dataset row `i`. A cell whose type has no network
    is an error unless `allow_missing=True`, in which case it gets no edges and is
    counted in `report["cells_without_network"]` as it is queried.
    """

    def __init__(self, networks: Mapping[str, GeneNetwork], cell_types: Sequence, gene_names: Sequence[str],
                 *, allow_missing: bool = False):
        if not networks:
            raise ValueError("CellTypeNetworkSource needs at least one network (got an empty mapping)")
        index = _gene_index(gene_names)
        self.num_genes = len(index)
        self.cell_types = np.asarray(cell_types).astype(str)
        self.allow_missing = allow_missing
        self._types = sorted(str(t) for t in networks)
        self._nets = [_index_network(networks[t], index, self.num_genes, t) for t in self._types]
        self._type_code = np.searchsorted(self._types, self.cell_types)
        self._type_code[(self._type_code >= len(self._types))] = -1
        ok = self._type_code >= 0
        ok[ok] = np.asarray(self._types)[self._type_code[ok]] == self.cell_types[ok]
        self._type_code[~ok] = -1
        self.report = {"networks": {t: n.report for t, n in zip(self._types, self._nets)},
                       "cells_without_network": 0}

    def _codes(self, cell_idx: np.ndarray) -> np.ndarray:
        cell_idx = np.asarray(cell_idx, np.int64)
        codes = self._type_code[cell_idx]
        if np.any(codes < 0):
            bad = int(cell_idx[np.flatnonzero(codes < 0)[0]])
            if not self.allow_missing:
                raise ValueError(
                    f"cell {bad} has cell type {str(self.cell_types[bad])!r} with no network (networks exist for "
                    f"{self._types[:10]}); add a network for it or pass allow_missing=True to give such cells no edges")
            self.report["cells_without_network"] += int((codes < 0).sum())
        return codes

    def cell_edges(self, cell_idx: np.ndarray, genes_CxG: sp.csr_matrix) -> CellEdges:
        genes_CxG = sp.csr_matrix(genes_CxG, dtype=bool)
        codes = self._codes(cell_idx)
        rows_all, src_all, dst_all, w_all = [], [], [], []
        for code, net in enumerate(self._nets):  # loop over cell types, vectorised over cells
            members = np.flatnonzero(codes == code)
            if len(members) == 0:
                continue
            rows, e = _edges_among(net, genes_CxG[members])
            rows_all.append(members[rows])
            src_all.append(net.src[e])
            dst_all.append(net.dst[e])
            w_all.append(net.weight[e])
        return CellEdges.from_parts(genes_CxG.shape[0], rows_all, src_all, dst_all, w_all)

    def cell_neighbours(self, cell_idx: np.ndarray, genes_CxG: sp.csr_matrix) -> sp.csr_matrix:
        genes_CxG = sp.csr_matrix(genes_CxG, dtype=bool)
        codes = self._codes(cell_idx)
        out = sp.csr_matrix(genes_CxG.shape, dtype=bool)
        for code, net in enumerate(self._nets):
            sel = sp.diags((codes == code).astype(np.float32)).tocsr()
            out = out + (sel @ genes_CxG.astype(np.float32) @ net.adjacency.astype(np.float32)).astype(bool)
        return (out.astype(bool) > genes_CxG).tocsr()
