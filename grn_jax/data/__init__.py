"""grn_jax.data: AnnData -> validated, QC-filtered, rank-binned token batches with per-cell graphs.

Pipeline: `open_counts` (ingest) -> `check_block` (validate) -> `qc_cells` ->
`normalize_log1p` / `rank_bins` -> `tokenize_block` -> `ShardWriter` (shards +
manifest) -> `make_loader` (grain) -> `collate` -> `mask_bins` (on device).
`prepare` runs it end to end; `quickstart` on the bundled PBMC data.
"""

from grn_jax.data.binning import bins_from_ranks, rank_bins, row_ranks, row_value_order, top_k_mask
from grn_jax.data.buckets import bucket_for, edge_buckets, seq_buckets
from grn_jax.data.collate import CellBatch, collate
from grn_jax.data.config import DataConfig, IngestConfig, QCConfig, ShardConfig, TokenizeConfig
from grn_jax.data.graph_source import CellEdges, CellTypeNetworkSource, GraphSource, SingleNetworkSource
from grn_jax.data.ingest import CountsSource, open_counts
from grn_jax.data.loader import BatchIterator, cells_skipped_per_epoch, make_loader
from grn_jax.data.masking import mask_bins, mask_key
from grn_jax.data.normalize import normalize_log1p
from grn_jax.data.pipeline import format_summary, prepare
from grn_jax.data.prepare_files import load_config, prepare_files
from grn_jax.data.qc import QCResult, qc_cells
from grn_jax.data.quickstart import quickstart
from grn_jax.data.shards import ShardStore, ShardWriter, content_hash
from grn_jax.data.tokenize import TokenizedCells, tokenize_block
from grn_jax.data.validate import check_block, check_gene_names
from grn_jax.data.vocab import GeneVocab

__all__ = [
    "BatchIterator", "CellBatch", "CellEdges", "CellTypeNetworkSource", "CountsSource", "DataConfig", "GeneVocab",
    "GraphSource", "IngestConfig", "QCConfig", "QCResult", "ShardConfig", "ShardStore", "ShardWriter",
    "SingleNetworkSource", "TokenizeConfig", "TokenizedCells", "bucket_for", "cells_skipped_per_epoch",
    "check_block", "check_gene_names", "collate", "content_hash", "edge_buckets", "format_summary", "load_config",
    "make_loader", "mask_bins", "mask_key", "normalize_log1p", "open_counts", "prepare", "prepare_files",
    "qc_cells", "quickstart", "bins_from_ranks", "rank_bins", "row_ranks", "top_k_mask", "row_value_order", "seq_buckets", "tokenize_block",
]
