"""Tokenise new cells exactly as pretraining did, from the checkpoint's tokenisation record.

Training tokenised with `grn_jax.data.prepare`: gene columns mapped to the
vocabulary, per-cell totals over *all* genes of the file, `tokenize_block` with
the run's `TokenizeConfig`, then `collate` at the run's buckets. This module
calls the very same functions with the very same settings (read from the
checkpoint), so a cell gets identical tokens and graph whether it went through
`prepare` or `embed`; only QC differs: inference embeds every cell and reports
the ones that have no vocabulary gene.

Batches are grouped by each cell's own (sequence, edge) bucket, so a cell's
padded shape — and hence its embedding — never depends on its batch-mates.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import numpy as np
import scipy.sparse as sp

from grn_jax.data.buckets import bucket_for
from grn_jax.data.collate import CellBatch, collate
from grn_jax.data.config import DataConfig, IngestConfig
from grn_jax.data.graph_source import GraphSource
from grn_jax.data.ingest import CountsSource
from grn_jax.data.pipeline import _column_map, _to_vocab_columns  # the mapping `prepare` uses, shared on purpose
from grn_jax.data.tokenize import TokenizedCells, tokenize_block
from grn_jax.data.validate import check_block
from grn_jax.data.vocab import GeneVocab
from grn_jax.types import BinSpec


@dataclasses.dataclass(frozen=True)
class TrainingTokenizer:
    """The tokenisation of a pretraining run: vocabulary, data config, bins, buckets."""

    vocab: GeneVocab
    config: DataConfig
    bin_spec: BinSpec
    seq_buckets: tuple[int, ...]
    edge_buckets: tuple[int, ...]
    with_cell_graph: bool = False

    @staticmethod
    def from_record(record: dict, vocab: GeneVocab) -> "TrainingTokenizer":
        cfg = DataConfig.from_dict(record["data_config"])
        bin_spec = BinSpec(int(record["bin_spec"]["n_bins"]))
        if bin_spec.n_bins != cfg.tokenize.n_bins:
            raise ValueError(f"tokenisation record: bin_spec has {bin_spec.n_bins} bins but tokenize.n_bins is "
                             f"{cfg.tokenize.n_bins}; the record is inconsistent")
        return TrainingTokenizer(vocab=vocab, config=cfg, bin_spec=bin_spec,
                                 seq_buckets=tuple(int(x) for x in record["seq_buckets"]),
                                 edge_buckets=tuple(int(x) for x in record["edge_buckets"]),
                                 with_cell_graph=bool(record.get("with_cell_graph", False)))

    def ingest_config(self, **overrides) -> IngestConfig:
        """Training's ingest settings (layer, gene column, normalised input) with the given fields replaced."""
        fields = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self.config.ingest, **fields)

    def column_map(self, src: CountsSource) -> tuple[np.ndarray, dict]:
        """Vocabulary id of every data gene (-1 = not in the vocabulary) and the gene report."""
        return _column_map(src, self.vocab)

    def tokenize(self, block: sp.csr_matrix, start: int, col_ids: np.ndarray, src: CountsSource, *,
                 ingest: IngestConfig, graph_source: Optional[GraphSource] = None,
                 cell_graph_source: Optional[GraphSource] = None) -> TokenizedCells:
        """Validate and tokenise rows [start, start + len(block)) of `src` (all genes of the file in `block`)."""
        check_block(block, start, src.cell_names, src.gene_names, expect_counts=not ingest.normalized_input,
                    integer_tolerance=ingest.integer_tolerance, where=src.where)
        totals = np.asarray(block.sum(axis=1), np.float64).ravel()
        vblock = _to_vocab_columns(block, col_ids, len(self.vocab))
        rows = start + np.arange(block.shape[0], dtype=np.int64)
        return tokenize_block(vblock, totals, rows, self.config.tokenize, graph_source=graph_source,
                              cell_graph_source=cell_graph_source, normalized_input=ingest.normalized_input)

    def cell_dicts(self, t: TokenizedCells) -> list[dict]:
        """Per-cell dicts in the `ShardStore.cell` format (what `collate` consumes); `cell` = dataset row."""
        out = []
        ep = t.graph.ptr
        cp = t.cell_graph.ptr if t.cell_graph is not None else None
        for i in range(t.num_cells):  # host-side bookkeeping over one chunk; no device work
            a, b = int(t.token_ptr[i]), int(t.token_ptr[i + 1])
            c = {"cell": int(t.cell_index[i]), "gene_ids": t.gene_ids[a:b], "bins": t.bins[a:b].astype(np.int32),
                 "edge_src": t.graph.src[ep[i]:ep[i + 1]], "edge_dst": t.graph.dst[ep[i]:ep[i + 1]],
                 "edge_weight": t.graph.weight[ep[i]:ep[i + 1]]}
            if cp is not None:
                c.update(cell_edge_src=t.cell_graph.src[cp[i]:cp[i + 1]], cell_edge_dst=t.cell_graph.dst[cp[i]:cp[i + 1]],
                         cell_edge_weight=t.cell_graph.weight[cp[i]:cp[i + 1]])
            out.append(c)
        return out

    def bucket_of(self, cell: dict) -> tuple[int, int]:
        """(sequence bucket, edge bucket) of one cell on its own."""
        n_edges = len(cell["edge_src"])
        if self.with_cell_graph:
            n_edges = max(n_edges, len(cell["cell_edge_src"]))
        return (bucket_for(1 + len(cell["gene_ids"]), self.seq_buckets, "sequence length (CLS + genes)"),
                bucket_for(n_edges, self.edge_buckets, "edge count"))

    def batches(self, t: TokenizedCells, batch_size: int) -> Iterator[tuple[CellBatch, np.ndarray]]:
        """(CellBatch of `batch_size` rows, positions within the chunk of its real cells), grouped by bucket.

        Every batch has the static shape [batch_size, S] / [batch_size, E] of its
        bucket pair; a short last batch per bucket is filled with masked filler rows.
        """
        cells = self.cell_dicts(t)
        keys = [self.bucket_of(c) for c in cells]
        for key in sorted(set(keys)):
            members = [i for i, k in enumerate(keys) if k == key]
            for lo in range(0, len(members), batch_size):
                part = members[lo:lo + batch_size]
                batch = collate([cells[i] for i in part], self.bin_spec, self.seq_buckets, self.edge_buckets,
                                batch_size=batch_size, with_cell_graph=self.with_cell_graph)
                yield batch, np.asarray(part, np.int64)
