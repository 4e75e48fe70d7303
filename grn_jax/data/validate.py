"""Input validation: fail once, clearly, naming the problem, the offending cell/gene and the fix."""

from __future__ import annotations

from typing import Sequence

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
                expect_counts: bool, integer_tolerance: float = 0.0, where: str = "X") -> None:
    """Raise on non-finite, negative or (when counts are expected) non-integer stored values of a CSR block."""
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
            raise ValueError(f"non-integer value in {where} where raw counts are expected: {locate(bad)}; point "
                             "ingest at the counts (ingest.layer / ingest.use_raw) or set "
                             "ingest.normalized_input=True for already-normalised data")
