"""Ingest: open an `.h5ad` path or an `AnnData` and read its counts in CSR row chunks.

Counts come from X, a named layer, or `raw`. Sparse matrices stay sparse: a CSC
matrix in memory is converted to CSR (sparse to sparse), a dense matrix is cut
into CSR row chunks, and a file larger than the threshold is opened in backed
mode so only one chunk of rows is in memory at a time.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator, Optional, Union

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from grn_jax.data.config import IngestConfig


@dataclasses.dataclass
class CountsSource:
    """An opened counts matrix with its cell and gene annotations, read by row chunks."""

    matrix: object  # scipy CSR, numpy array, h5py dataset or anndata backed sparse dataset
    gene_names: np.ndarray  # str [G]
    obs: pd.DataFrame  # [N] cell annotations, index = cell names
    where: str  # "X", "layers/<name>" or "raw/X"
    backed: bool
    path: Optional[str] = None
    _file: Optional[h5py.File] = None

    @property
    def n_cells(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def n_genes(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def cell_names(self) -> np.ndarray:
        return np.asarray(self.obs.index).astype(str)

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows [start, stop) as CSR with explicit zeros removed and indices sorted."""
        block = self.matrix[start:stop]
        csr = block if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
        csr = sp.csr_matrix(csr)
        csr.eliminate_zeros()
        csr.sort_indices()
        return csr

    def chunks(self, chunk_cells: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """(first row, CSR block) for consecutive blocks of at most `chunk_cells` rows."""
        for start in range(0, self.n_cells, chunk_cells):
            yield start, self.rows(start, min(start + chunk_cells, self.n_cells))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _gene_names(var: pd.DataFrame, gene_column: Optional[str], where: str) -> np.ndarray:
    if gene_column is None:
        return np.asarray(var.index).astype(str)
    if gene_column not in var.columns:
        raise ValueError(f"ingest.gene_column={gene_column!r} is not a column of {where} var "
                         f"(columns: {list(var.columns)[:20]}); pass one of them or None for var_names")
    return np.asarray(var[gene_column]).astype(str)


def _prepare_in_memory(matrix, where: str):
    if sp.issparse(matrix):
        if matrix.format != "csr":
            matrix = sp.csr_matrix(matrix)  # sparse -> sparse; never densified
        return matrix
    if isinstance(matrix, np.ndarray):
        return matrix
    raise ValueError(f"{where} has unsupported type {type(matrix).__name__}; expected a scipy sparse matrix "
                     "or numpy array (convert dask/other arrays first)")


_UNREADABLE = (OSError, KeyError, TypeError)  # what h5py/anndata raise on a 0-byte, truncated or foreign file


def _unreadable(path, err: BaseException) -> ValueError:
    msg = " ".join(str(err).split()) or type(err).__name__
    return ValueError(f"cannot read {str(path)!r} as an .h5ad ({type(err).__name__}: {msg[:200]}); the file is "
                      "empty, truncated or not AnnData: re-write it with anndata's write_h5ad (or re-download it)")


def check_h5ad_path(path, what: str = "input file") -> Path:
    """`path` as an existing `.h5ad` file, or a ValueError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder; give an .h5ad file")
    if path.suffix != ".h5ad":
        raise ValueError(f"{what} {str(path)!r} is not an .h5ad file; convert it with anndata first")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (0 bytes); re-write or re-download it")
    return path


def read_h5ad(path, *, backed: Optional[str] = None, what: str = "input file") -> anndata.AnnData:
    """`anndata.read_h5ad`, with a missing, empty, truncated or non-AnnData file as one clear ValueError."""
    path = check_h5ad_path(path, what)
    try:
        return anndata.read_h5ad(path, backed=backed)
    except _UNREADABLE as e:
        raise _unreadable(path, e) from e


def open_counts(source: Union[str, os.PathLike, anndata.AnnData], cfg: IngestConfig = IngestConfig()) -> CountsSource:
    """Open the counts of `source` (an `.h5ad` path or an AnnData) as described by `cfg`."""
    cfg.validate()
    where = "raw/X" if cfg.use_raw else (f"layers/{cfg.layer}" if cfg.layer else "X")
    if isinstance(source, anndata.AnnData):
        adata = source
        if cfg.use_raw:
            if adata.raw is None:
                raise ValueError("ingest.use_raw=True but the AnnData has no .raw; use X or a layer instead")
            matrix, var = adata.raw.X, adata.raw.var
        elif cfg.layer:
            if cfg.layer not in adata.layers:
                raise ValueError(f"ingest.layer={cfg.layer!r} not found; layers: {list(adata.layers.keys())}")
            matrix, var = adata.layers[cfg.layer], adata.var
        else:
            matrix, var = adata.X, adata.var
        if matrix is None:
            raise ValueError(f"{where} of the AnnData is empty (None); point ingest at the layer holding counts")
        if getattr(adata, "isbacked", False) and not sp.issparse(matrix) and not isinstance(matrix, np.ndarray):
            return CountsSource(matrix, _gene_names(var, cfg.gene_column, where), adata.obs, where, True)
        return CountsSource(_prepare_in_memory(matrix, where), _gene_names(var, cfg.gene_column, where),
                            adata.obs, where, False)

    path = check_h5ad_path(source)
    backed = cfg.backed if cfg.backed is not None else path.stat().st_size > cfg.backed_threshold_gb * 2**30
    if not backed:
        return open_counts(read_h5ad(path), cfg)
    try:
        f = h5py.File(path, "r")
    except _UNREADABLE as e:
        raise _unreadable(path, e) from e
    try:
        obs = anndata.io.read_elem(f["obs"])
        if where not in f:
            raise ValueError(f"{str(path)!r} has no {where!r}; top-level groups: {list(f.keys())}, "
                             f"layers: {list(f['layers'].keys()) if 'layers' in f else []}")
        var = anndata.io.read_elem(f["raw/var"] if cfg.use_raw else f["var"])
        elem = f[where]
        if isinstance(elem, h5py.Dataset):
            matrix = elem  # dense on disk; read by row slices
        else:
            enc = elem.attrs.get("encoding-type", "")
            if enc != "csr_matrix":
                raise ValueError(f"{where} in {str(path)!r} is stored as {enc or 'unknown'}; backed reading needs "
                                 "CSR (rows of cells). Rewrite it with adata.X = scipy.sparse.csr_matrix(adata.X)")
            matrix = anndata.io.sparse_dataset(elem)
    except _UNREADABLE as e:
        f.close()
        raise _unreadable(path, e) from e
    except Exception:
        f.close()
        raise
    return CountsSource(matrix, _gene_names(var, cfg.gene_column, where), obs, where, True, str(path), f)
