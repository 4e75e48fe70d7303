"""Pad ragged cells into the batch contract (`TokenBatch`) at bucketed sizes.

Position 0 is CLS; gene tokens follow at 1..n; padding has PAD ids, the PAD bin,
`token_mask == False`; padded edge slots have `edge_mask == False`, weight 0 and
point at position 1 (a real, in-range index that carries no weight). Collation
is unmasked: `loss_mask` is False and `targets` 0 until `mask_bins` runs.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from flax import struct

from grn_jax.data.buckets import bucket_for
from grn_jax.types import GENE_CLS, GENE_PAD, BinSpec, GraphBatch, TokenBatch


@struct.dataclass
class CellBatch:
    """A `TokenBatch` plus which dataset cells its rows are.

    cell_index: int32 [B], the prepared dataset's cell index (-1 for filler rows
    that pad the last batch); cell_mask: bool [B], True for real cells.
    """

    tokens: TokenBatch
    cell_index: np.ndarray
    cell_mask: np.ndarray


def _pad_graph(b: int, e: int, per_cell: Sequence[Optional[tuple]]) -> GraphBatch:
    senders = np.ones((b, e), np.int32)
    receivers = np.ones((b, e), np.int32)
    weights = np.zeros((b, e), np.float32)
    edge_mask = np.zeros((b, e), bool)
    for i, g in enumerate(per_cell):  # loop over the B cells of one batch only
        if g is None:
            continue
        src, dst, w = g
        k = len(src)
        senders[i, :k], receivers[i, :k], weights[i, :k], edge_mask[i, :k] = src, dst, w, True
    return GraphBatch(senders, receivers, weights, edge_mask)


def collate(cells: Sequence[dict], bin_spec: BinSpec, seq_buckets: Sequence[int], edge_buckets: Sequence[int], *,
            batch_size: Optional[int] = None, with_cell_graph: bool = False) -> CellBatch:
    """Pad `cells` (dicts from `ShardStore.cell`) to a `CellBatch` of `batch_size` rows (filler rows if fewer).

    S = smallest sequence bucket >= 1 + longest cell; E = smallest edge bucket >=
    most edges in any cell (graph and cell_graph share E). Cells that carry
    co-expression partner pairs (`coexpr_src`, from a store with a partner table)
    also fill `coexpr_graph`: each cell's E strongest pairs (the pool perturbation
    draws at most floor(alpha E) edges from).
    """
    b = len(cells) if batch_size is None else batch_size
    if len(cells) > b:
        raise ValueError(f"{len(cells)} cells do not fit a batch of {b}")
    n_tok = [len(c["gene_ids"]) for c in cells]
    s = bucket_for(1 + max(n_tok, default=0), seq_buckets, "sequence length (CLS + genes)")
    n_edges = [len(c["edge_src"]) for c in cells]
    if with_cell_graph:
        n_edges += [len(c["cell_edge_src"]) for c in cells]
    e = bucket_for(max(n_edges, default=0), edge_buckets, "edge count")

    gene_ids = np.full((b, s), GENE_PAD, np.int32)
    bins = np.full((b, s), bin_spec.pad_id, np.int32)
    token_mask = np.zeros((b, s), bool)
    cell_index = np.full(b, -1, np.int32)
    gene_ids[: len(cells), 0] = GENE_CLS
    bins[: len(cells), 0] = bin_spec.cls_id
    token_mask[: len(cells), 0] = True
    for i, c in enumerate(cells):  # loop over the B cells of one batch only
        k = n_tok[i]
        gene_ids[i, 1:k + 1] = c["gene_ids"]
        bins[i, 1:k + 1] = c["bins"]
        token_mask[i, 1:k + 1] = True
        cell_index[i] = c["cell"]
    graph = _pad_graph(b, e, [(c["edge_src"], c["edge_dst"], c["edge_weight"]) for c in cells])
    cell_graph = None
    if with_cell_graph:
        cell_graph = _pad_graph(b, e, [(c["cell_edge_src"], c["cell_edge_dst"], c["cell_edge_weight"])
                                       for c in cells])
    coexpr_graph = None
    if cells and "coexpr_src" in cells[0]:
        coexpr_graph = _pad_graph(b, e, [(c["coexpr_src"][:e], c["coexpr_dst"][:e], c["coexpr_weight"][:e])
                                         for c in cells])
    tokens = TokenBatch(gene_ids=gene_ids, bins=bins, targets=np.zeros((b, s), np.int32),
                        loss_mask=np.zeros((b, s), bool), token_mask=token_mask, graph=graph, cell_graph=cell_graph,
                        coexpr_graph=coexpr_graph)
    return CellBatch(tokens=tokens, cell_index=cell_index, cell_mask=cell_index >= 0)
