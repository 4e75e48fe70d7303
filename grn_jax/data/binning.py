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

where t_j = #{values of the cell < v_j}. No per-cell loop and, for integer
counts, no sort: t_j comes from per-cell histograms over the block's distinct
values (`row_ranks`, method "hist"); other data use one sort by (row, value)
(method "sort"). Both give identical results.
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


def _value_codes(data: np.ndarray, n_rows: int = 1, max_table: int = 1 << 22):
    """Order-preserving integer codes 0..K-1 of the values, without sorting when integral.

    Small integer counts are their own codes (K = max + 1) when the n_rows x K
    histogram stays within twice the entries; otherwise codes are compressed to
    the distinct values present.
    """
    if data.size == 0:
        return np.zeros(0, np.int64), 0
    integral = np.issubdtype(data.dtype, np.integer) or np.array_equal(data, np.rint(data))
    top = float(np.max(data))
    if integral and n_rows * (top + 1) <= max(2 * data.size, 1 << 16):
        return (data if np.issubdtype(data.dtype, np.integer) else data.astype(np.int32)), int(top) + 1
    if integral and top < max_table:
        ints = data if np.issubdtype(data.dtype, np.integer) else data.astype(np.int32)
        present = np.zeros(int(top) + 1, np.int32)
        present[ints] = 1
        table = np.cumsum(present, dtype=np.int32) - 1
        return table.take(ints), int(table[-1]) + 1
    codes = np.unique(data, return_inverse=True)[1].astype(np.int64)
    return codes, int(codes.max()) + 1  # int64 here; callers cast as needed


def row_ranks(indptr: np.ndarray, data: np.ndarray, method: str = "auto", max_hist: int = 1 << 24):
    """Per stored entry, in CSR order: (#entries of its row < it, #entries of its row == it, incl. itself).

    "hist": per-row histograms over the block's distinct values (n_rows x K
    counts, no sort); "sort": one sort by (row, value); "auto" picks "hist" when
    n_rows x K <= max_hist.
    """
    n_rows = len(indptr) - 1
    counts = np.diff(indptr)
    codes, k = _value_codes(data, n_rows)
    if method not in ("auto", "hist", "sort"):
        raise ValueError(f"method must be 'auto', 'hist' or 'sort', got {method!r}")
    if k == 0:  # no stored entry at all (a block of empty cells): nothing to rank
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    if method == "hist" or (method == "auto" and n_rows * k <= min(max_hist, 2**31 - 1)):
        flat = np.repeat(np.arange(0, n_rows * k, k, dtype=np.int32), counts)  # int32: n_rows * k < 2**31
        flat += codes.astype(np.int32, copy=False)
        hist = np.bincount(flat, minlength=n_rows * k).astype(np.int32)
        below = np.cumsum(hist.reshape(n_rows, k), axis=1, dtype=np.int32).ravel() - hist  # exclusive prefix
        return below.take(flat), hist.take(flat)
    order = row_value_order(indptr, codes.astype(np.int64))
    sc = codes.take(order)
    nnz = len(sc)
    row_start = np.repeat(indptr[:-1], counts)
    pos = np.arange(nnz, dtype=np.int64)
    new_group = np.empty(nnz, bool)
    new_group[:1] = True
    np.not_equal(sc[1:], sc[:-1], out=new_group[1:])
    new_group[indptr[:-1][counts > 0]] = True
    first = np.maximum.accumulate(np.where(new_group, pos, 0))
    ends = np.flatnonzero(np.append(new_group[1:], True))  # last slot of each group
    group_id = np.cumsum(new_group) - 1
    size = (ends - np.flatnonzero(new_group) + 1).take(group_id)
    less, equal = np.empty(nnz, np.int64), np.empty(nnz, np.int64)
    less[order] = first - row_start
    equal[order] = size
    return less, equal


def bins_from_ranks(less: np.ndarray, m: np.ndarray, n_bins: int) -> np.ndarray:
    """Rank bins from t = #smaller values in the cell and m = #expressed values in the cell."""
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    m1 = np.maximum(m - 1, 1).astype(np.float64)
    # floor((t (n_bins-1) - 1) / (m-1)) is exact in float64 for these integers; t = 0 gives -1 -> bin 1
    above = np.floor((less * (n_bins - 1) - 1) / m1)
    return np.clip(1 + above, 1, n_bins - 1).astype(np.int32)


def top_k_mask(indptr: np.ndarray, data: np.ndarray, less: np.ndarray, equal: np.ndarray, k: int) -> np.ndarray:
    """Keep the k highest values of each row (ties at the cut: higher storage position, i.e. gene index, first).

    An entry is kept iff (#entries of its row greater than it) + (#equal entries at
    higher positions) < k. A whole tie group is kept iff less >= m - k; only the
    group straddling the cut needs the within-group order.
    """
    counts = np.diff(indptr)
    thr = np.repeat(counts - k, counts)
    keep = less >= thr
    cut = np.flatnonzero(~keep & (less + equal > thr))
    if len(cut):
        # a row has at most one straddling group, so its cut entries are that group, in gene order
        rows = np.searchsorted(indptr, cut, side="right") - 1
        last = np.flatnonzero(np.append(rows[1:] != rows[:-1], True))  # last cut entry of each row
        group_end = np.repeat(last, np.diff(np.append(-1, last)))
        ahead = group_end - np.arange(len(cut))  # equal entries at higher positions
        greater = thr[cut] + k - less[cut] - equal[cut]  # m - less - equal
        keep[cut] = greater + ahead < k
    return keep


def rank_bins(values: sp.csr_matrix, n_bins: int, method: str = "auto") -> sp.csr_matrix:
    """Rank bins of every stored entry of `values` (a CSR of expressed values > 0), same sparsity, int32."""
    values = sp.csr_matrix(values)
    values.eliminate_zeros()
    if values.data.size and np.min(values.data) < 0:
        raise ValueError("rank_bins expects non-negative expression values")
    less, _ = row_ranks(values.indptr, values.data, method)
    m = np.repeat(np.diff(values.indptr), np.diff(values.indptr))
    bins = bins_from_ranks(less, m, n_bins)
    return sp.csr_matrix((bins, values.indices.copy(), values.indptr.copy()), shape=values.shape)
