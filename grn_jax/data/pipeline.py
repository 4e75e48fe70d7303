"""`prepare`: AnnData -> validated, QC-filtered, rank-binned, tokenised shards + manifest + summary.

Two passes over CSR row chunks (so backed files never load whole): pass 1
validates and computes per-cell totals and expressed-gene counts for QC; pass
2 tokenises the kept cells and writes shards. Everything filtered is counted
in the returned summary, which is also stored in the manifest.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Mapping, Optional, Union

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from grn_jax._io import check_out_dir
from grn_jax.data.buckets import edge_buckets, seq_buckets
from grn_jax.data.config import DataConfig
from grn_jax.data.graph_source import CellTypeNetworkSource, GraphSource, SingleNetworkSource
from grn_jax.data.ingest import CountsSource, open_counts
from grn_jax.data.qc import qc_cells
from grn_jax.data.shards import ShardWriter
from grn_jax.data.tokenize import _COUNT_KEYS, tokenize_block
from grn_jax.data.validate import check_block, check_gene_names
from grn_jax.data.vocab import GeneVocab
from grn_jax.graphs.diagnostics import GraphDiagnostics, format_graph_diagnostics, shared_network_types
from grn_jax.types import BinSpec, GeneNetwork

GraphSpec = Union[None, GeneNetwork, Mapping[str, GeneNetwork], GraphSource,
                  Callable[[GeneVocab, CountsSource], GraphSource]]


def _column_map(src: CountsSource, vocab: GeneVocab) -> tuple[np.ndarray, dict]:
    ids = vocab.lookup(src.gene_names)
    missing = src.gene_names[ids < 0]
    report = {"genes_in_data": int(src.n_genes), "genes_in_vocab": int((ids >= 0).sum()),
              "genes_not_in_vocab": int(len(missing)), "genes_not_in_vocab_example": missing[:10].tolist()}
    if (ids >= 0).sum() == 0:
        raise ValueError(f"none of the {src.n_genes} genes of {src.where} is in the vocabulary ({len(vocab.genes)} "
                         f"genes, e.g. {vocab.genes[:3]}; data genes e.g. {src.gene_names[:3].tolist()}); use the "
                         "same identifiers (ingest.gene_column for Ensembl ids) or build the vocabulary from the data")
    dup = np.unique(ids[ids >= 0], return_counts=True)
    if np.any(dup[1] > 1):
        vid = int(dup[0][np.argmax(dup[1])])
        names = src.gene_names[ids == vid].tolist()
        raise ValueError(f"data genes {names} map to the same vocabulary gene {vocab.tokens[vid]!r} (via aliases); "
                         "keep one of them")
    return ids, report


def _to_vocab_columns(block: sp.csr_matrix, col_ids: np.ndarray, vocab_size: int) -> sp.csr_matrix:
    """Re-index a CSR block's columns to vocabulary ids, dropping genes outside the vocabulary."""
    mapped = col_ids[block.indices]
    keep = mapped >= 0
    if keep.all():
        indptr = block.indptr
    else:
        indptr = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])[block.indptr]
        mapped = mapped[keep]
    out = sp.csr_matrix((block.data[keep] if not keep.all() else block.data, mapped, indptr),
                        shape=(block.shape[0], vocab_size))
    out.sort_indices()  # no-op when the vocabulary keeps the data's gene order
    return out


def _build_source(spec: GraphSpec, vocab: GeneVocab, src: CountsSource, cell_types, what: str):
    if spec is None:
        return None
    if isinstance(spec, GeneNetwork):
        return SingleNetworkSource(spec, vocab.tokens)
    if isinstance(spec, Mapping):
        if cell_types is None:
            raise ValueError(f"{what}: per-cell-type networks need cell types; set ingest.cell_type_column")
        return CellTypeNetworkSource(spec, cell_types, vocab.tokens)
    if isinstance(spec, GraphSource):
        return spec
    if callable(spec):
        return spec(vocab, src)
    raise ValueError(f"{what} must be a GeneNetwork, a mapping cell type -> GeneNetwork, a GraphSource or a "
                     f"factory (vocab, counts) -> GraphSource; got {type(spec).__name__}")


