"""Per-cell normalisation to a fixed total (GREmLN: 1e6) followed by log1p, on CSR data in place of a copy."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def normalize_log1p(block: sp.csr_matrix, totals: np.ndarray, target_sum: float = 1e6) -> sp.csr_matrix:
    """log1p(x * target_sum / total_cell) on the stored entries (float64); zeros stay implicit.

    `totals` are the cells' total counts over all genes (sequencing depth), which
    may exceed the row sums of `block` when it holds only vocabulary genes.
    """
    totals = np.asarray(totals, np.float64)
    if totals.shape != (block.shape[0],):
        raise ValueError(f"totals has shape {totals.shape}, block has {block.shape[0]} rows")
    if np.any(totals[np.diff(block.indptr) > 0] <= 0):
        raise ValueError("a cell with expressed genes has total <= 0; totals must be the cells' positive total counts")
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    data = np.log1p(block.data.astype(np.float64) * scale[rows])
    return sp.csr_matrix((data, block.indices, block.indptr), shape=block.shape)
