"""Tokenise blocks of cells: top-`max_genes` selection, rank bins of the kept tokens, neighbours, graph edges.

Works on a CSR block whose columns are vocabulary ids, vectorised over all
cells of the block (no per-cell Python loop). The output is ragged
(`TokenizedCells`); `grn_jax.data.collate` pads it to the batch contract.

Token order within a cell: genes by ascending vocabulary id (the model has no
positional encoding, so order carries no meaning; fixing it keeps tokenisation
deterministic and identical between training and inference).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import scipy.sparse as sp

from grn_jax.data.binning import bins_from_ranks, row_ranks, top_k_mask
from grn_jax.data.config import TokenizeConfig
from grn_jax.data.graph_source import CellEdges, GraphSource
from grn_jax.data.normalize import normalize_log1p


@dataclasses.dataclass
class TokenizedCells:
    """Ragged tokens of C cells (no CLS, no padding).

    Cell i owns tokens token_ptr[i]:token_ptr[i+1] (gene_ids ascending, bins,
    normalised log1p expression `values`, 0 for neighbour tokens). `graph` and
    `cell_graph` hold edges as 1-based token positions (position 0 is CLS).
    """

    cell_index: np.ndarray  # int64 [C], dataset row
    token_ptr: np.ndarray  # int64 [C + 1]
    gene_ids: np.ndarray  # int32 [T]
    bins: np.ndarray  # int16 [T]
    values: np.ndarray  # float32 [T]
    graph: CellEdges  # positions
    cell_graph: Optional[CellEdges] = None
    counts: dict = dataclasses.field(default_factory=dict)

    @property
    def num_cells(self) -> int:
        return len(self.cell_index)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.token_ptr)


_COUNT_KEYS = ("genes_truncated", "cells_truncated", "neighbour_tokens_added", "neighbour_tokens_dropped",
               "edges_kept", "edges_dropped_over_budget", "cells_edges_truncated",
               "cell_graph_edges_kept", "cell_graph_edges_dropped_over_budget", "cells_cell_graph_edges_truncated")


def _ptr(rows: np.ndarray, n: int) -> np.ndarray:
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=ptr[1:])
    return ptr


def _edges_to_positions(edges: CellEdges, token_ptr: np.ndarray, gene_ids: np.ndarray, vocab_size: int,
                        max_edges: int, what: str):
    """Map gene-index edges to 1-based token positions; keep the `max_edges` heaviest per cell."""
    n = len(token_ptr) - 1
    if edges.num_cells != n:
        raise ValueError(f"{what} source returned edges for {edges.num_cells} cells, asked for {n}")
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(edges.ptr))
    token_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(token_ptr))
    token_key = token_rows * vocab_size + gene_ids
    out = []
    for genes in (edges.src, edges.dst):
        key = rows * vocab_size + genes.astype(np.int64)
        j = np.searchsorted(token_key, key)
        found = (j < len(token_key)) & (token_key[np.minimum(j, len(token_key) - 1)] == key)
        if not np.all(found):
            k = int(np.flatnonzero(~found)[0])
            raise ValueError(f"{what} source returned an edge of cell row {int(rows[k])} touching gene index "
                             f"{int(genes[k])}, which is not among that cell's tokens; a GraphSource must "
                             "return only edges among the marked genes")
        out.append((j - token_ptr[rows] + 1).astype(np.int32))
    src, dst = out
    weight = edges.weight.astype(np.float32)
    per_cell = np.diff(edges.ptr)
    counts = {"kept": int(len(src)), "dropped": 0, "cells": 0}
    if np.any(per_cell > max_edges):
        order = np.lexsort((-weight, rows))  # within cell: heaviest first, ties in given order
        rank = np.arange(len(order)) - edges.ptr[rows[order]]
        keep = np.sort(order[rank < max_edges])
        counts = {"kept": int(len(keep)), "dropped": int(len(src) - len(keep)),
                  "cells": int((per_cell > max_edges).sum())}
        rows, src, dst, weight = rows[keep], src[keep], dst[keep], weight[keep]
    return CellEdges(_ptr(rows, n), src, dst, weight), counts


def tokenize_block(block: sp.csr_matrix, totals: np.ndarray, cell_index: np.ndarray, cfg: TokenizeConfig, *,
                   graph_source: Optional[GraphSource] = None, cell_graph_source: Optional[GraphSource] = None,
                   normalized_input: bool = False) -> TokenizedCells:
    """Tokenise a CSR block [C, V] (columns = vocabulary ids, entries = counts, zeros implicit).

    totals: [C] total counts of each cell over all genes (for normalisation);
    with `normalized_input` the entries are taken as already-normalised values.
    Rank bins are computed from the entries directly: normalisation is strictly
    increasing within a cell, so it leaves ranks and ties unchanged.
    """
    block = sp.csr_matrix(block)
    block.eliminate_zeros()
    block.sort_indices()
    n, vocab_size = block.shape
    cell_index = np.asarray(cell_index, np.int64)
    counts = dict.fromkeys(_COUNT_KEYS, 0)
    per_cell = np.diff(block.indptr)

    # 1. keep the max_genes highest (ties at the cut: higher gene index first, deterministic)
    less, equal = row_ranks(block.indptr, block.data)
    keep = None
    if np.any(per_cell > cfg.max_genes):
        keep = top_k_mask(block.indptr, block.data, less, equal, cfg.max_genes)
        counts["genes_truncated"] = int(block.nnz - keep.sum())
        counts["cells_truncated"] = int((per_cell > cfg.max_genes).sum())
    if keep is None:  # CSR order is already (cell, vocabulary id)
        token_ptr = block.indptr.astype(np.int64)
        genes, raw = block.indices, block.data
    else:
        idx = np.flatnonzero(keep)
        token_ptr = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])[block.indptr]
        genes, raw = block.indices.take(idx), block.data.take(idx)
        less, _ = row_ranks(token_ptr, raw)
    lengths = np.diff(token_ptr)
    # 2. rank bins over exactly the tokens the model sees (after truncation), in CSR order: binning before
    #    truncation put every kept token of a truncated cell into the top bins
    bins = bins_from_ranks(less, np.repeat(lengths, lengths), cfg.n_bins)
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    if normalized_input:
        vals = raw.astype(np.float32)
    else:
        kept = sp.csr_matrix((raw, genes, token_ptr), shape=block.shape)
        vals = normalize_log1p(kept, totals, cfg.target_sum).data.astype(np.float32)
    genes = genes.astype(np.int64)

    # 3. optional graph neighbours of expressed genes as bin-0 tokens, within the budget
    if cfg.add_neighbours and graph_source is not None:
        present = sp.csr_matrix((np.ones(len(rows), bool), (rows, genes)), shape=(n, vocab_size))
        nb = sp.csr_matrix(graph_source.cell_neighbours(cell_index, present), dtype=bool)
        nb.sort_indices()
        nb_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(nb.indptr))
        room = cfg.max_genes - np.bincount(rows, minlength=n)
        rank = np.arange(nb.nnz) - nb.indptr[nb_rows]
        ok = rank < room[nb_rows]
        counts["neighbour_tokens_added"] = int(ok.sum())
        counts["neighbour_tokens_dropped"] = int((~ok).sum())
        rows = np.concatenate([rows, nb_rows[ok]])
        genes = np.concatenate([genes, nb.indices[ok].astype(np.int64)])
        bins = np.concatenate([bins, np.zeros(int(ok.sum()), np.int32)])
        vals = np.concatenate([vals, np.zeros(int(ok.sum()), np.float32)])
        # 4. token order: by cell, then vocabulary id
        tok_order = np.argsort(rows * vocab_size + genes, kind="stable")
        rows, genes, bins, vals = rows[tok_order], genes[tok_order], bins[tok_order], vals[tok_order]
        token_ptr = _ptr(rows, n)
    gene_ids = genes.astype(np.int32)

    # 5. graphs among the cell's tokens, as token positions
    def graph_of(source, what):
        if source is None:
            return None, {"kept": 0, "dropped": 0, "cells": 0}
        present = sp.csr_matrix((np.ones(len(rows), bool), gene_ids, token_ptr), shape=(n, vocab_size))
        return _edges_to_positions(source.cell_edges(cell_index, present), token_ptr, gene_ids, vocab_size,
                                   cfg.max_edges, what)

    graph, c1 = graph_of(graph_source, "graph")
    cell_graph, c2 = graph_of(cell_graph_source, "cell_graph")
    counts.update(edges_kept=c1["kept"], edges_dropped_over_budget=c1["dropped"], cells_edges_truncated=c1["cells"],
                  cell_graph_edges_kept=c2["kept"], cell_graph_edges_dropped_over_budget=c2["dropped"],
                  cells_cell_graph_edges_truncated=c2["cells"])
    return TokenizedCells(cell_index, token_ptr, gene_ids, bins.astype(np.int16), vals,
                          graph if graph is not None else CellEdges.empty(n), cell_graph, counts)
