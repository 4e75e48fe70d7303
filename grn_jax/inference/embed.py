"""`embed`: cell and gene embeddings of a pretrained model, streamed into AnnData.

    grn-jax embed --checkpoint RUN_DIR DATA.h5ad --out OUT.h5ad

Reads the input in row chunks (backed: only one chunk of counts in memory),
tokenises each chunk exactly as training did (`TrainingTokenizer`), groups the
cells by their own bucket and runs one jitted inference function per bucket
shape. Writes, under fixed keys:

    obsm["X_grn_cls"]       [n_obs, d_model]  CLS-token embedding
    obsm["X_grn_mean"]      [n_obs, d_model]  mean of the cell's gene-token hidden states
    varm["grn_gene_token"]  [n_vars, d_model/2] learned gene-ID embedding (NaN: gene not in vocabulary)
    varm["grn_gene_context"] [n_vars, d_model] mean hidden state of the gene over the cells it is a
                            token of (NaN: never a token)
    uns["grn_jax_embed"]    provenance: checkpoint hash and step, model config, tokenisation,
                            graph, gene and cell reports (JSON strings)

Hybrid checkpoints (cell-type + cell-specific graphs) get each new cell's
cell-specific graph from its AUCell scores against the thresholds fitted in
training, with the type chosen without its label
(`grn_jax.inference.graph_sources.build_cell_graph_source`).

A cell with no vocabulary gene has nothing to embed: its rows are NaN, and it is
counted and reported. Genes unknown to the vocabulary are skipped with a warning
that gives their number. The embeddings do not depend on the batch size.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import anndata
import jax
import numpy as np

from grn_jax.data.ingest import open_counts
from grn_jax.data.validate import check_gene_names
from grn_jax.inference.checkpoint import Pretrained
from grn_jax.inference.export import load_model
from grn_jax.inference.graph_sources import (GraphSpec, build_cell_graph_source, build_graph_source,
                                             check_graph_matches_training)
from grn_jax.inference.model_fn import batch_arrays, call_rows, gene_embedding_table, jitted_inference_fn
from grn_jax.inference.tokens import TrainingTokenizer
from grn_jax.inference.writers import H5adWriter, MemoryWriter

CLS_KEY = "X_grn_cls"
MEAN_KEY = "X_grn_mean"
GENE_TOKEN_KEY = "grn_gene_token"
GENE_CONTEXT_KEY = "grn_gene_context"
UNS_KEY = "grn_jax_embed"


@dataclasses.dataclass
class EmbedReport:
    """What `embed` did: counts of everything skipped, where the output went."""

    n_cells: int
    cells_without_vocab_genes: int
    genes: dict
    tokens: dict
    graph: dict
    out: Optional[str]
    seconds: float
    replaced: list

    def to_text(self) -> str:
        g = self.genes
        return "\n".join([
            f"cells            {self.n_cells} embedded ({self.cells_without_vocab_genes} without any vocabulary "
            f"gene: NaN rows)",
            f"genes            {g['genes_in_data']} in data, {g['genes_in_vocab']} in vocabulary, "
            f"{g['genes_not_in_vocab']} unknown and skipped",
            f"tokens           {self.tokens['genes_truncated']} genes truncated in {self.tokens['cells_truncated']} "
            f"cells; {self.tokens['edges_kept']} graph edges",
            f"graph            {self.graph.get('kind')}",
            f"output           {self.out or 'in memory'}: obsm[{CLS_KEY!r}], obsm[{MEAN_KEY!r}], "
            f"varm[{GENE_TOKEN_KEY!r}], varm[{GENE_CONTEXT_KEY!r}], uns[{UNS_KEY!r}]",
            f"time             {self.seconds:.2f} s",
        ])


def _warn_unknown_genes(report: dict, log: Callable[[str], None]) -> None:
    n = report["genes_not_in_vocab"]
    if n:
        msg = (f"{n} of {report['genes_in_data']} genes of the data are not in the model's vocabulary and are "
               f"skipped (e.g. {report['genes_not_in_vocab_example'][:5]})")
        warnings.warn(msg, UserWarning, stacklevel=3)
        log(f"warning: {msg}")


class _GeneContext:
    """Running sum (float64) and count of each vocabulary gene's hidden states."""

    def __init__(self, vocab_size: int, d: int):
        self.sum_VxD = np.zeros((vocab_size, d), np.float64)
        self.count_V = np.zeros(vocab_size, np.int64)

    def add(self, gene_ids_NxS: np.ndarray, token_mask_NxS: np.ndarray, hidden_NxSxD: np.ndarray) -> None:
        real = token_mask_NxS.copy()
        real[:, 0] = False  # CLS
        ids = gene_ids_NxS[real]
        if ids.size == 0:
            return
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        vecs = hidden_NxSxD[real][order].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        self.sum_VxD[ids[starts]] += np.add.reduceat(vecs, starts, axis=0)
        self.count_V[ids[starts]] += np.diff(np.r_[starts, len(ids)])

    def mean(self) -> np.ndarray:
        out = np.full(self.sum_VxD.shape, np.nan, np.float32)
        seen = self.count_V > 0
        out[seen] = (self.sum_VxD[seen] / self.count_V[seen, None]).astype(np.float32)
        return out


