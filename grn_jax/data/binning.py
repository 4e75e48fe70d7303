"""Per-cell rank binning of expressed genes, vectorised over a CSR matrix.

Definition (the per-cell `np.quantile` rule, made exact). For a cell whose m
expressed values sorted ascending are v_0 <= ... <= v_{m-1}, let
Q(p) be their linear-interpolation quantile (numpy's default) and the bin edges
q_k = Q(k / (n_bins - 1)) for k = 1..n_bins-2. Then

    bin(v) = 1 + #{k : q_k < v}        (zero expression -> bin 0)

so bins run 1..n_bins-1, grow with expression, and equal values share a bin.
Because q_k lies between v_floor(h) and v_ceil(h) with h = k (m-1)/(n_bins-1),
q_k < v_j exactly when floor(h) < t_j, where t_j is the first sorted position
holding the value v_j. Hence, in integers only,

    bin = 1                                                   if t_j = 0
    bin = 1 + min(n_bins - 2, (t_j (n_bins-1) - 1) // (m-1))   otherwise,

which needs one sort of the CSR entries by (row, value) and no per-cell loop.
(Floating-point `np.quantile` can round an edge that should equal v_j to just
below it; the integer form is the exact rule, and tests check both.)
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def row_value_order(indptr: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Permutation sorting CSR entries by (row, value); ties keep storage (gene-index) order.

    Values are replaced by integer codes of the same order (the counts themselves
    when integral, else their rank among the block's distinct values). When codes
    and rows fit 16 bits (counts < 65536, blocks < 65536 cells) this is two stable
    O(n) radix passes (by code, then by row); otherwise one sort of a packed int64
    key. Both give the same permutation.
    """
    n_rows = len(indptr) - 1
    nnz = len(data)
    if nnz == 0:
        return np.zeros(0, np.int64)
    counts = np.diff(indptr)
    integral = np.issubdtype(data.dtype, np.integer) or (float(np.max(data)) < 2**31
                                                         and np.array_equal(data, np.rint(data)))
    codes = data if integral else np.unique(data, return_inverse=True)[1]
    n_codes = int(codes.max()) + 1
    if n_codes <= 2**16 and n_rows <= 2**16:
        small = np.uint8 if n_codes <= 2**8 else np.uint16
        by_code = np.argsort(codes.astype(small), kind="stable")
        rows16 = np.repeat(np.arange(n_rows, dtype=np.uint16), counts)
        by_row = np.argsort(rows16.take(by_code), kind="stable")
        return by_code.take(by_row)
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), counts)
    codes = codes.astype(np.int64)
    if n_rows * n_codes * nnz < 2**62:
        key = (rows * n_codes + codes) * nnz + np.arange(nnz, dtype=np.int64)
        return np.argsort(key, kind="stable")
    return np.lexsort((codes, rows))  # key would overflow int64: slower, same order


def sorted_rank_bins(indptr: np.ndarray, sorted_data: np.ndarray, n_bins: int) -> np.ndarray:
    """Bins (int32) of CSR entries already sorted by (row, value); all entries must be > 0."""
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    nnz = len(sorted_data)
    if nnz == 0:
        return np.zeros(0, np.int32)
    counts = np.diff(indptr)
    row_start = np.repeat(indptr[:-1], counts)
    pos = np.arange(nnz, dtype=row_start.dtype)
    new_group = np.empty(nnz, bool)
    new_group[0] = True
    np.not_equal(sorted_data[1:], sorted_data[:-1], out=new_group[1:])
    new_group[indptr[:-1][counts > 0]] = True
    t = np.maximum.accumulate(np.where(new_group, pos, 0)) - row_start  # first sorted slot of the value
    m1 = np.repeat(np.maximum(counts - 1, 1).astype(np.float64), counts)
    # floor((t (n_bins-1) - 1) / (m-1)) is exact in float64 for these small integers; t = 0 gives -1 -> bin 1
    above = np.floor((t * (n_bins - 1) - 1) / m1)
    return np.clip(1 + above, 1, n_bins - 1).astype(np.int32)


def rank_bins(values: sp.csr_matrix, n_bins: int) -> sp.csr_matrix:
    """Rank bins of every stored entry of `values` (a CSR of expressed values > 0), same sparsity, int32."""
    values = sp.csr_matrix(values)
    values.eliminate_zeros()
    if values.data.size and np.min(values.data) < 0:
        raise ValueError("rank_bins expects non-negative expression values")
    order = row_value_order(values.indptr, values.data)
    bins_sorted = sorted_rank_bins(values.indptr, values.data[order], n_bins)
    bins = np.empty_like(bins_sorted)
    bins[order] = bins_sorted
    return sp.csr_matrix((bins, values.indices.copy(), values.indptr.copy()), shape=values.shape)