def prepare(source: Union[str, os.PathLike, anndata.AnnData], out_dir, config: DataConfig = DataConfig(), *,
            vocab: Optional[GeneVocab] = None, graph: GraphSpec = None, cell_graph: GraphSpec = None,
            overwrite: bool = False, dataset_name: Optional[str] = None, allow_empty_graph: bool = False,
            coexpr_partners: int = 10, coexpr_min_corr: float = 0.1, coexpr_max_genes: int = 4096) -> dict:
    """Tokenise `source` into shards under `out_dir`; return the summary (also in the manifest).

    vocab: an existing vocabulary (e.g. the pretraining one); None builds one from
    the data's genes. graph: the cell-type / single network(s) for `graph`;
    cell_graph: a source (or factory) for the optional cell-specific graph.
    allow_empty_graph: accept a graph that yields no edge in any cell (warns);
    by default that is an error, since graph-less shards silently train without GDKA.
    coexpr_*: the dataset co-expression partner table written beside the shards
    (`grn_jax.graphs.coexpression`): each gene's `coexpr_partners` most correlated
    genes over the kept cells (Pearson on log1p CP10k, r >= `coexpr_min_corr`), over
    the `coexpr_max_genes` most often detected vocabulary genes; 0 partners: no table.
    """
    t0 = time.perf_counter()
    config.validate()
    if coexpr_partners < 0 or coexpr_max_genes < 2 or not -1.0 <= coexpr_min_corr <= 1.0:
        raise ValueError(f"co-expression partners: need coexpr_partners >= 0 (got {coexpr_partners}), "
                         f"coexpr_max_genes >= 2 (got {coexpr_max_genes}), coexpr_min_corr in [-1, 1] "
                         f"(got {coexpr_min_corr})")
    check_out_dir(out_dir, "output folder")  # before reading: an existing file at --out fails at once
    ing, tok = config.ingest, config.tokenize
    src = open_counts(source, ing)
    try:
        if src.n_cells == 0:
            raise ValueError(f"the matrix ({src.where}) has no cells; nothing to prepare")
        check_gene_names(src.gene_names, f"{src.where} gene names")
        vocab = vocab or GeneVocab(src.gene_names)
        col_ids, gene_report = _column_map(src, vocab)
        cell_types = None
        if ing.cell_type_column is not None:
            if ing.cell_type_column not in src.obs.columns:
                raise ValueError(f"ingest.cell_type_column={ing.cell_type_column!r} is not an obs column "
                                 f"(columns: {list(src.obs.columns)[:20]})")
            cell_types = np.asarray(src.obs[ing.cell_type_column]).astype(str)

        # pass 1: validate, totals, expressed vocabulary genes per cell
        totals = np.zeros(src.n_cells, np.float64)
        n_expr = np.zeros(src.n_cells, np.int64)
        detected_V = np.zeros(len(vocab), np.int64)  # cells detecting each vocabulary gene (partner-table genes)
        nnz = 0
        cell_names = src.cell_names
        for start, block in src.chunks(config.shards.chunk_cells):
            check_block(block, start, cell_names, src.gene_names, expect_counts=not ing.normalized_input,
                        integer_tolerance=ing.integer_tolerance, where=src.where)
            stop = start + block.shape[0]
            totals[start:stop] = np.asarray(block.sum(axis=1)).ravel()
            in_vocab = col_ids[block.indices] >= 0
            rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
            n_expr[start:stop] = np.bincount(rows[in_vocab], minlength=block.shape[0])
            detected_V += np.bincount(col_ids[block.indices][in_vocab], minlength=len(vocab))
            nnz += block.nnz
        if nnz == 0:
            raise ValueError(f"the matrix ({src.where}, {src.n_cells} cells x {src.n_genes} genes) is all zeros; "
                             "point ingest at the layer that holds counts")
        qc = qc_cells(totals, n_expr, config.qc, counts_are_raw=not ing.normalized_input)
        if qc.report["cells_kept"] == 0:
            raise ValueError(f"QC removed all {src.n_cells} cells ({qc.report['filtered_by']}); relax the QC "
                             f"thresholds (qc.min_counts/max_counts/min_genes), e.g. min_genes is {config.qc.min_genes}"
                             f" while cells express at most {int(n_expr.max())} vocabulary genes")

        gsrc = _build_source(graph, vocab, src, cell_types, "graph")
        csrc = _build_source(cell_graph, vocab, src, cell_types, "cell_graph")
        notes = [] if gsrc is None else check_graph_edges(network_edges_kept(gsrc), gsrc, "network",
                                                            allow_empty_graph)
        writer = ShardWriter(out_dir, config.shards.cells_per_shard, with_cell_graph=csrc is not None,
                             overwrite=overwrite)
        coexpr = None
        if coexpr_partners > 0:
            from grn_jax.graphs.coexpression import CoexpressionAccumulator

            tracked = np.argsort(-detected_V, kind="stable")[:coexpr_max_genes]
            coexpr = CoexpressionAccumulator(np.sort(tracked[detected_V[tracked] > 0]), len(vocab))
        partners_path = writer.out / "coexpression_partners.npz"
        try:
            counts = dict.fromkeys(_COUNT_KEYS, 0)
            lengths, edge_counts = [], []
            diag = {k: GraphDiagnostics() for k, s_ in (("graph", gsrc), ("cell_graph", csrc)) if s_ is not None}
            t_tok = time.perf_counter()
            # pass 2: tokenise kept cells, chunk by chunk
            for start, block in src.chunks(config.shards.chunk_cells):
                keep = qc.keep[start:start + block.shape[0]]
                if not keep.any():
                    continue
                rows = np.flatnonzero(keep)
                vblock = _to_vocab_columns(block if keep.all() else block[rows], col_ids, len(vocab))
                t = tokenize_block(vblock, totals[start + rows], start + rows, tok, graph_source=gsrc,
                                   cell_graph_source=csrc, normalized_input=ing.normalized_input)
                for k, v in t.counts.items():
                    counts[k] += v
                if coexpr is not None:
                    coexpr.add(vblock, totals[start + rows])
                lengths.append(t.lengths)
                edge_counts.append(np.diff(t.graph.ptr))
                for k, g in (("graph", t.graph), ("cell_graph", t.cell_graph)):
                    if k in diag:
                        diag[k].add(t.lengths, g.ptr, g.src, g.dst, g.weight)
                writer.add(t)
            t_tok = time.perf_counter() - t_tok
            if gsrc is not None and not notes:
                notes += check_graph_edges(counts["edges_kept"], gsrc, "cells", allow_empty_graph)

            lengths = np.concatenate(lengths)
            edge_counts = np.concatenate(edge_counts)
            s_b, e_b = seq_buckets(tok), edge_buckets(tok)
            kept_rows = np.flatnonzero(qc.keep)
            cells = pd.DataFrame({"dataset_row": kept_rows, "cell_name": cell_names[kept_rows],
                                  "cell_type": cell_types[kept_rows] if cell_types is not None else ""})
            summary = {
                "dataset": dataset_name or (str(source) if not isinstance(source, anndata.AnnData) else "AnnData"),
                "counts_from": src.where,
                "backed": src.backed,
                "cells": qc.report,
                "genes": gene_report,
                "vocab_size": len(vocab),
                "n_bins": tok.n_bins,
                "bin_vocab_size": BinSpec(tok.n_bins).vocab_size,
                "tokens": {
                    "total": int(lengths.sum()),
                    "per_cell_min": int(lengths.min()), "per_cell_median": float(np.median(lengths)),
                    "per_cell_max": int(lengths.max()),
                    **counts,
                },
                "edges_per_cell_max": int(edge_counts.max()) if len(edge_counts) else 0,
                "seq_buckets": list(s_b),
                "seq_buckets_used": sorted({int(s_b[np.searchsorted(s_b, n + 1)]) for n in np.unique(lengths)}),
                "edge_buckets": list(e_b),
                "graph": getattr(gsrc, "report", None) if gsrc is not None else "none",
                "cell_graph": getattr(csrc, "report", None) if csrc is not None else "none",
                "seconds": {"total": None, "tokenize_pass": round(t_tok, 3)},
                "warnings": notes,
                # coverage, density, fallbacks and diffusion strength (at GREmLN's default beta 0.1)
                "graph_diagnostics": {k: d.summary(beta=0.1, fell_back=_fell_back({"graph": graph,
                                                                                   "cell_graph": cell_graph}[k]))
                                      for k, d in diag.items()},
            }
            manifest = {"vocab": vocab.to_dict(), "bin_spec": dataclasses.asdict(BinSpec(tok.n_bins)),
                        "seq_buckets": list(s_b), "edge_buckets": list(e_b), "config": config.to_dict(),
                        "summary": summary}
            if coexpr is not None:
                summary["coexpression"] = manifest["coexpression"] = _write_partners(
                    coexpr, partners_path, len(vocab), coexpr_partners, coexpr_min_corr, coexpr_max_genes)
            summary["seconds"]["total"] = round(time.perf_counter() - t0, 3)
            manifest = writer.finish(manifest, cells)
            summary["shards"] = len(manifest["shards"])
            summary["content_hash"] = manifest["content_hash"]
            summary["out_dir"] = str(out_dir)
            return summary
        except BaseException:
            if partners_path.exists():
                partners_path.unlink()
            writer.abort()
            raise
    finally:
        src.close()