def _per_var(table_VxK: np.ndarray, col_ids: np.ndarray) -> np.ndarray:
    out = np.full((len(col_ids), table_VxK.shape[1]), np.nan, np.float32)
    known = col_ids >= 0
    out[known] = table_VxK[col_ids[known]]
    return out


def embed(checkpoint: Union[str, Path, Pretrained], data: Union[str, Path, anndata.AnnData],
          out: Optional[Union[str, Path]] = None, *, graph: GraphSpec = GraphSpec(), batch_size: int = 64,
          chunk_cells: int = 2048, layer: Optional[str] = None, use_raw: Optional[bool] = None,
          gene_column: Optional[str] = None, normalized_input: Optional[bool] = None,
          overwrite: bool = False, progress: bool = True, step: Optional[int] = None,
          log: Callable[[str], None] = print) -> EmbedReport:
    """Embed every cell of `data` with the pretrained model of `checkpoint` (see the module docstring).

    data: an .h5ad path (streamed in backed mode; `out` required) or an AnnData
    (written in place; `out` must be None). layer/use_raw/gene_column/
    normalized_input override the ingest settings training used. checkpoint: a
    run directory (newest complete step, or `step`), an export folder, or a `Pretrained`.
    """
    t0 = time.perf_counter()
    if batch_size < 1 or chunk_cells < 1:
        raise ValueError(f"batch_size ({batch_size}) and chunk_cells ({chunk_cells}) must be >= 1")
    in_memory = isinstance(data, anndata.AnnData)
    if in_memory and out is not None:
        raise ValueError("embedding an in-memory AnnData writes into it; pass out=None (or pass a file path)")
    if not in_memory and out is None:
        raise ValueError("embedding a file needs an output path (--out OUT.h5ad)")
    pre = checkpoint if isinstance(checkpoint, Pretrained) else load_model(checkpoint, step=step)
    tok = TrainingTokenizer.from_record(pre.tokenization, pre.vocab)
    check_graph_matches_training(graph, pre.tokenization.get("graph"), f"checkpoint {pre.run_dir}")
    ingest = tok.ingest_config(layer=layer, use_raw=use_raw, gene_column=gene_column,
                               normalized_input=normalized_input, backed=None if in_memory else True,
                               cell_type_column=None)
    src = open_counts(data, ingest)
    writer = None
    try:
        if src.n_cells == 0:
            raise ValueError(f"the data ({src.where}) has no cells; nothing to embed")
        check_gene_names(src.gene_names, f"{src.where} gene names")
        col_ids, gene_report = tok.column_map(src)
        _warn_unknown_genes(gene_report, log)
        gsrc, graph_report = build_graph_source(graph, pre.vocab, src, chunk_cells, log=log)
        csrc = None
        if tok.with_cell_graph:  # hybrid checkpoint: AUCell of each new cell against training's thresholds
            csrc, cell_report = build_cell_graph_source(graph, pre.tokenization.get("cell_graph"), pre.vocab, src,
                                                        chunk_cells, gsrc, log=log)
            graph_report = {**graph_report, "cell_graph": cell_report}

        cfg = pre.model_config
        fn = jitted_inference_fn(cfg, tok.with_cell_graph)
        writer = MemoryWriter(data) if in_memory else H5adWriter(data, out, overwrite=overwrite)
        d = cfg.d_model
        writer.create("obsm", CLS_KEY, (src.n_cells, d))
        writer.create("obsm", MEAN_KEY, (src.n_cells, d))
        ctx = _GeneContext(len(pre.vocab), d)
        counts: dict = {}
        n_empty, empty_examples = 0, []
        bar = progress_bar(src.n_cells, progress)
        for start, block in src.chunks(chunk_cells):
            t = tok.tokenize(block, start, col_ids, src, ingest=ingest, graph_source=gsrc, cell_graph_source=csrc)
            for k, v in t.counts.items():
                counts[k] = counts.get(k, 0) + v
            cls_NxD = np.full((t.num_cells, d), np.nan, np.float32)
            mean_NxD = np.full((t.num_cells, d), np.nan, np.float32)
            for batch, pos in tok.batches(t, call_rows(batch_size)):
                cls, mean, hidden = jax.device_get(fn(pre.params, *batch_arrays(batch.tokens, tok.with_cell_graph)))
                k = len(pos)
                cls_NxD[pos], mean_NxD[pos] = cls[:k], mean[:k]
                ctx.add(batch.tokens.gene_ids[:k], batch.tokens.token_mask[:k], hidden[:k])
            empty = t.lengths == 0
            cls_NxD[empty] = mean_NxD[empty] = np.nan
            n_empty += int(empty.sum())
            if len(empty_examples) < 5:
                empty_examples += src.cell_names[start + np.flatnonzero(empty)[:5 - len(empty_examples)]].tolist()
            writer.write_rows("obsm", CLS_KEY, start, cls_NxD)
            writer.write_rows("obsm", MEAN_KEY, start, mean_NxD)
            bar.update(t.num_cells)
        bar.close()
        if n_empty:
            msg = (f"{n_empty} of {src.n_cells} cells express no vocabulary gene; their embeddings are NaN "
                   f"(e.g. {empty_examples})")
            warnings.warn(msg, UserWarning, stacklevel=2)
            log(f"warning: {msg}")
        table = np.asarray(jax.device_get(gene_embedding_table(pre.params)), np.float32)
        writer.write_full("varm", GENE_TOKEN_KEY, _per_var(table, col_ids))
        writer.write_full("varm", GENE_CONTEXT_KEY, _per_var(ctx.mean(), col_ids))
        report = EmbedReport(n_cells=src.n_cells, cells_without_vocab_genes=n_empty, genes=gene_report,
                             tokens=counts, graph=graph_report, out=None if in_memory else str(out),
                             seconds=0.0, replaced=writer.replaced)
        writer.write_uns(UNS_KEY, _provenance(pre, tok, report, empty_examples))
        writer.commit()  # the output appears only now, complete (temp file + rename)
    finally:
        src.close()
        if writer is not None:
            writer.close()
    report.seconds = time.perf_counter() - t0
    return report


def _provenance(pre: Pretrained, tok: TrainingTokenizer, report: EmbedReport, empty_examples: list) -> dict:
    import grn_jax
    from grn_jax.train.typed import to_dict

    return {
        "checkpoint": pre.provenance,
        "model_config": to_dict(pre.model_config),
        "tokenization": dict(pre.tokenization),
        "vocab_size": len(pre.vocab),
        "graph": report.graph,
        "genes": report.genes,
        "cells": {"n_cells": report.n_cells, "without_vocab_genes": report.cells_without_vocab_genes,
                  "without_vocab_genes_example": empty_examples},
        "tokens": report.tokens,
        "keys": {"cls": CLS_KEY, "mean": MEAN_KEY, "gene_token": GENE_TOKEN_KEY, "gene_context": GENE_CONTEXT_KEY},
        "versions": {"grn_jax": grn_jax.__version__, "jax": jax.__version__},
    }


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cells", desc="embed", file=sys.stderr)
