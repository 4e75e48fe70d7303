"""Inputs of the tasks: frozen cell embeddings of a checkpoint, log-normalised expression, data loading.

Embeddings come from `grn_jax.inference.embed` (the training tokenisation, the
cell's own bucket, deterministic model), so a cell's features never depend on
its batch-mates. Cells without any vocabulary gene get NaN embeddings there;
`cell_embeddings` returns them with a mask, and every task counts and reports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import anndata
import numpy as np
import scipy.sparse as sp

from grn_jax.data.normalize import normalize_log1p
from grn_jax.inference.checkpoint import Pretrained
from grn_jax.inference.graph_sources import GraphSpec

POOLINGS = {"mean": "X_grn_mean", "cls": "X_grn_cls"}


def load_checkpoint(checkpoint: Union[str, Path, Pretrained, None]) -> Optional[Pretrained]:
    """A `Pretrained` from a run directory / export folder (None stays None)."""
    if checkpoint is None or isinstance(checkpoint, Pretrained):
        return checkpoint
    from grn_jax.inference import load_model

    return load_model(checkpoint)


def read_data(data: Union[str, Path, anndata.AnnData]) -> anndata.AnnData:
    """The evaluation AnnData, in memory (tasks fit classifiers on all its cells anyway)."""
    if isinstance(data, anndata.AnnData):
        return data
    from grn_jax.data.ingest import read_h5ad

    return read_h5ad(Path(data))


def obs_column(adata: anndata.AnnData, key: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(obs[key] as strings, bool mask of cells that have a value); raises naming the column if absent.

    Cells with a missing or blank value are for the caller to leave out and count.
    """
    if key not in adata.obs.columns:
        raise ValueError(f"{what}: obs has no column {key!r}; columns: {list(adata.obs.columns)[:20]}")
    col = adata.obs[key]
    missing = col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy()
    return col.astype(str).to_numpy(), ~missing


def counts_matrix(adata: anndata.AnnData, layer: Optional[str] = None) -> sp.csr_matrix:
    """The counts (X or a layer) as float64 CSR."""
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"layer {layer!r} is not in the data; layers: {list(adata.layers)}")
    x = adata.layers[layer] if layer is not None else adata.X
    return sp.csr_matrix(x, dtype=np.float64)


def log_normalized(adata: anndata.AnnData, *, layer: Optional[str] = None, target_sum: float = 1e4,
                   normalized_input: bool = False) -> np.ndarray:
    """Dense float32 log1p(counts * target_sum / cell total) — the baselines' input ([cells, genes])."""
    x = counts_matrix(adata, layer)
    if normalized_input:
        return x.toarray().astype(np.float32)
    if x.nnz and (x.data < 0).any():
        raise ValueError("log_normalized: the counts hold negative values; pass raw counts or normalized_input=True")
    totals = np.asarray(x.sum(axis=1)).ravel()
    return normalize_log1p(x, np.where(totals > 0, totals, 1.0), target_sum).toarray().astype(np.float32)


def cell_embeddings(pre: Pretrained, adata: anndata.AnnData, *, graph: GraphSpec = GraphSpec(),
                    pooling: str = "mean", batch_size: int = 64,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(frozen embedding [cells, D] float32, bool mask of cells that have one) of `pre` on `adata`.

    `pooling`: "mean" (mean of the cell's gene-token hidden states; the papers'
    choice) or "cls". The AnnData is not modified. `progress`: a progress bar on stderr (embedding
    thousands of cells takes minutes on a CPU; evaluations would otherwise print nothing meanwhile).
    """
    from grn_jax.inference import embed

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {sorted(POOLINGS)}, got {pooling!r}")
    work = anndata.AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var.copy(),
                           layers={k: v for k, v in adata.layers.items()})
    if adata.raw is not None:
        work.raw = adata.raw
    embed(pre, work, graph=graph, batch_size=batch_size, progress=progress, log=lambda m: None)
    emb = np.asarray(work.obsm[POOLINGS[pooling]], np.float32)
    return emb, np.isfinite(emb).all(axis=1)


def graph_for(pre: Pretrained, graph: GraphSpec) -> GraphSpec:
    """`graph` if `pre` was trained with per-cell graphs, else no graph (e.g. a vanilla ablation trained without)."""
    trained_with = pre.tokenization.get("graph") not in (None, "none")
    return graph if trained_with else GraphSpec()