def _write_partners(acc, path, vocab_size: int, k: int, min_corr: float, max_genes: int) -> dict:
    """Write the co-expression partner table beside the shards; return its manifest record."""
    import hashlib

    from grn_jax.graphs.coexpression import PartnerTable

    src, dst, r = acc.partners(k, min_corr)
    PartnerTable(src, dst, r, vocab_size).save(path)
    per_gene = np.bincount(np.concatenate([src, dst]), minlength=vocab_size)[acc.genes] if len(acc.genes) else [0]
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "pairs": int(len(src)),
            "genes_tracked": int(len(acc.genes)), "cells": int(acc.n), "median_partners_per_gene":
            float(np.median(per_gene)), "params": {"k": int(k), "min_corr": float(min_corr),
                                                   "max_genes": int(max_genes), "statistic": "pearson, log1p CP10k"}}


def _fell_back(spec: GraphSpec) -> list:
    """Cell types of a per-type network mapping that share the pooled network (none for other specs)."""
    return shared_network_types(spec) if isinstance(spec, Mapping) else []


def network_edges_kept(gsrc) -> Optional[int]:
    """Edges between vocabulary genes over the source's networks (None: a source that does not report it)."""
    report = getattr(gsrc, "report", None) or {}
    nets = [report["network"]] if "network" in report else list((report.get("networks") or {}).values())
    if not nets or not all(isinstance(n, dict) and "edges_kept" in n for n in nets):
        return None
    return sum(int(n["edges_kept"]) for n in nets)


