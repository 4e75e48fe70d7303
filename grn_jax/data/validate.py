"""Input validation: fail once, clearly, naming the problem, the offending cell/gene and the fix."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp


def check_gene_names(gene_names: Sequence[str], where: str = "var_names") -> None:
    """Raise on an empty gene list or duplicate gene names."""
    names = np.asarray(gene_names).astype(str)
    if names.size == 0:
        raise ValueError(f"the matrix has no genes ({where} is empty); nothing to tokenise")
    uniq, first, counts = np.unique(names, return_index=True, return_counts=True)
    if np.any(counts > 1):
        dup = np.flatnonzero(counts > 1)
        examples = [f"{str(uniq[i])!r} x{int(counts[i])}" for i in dup[:5]]
        raise ValueError(f"{len(dup)} duplicate gene name(s) in {where}: {', '.join(examples)}; make them unique "
                         "(anndata.AnnData.var_names_make_unique) or key genes by Ensembl id (ingest.gene_column)")


def check_block(block: sp.csr_matrix, row_offset: int, cell_names: Sequence[str], gene_names: Sequence[str], *,
                expect_counts: bool, integer_tolerance: float = 0.0, where: str = "X",
                counts_fix: Optional[str] = None) -> None:
    """Raise on non-finite, negative or (when counts are expected) non-integer stored values of a CSR block.

    counts_fix: what the user should do about non-integer values (default: prepare's ingest options).
    """
    data = block.data
    if data.size == 0:
        return

    def locate(mask: np.ndarray) -> str:
        k = int(np.flatnonzero(mask)[0])
        row = int(np.searchsorted(block.indptr, k, side="right") - 1)
        col = int(block.indices[k])
        cell = row_offset + row
        return (f"cell {cell} ({str(cell_names[cell])!r}), gene {col} ({str(gene_names[col])!r}) has value "
                f"{data[k].item()!r}; "
                f"{int(mask.sum())} such value(s) in cells {row_offset}..{row_offset + block.shape[0] - 1}")

    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            raise ValueError(f"non-finite value in {where}: {locate(bad)}; remove or impute NaN/inf before ingest")
    bad = data < 0
    if bad.any():
        raise ValueError(f"negative value in {where}: {locate(bad)}; expression must be >= 0 "
                         "(were these scaled/centred values? ingest raw counts or a non-negative layer)")
    if expect_counts and np.issubdtype(data.dtype, np.floating):
        bad = np.abs(data - np.rint(data)) > integer_tolerance
        if bad.any():
            fix = counts_fix or ("point ingest at the counts (ingest.layer / ingest.use_raw) or set "
                                 "ingest.normalized_input=True for already-normalised data")
            raise ValueError(f"non-integer value in {where} where raw counts are expected: {locate(bad)}; {fix}")


def check_counts_matrix(matrix, gene_names: Sequence[str], cell_names: Sequence[str], *, where: str = "X",
                        expect_counts: bool = True, counts_fix: Optional[str] = None,
                        chunk_cells: int = 4096) -> None:
    """The checks `prepare` makes, for a whole in-memory matrix (cells x genes; `grn infer`, `grn assign`).

    Raises on: no cells, no genes or duplicate gene names, non-finite / negative /
    (when counts are expected) non-integer values, an all-zero matrix. Reads in row
    chunks, so a dense matrix is never copied whole.
    """
    n_cells, n_genes = int(matrix.shape[0]), int(matrix.shape[1])
    if n_cells == 0:
        raise ValueError(f"{where} has no cells (0 rows); give a file with cells")
    check_gene_names(gene_names, f"{where} gene names")
    if len(gene_names) != n_genes or len(cell_names) != n_cells:
        raise ValueError(f"{where} is {n_cells} x {n_genes} but has {len(cell_names)} cell and {len(gene_names)} "
                         "gene names")
    nnz = 0
    for start in range(0, n_cells, chunk_cells):
        block = matrix[start:start + chunk_cells]
        block = sp.csr_matrix(block if sp.issparse(block) else np.asarray(block))
        block.eliminate_zeros()
        check_block(block, start, cell_names, gene_names, expect_counts=expect_counts, where=where,
                    counts_fix=counts_fix)
        nnz += block.nnz
    if nnz == 0:
        raise ValueError(f"{where} ({n_cells} cells x {n_genes} genes) is all zeros; point at the layer that holds "
                         "the counts")