def check_graph_edges(kept: Optional[int], gsrc, stage: str, allow: bool, result: str = "the shards") -> list:
    """Raise when a requested graph gives no edge (unless `allow`: then print a warning and return it).

    stage: "network" (no edge between vocabulary genes) or "cells" (no cell has an edge)."""
    if kept is None or kept > 0:
        return []
    report = getattr(gsrc, "report", None) or {}
    nets = [report["network"]] if "network" in report else list((report.get("networks") or {}).values())
    edges_in = sum(int(n.get("edges_in", 0)) for n in nets)
    unknown = [g for n in nets for g in n.get("unknown_genes_example", [])][:5]
    what = (f"the network(s) keep no edge between vocabulary genes ({edges_in} edges in, gene names not found "
            f"e.g. {unknown})" if stage == "network" else
            "no cell has an edge: no two genes a cell expresses are linked in its network")
    if not allow:
        raise ValueError(f"{what}; {result} would have no graph. Check that the network's gene names match the "
                         "data's (ingest.gene_column, --vocab), or pass --allow-empty-graph (allow_empty_graph=True)"
                         " to go on without edges")
    msg = f"{what}; {result} are graph-less because --allow-empty-graph was given"
    print(f"WARNING: {msg}", file=sys.stderr)
    return [msg]


def format_summary(summary: dict) -> str:
    """The human-readable pipeline summary printed by `grn-jax prepare` and the quickstart."""
    c, g, t = summary["cells"], summary["genes"], summary["tokens"]
    filt = ", ".join(f"{k}={v}" for k, v in c["filtered_by"].items())
    lines = [
        f"dataset          {summary['dataset']}  (counts from {summary['counts_from']}"
        f"{', backed' if summary['backed'] else ''})",
        f"cells            {c['cells_in']} in, {c['cells_kept']} kept, {c['cells_filtered']} filtered ({filt})",
        f"QC params        {c['params']}" + ("" if c["total_count_bounds_applied"] else "  [count bounds skipped]"),
        f"genes            {g['genes_in_data']} in data, {g['genes_in_vocab']} in vocabulary, "
        f"{g['genes_not_in_vocab']} not in vocabulary" + (f" (e.g. {g['genes_not_in_vocab_example'][:3]})"
                                                          if g["genes_not_in_vocab"] else ""),
        f"vocabulary       {summary['vocab_size']} tokens (PAD, MASK, CLS + genes)",
        f"bins             {summary['n_bins']} expression bins (0 = not expressed), bin vocabulary "
        f"{summary['bin_vocab_size']}",
        f"tokens per cell  min {t['per_cell_min']}, median {t['per_cell_median']:g}, max {t['per_cell_max']}; "
        f"{t['genes_truncated']} genes truncated in {t['cells_truncated']} cells",
        f"neighbour tokens {t['neighbour_tokens_added']} added, {t['neighbour_tokens_dropped']} over budget",
        f"graph edges      {t['edges_kept']} kept (max {summary['edges_per_cell_max']} per cell), "
        f"{t['edges_dropped_over_budget']} over budget in {t['cells_edges_truncated']} cells",
        f"seq buckets      {summary['seq_buckets_used']} used of {summary['seq_buckets']}",
        f"shards           {summary['shards']} in {summary['out_dir']} (content hash "
        f"{summary['content_hash'][:16]})",
        f"time             {summary['seconds']['total']:.2f} s",
    ] + [f"graph check      {line}" for k, d in summary.get("graph_diagnostics", {}).items()
         for line in format_graph_diagnostics(d, k).splitlines()] \
      + [f"WARNING          {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)
