"""Rank binning against independent oracles: exact rational quantiles and numpy's per-cell loop."""

from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp

from grn_jax.data import normalize_log1p, rank_bins, row_ranks, top_k_mask


def fraction_bins(row, n_bins):
    """Oracle: bin = 1 + #{k in 1..n_bins-2 : Q(k/(n_bins-1)) < v}, Q in exact rational arithmetic."""
    v = sorted(Fraction(float(x)) for x in row)
    m = len(v)
    out = []
    for x in row:
        x = Fraction(float(x))
        c = 0
        for k in range(1, n_bins - 1):
            h = Fraction(k * (m - 1), n_bins - 1)
            lo = int(h)
            q = v[lo] + ((h - lo) * (v[lo + 1] - v[lo]) if lo + 1 < m else 0)
            c += q < x
        out.append(1 + c)
    return out


def _csr(rows):
    return sp.csr_matrix(np.array(rows, dtype=np.float64))


@pytest.mark.parametrize("n_bins", [2, 3, 7, 10, 100])
def test_matches_exact_rational_oracle_with_ties(n_bins):
    rng = np.random.default_rng(n_bins)
    x = rng.integers(1, 6, size=(40, 30)) * (rng.random((40, 30)) < 0.6)  # many ties
    b = rank_bins(sp.csr_matrix(x.astype(float)), n_bins)
    for i in range(x.shape[0]):
        nz = np.flatnonzero(x[i])
        got = b[i, nz].toarray().ravel()
        assert got.tolist() == fraction_bins(x[i, nz], n_bins), f"cell {i}"


def test_hand_computed_cell():
    # 5 expressed values, n_bins = 5: edges q_k = Q(k/4), k=1..3 -> h = 1, 2, 3 -> v_1, v_2, v_3
    # values sorted 1,2,3,4,5 -> edges 2,3,4: bins 1 + #{edges < v} = 1,1,2,3,4
    b = rank_bins(_csr([[0, 5, 1, 0, 3, 2, 4]]), 5).toarray()[0]
    assert b.tolist() == [0, 4, 1, 0, 2, 1, 3]


def test_edge_cases_all_zero_single_gene_ties():
    x = _csr([[0, 0, 0, 0], [0, 7, 0, 0], [2, 2, 2, 2], [1, 3, 3, 0]])
    b = rank_bins(x, 100).toarray()
    assert b[0].tolist() == [0, 0, 0, 0]          # all-zero cell: nothing expressed
    assert b[1].tolist() == [0, 1, 0, 0]          # one expressed gene: lowest expressed bin
    assert b[2].tolist() == [1, 1, 1, 1]          # all tied: one bin
    assert b[3, 1] == b[3, 2] and b[3, 1] > b[3, 0] > 0   # ties share a bin, order kept
    # sorted 1,3,3 (m=3): q_k = Q(k/99) < 3 iff floor(2k/99) < 1 iff k <= 49 -> bin 50
    assert b[3, 1] == 50


def test_bins_range_and_monotone():
    rng = np.random.default_rng(1)
    x = sp.random(50, 200, density=0.3, format="csr", random_state=2)
    x.data = rng.lognormal(size=x.nnz)
    b = rank_bins(x, 100)
    assert b.data.min() >= 1 and b.data.max() <= 99
    for i in range(50):
        vals = x[i].toarray().ravel()
        bins = b[i].toarray().ravel()
        nz = vals > 0
        order = np.argsort(vals[nz])
        assert np.all(np.diff(bins[nz][order]) >= 0)


def test_agrees_with_numpy_quantile_loop_except_float_rounding():
    """The np.quantile loop (public GREmLN approach) differs only where float rounding of an edge bites."""
    rng = np.random.default_rng(3)
    n_bins = 51
    x = rng.integers(1, 40, size=(200, 120)) * (rng.random((200, 120)) < 0.5)
    b = rank_bins(sp.csr_matrix(x.astype(float)), n_bins)
    total = disagree = 0
    for i in range(x.shape[0]):
        nz = np.flatnonzero(x[i])
        v = x[i, nz].astype(float)
        q = np.quantile(v, np.linspace(0, 1, n_bins)[1:-1])
        ref = 1 + np.searchsorted(q, v, side="left")
        got = b[i, nz].toarray().ravel()
        bad = np.flatnonzero(got != ref)
        total += len(v)
        for j in bad:  # a mismatch must come from an edge within rounding of a data value
            disagree += 1
            assert np.min(np.abs(q - v[j])) < 1e-9 * max(1.0, v[j]), f"cell {i} value {v[j]}"
    assert total > 10_000 and disagree < total * 0.01


def test_normalisation_does_not_change_bins_and_is_deterministic():
    rng = np.random.default_rng(4)
    x = sp.csr_matrix((rng.integers(1, 50, size=(30, 80)) * (rng.random((30, 80)) < 0.4)).astype(float))
    totals = np.asarray(x.sum(axis=1)).ravel() * 1.7  # depth over more genes than shown
    norm = normalize_log1p(x, totals, 1e6)
    np.testing.assert_allclose(norm.toarray(), np.log1p(x.toarray() * (1e6 / totals)[:, None]), rtol=1e-12)
    b1, b2 = rank_bins(x, 100), rank_bins(norm, 100)
    assert (b1 != b2).nnz == 0
    assert (rank_bins(x, 100) != b1).nnz == 0


@pytest.mark.parametrize("integral", [True, False])
def test_hist_and_sort_methods_agree(integral):
    rng = np.random.default_rng(5)
    x = sp.random(80, 150, density=0.4, format="csr", random_state=6)
    x.data = rng.integers(1, 12, x.nnz).astype(float) if integral else rng.integers(1, 12, x.nnz) * 0.37
    less_h, eq_h = row_ranks(x.indptr, x.data, "hist")
    less_s, eq_s = row_ranks(x.indptr, x.data, "sort")
    np.testing.assert_array_equal(less_h, less_s)
    np.testing.assert_array_equal(eq_h, eq_s)
    for i in range(5):  # against a direct count
        v = x.data[x.indptr[i]:x.indptr[i + 1]]
        np.testing.assert_array_equal(less_h[x.indptr[i]:x.indptr[i + 1]], (v[None, :] < v[:, None]).sum(1))
        np.testing.assert_array_equal(eq_h[x.indptr[i]:x.indptr[i + 1]], (v[None, :] == v[:, None]).sum(1))


def test_top_k_keeps_highest_and_breaks_ties_by_higher_gene_index():
    x = _csr([[5, 3, 3, 3, 1, 0], [1, 2, 0, 0, 0, 0]])
    less, eq = row_ranks(x.indptr, x.data)
    keep = top_k_mask(x.indptr, x.data, less, eq, 3)
    # row 0: 5 kept, then two of the three 3s: the higher gene indices 2 and 3
    assert x.indices[keep[:5].nonzero()[0]].tolist() == [0, 2, 3]
    assert keep[5:].all()


def test_top_k_matches_brute_force_on_random_ties():
    rng = np.random.default_rng(8)
    x = sp.csr_matrix((rng.integers(1, 4, size=(60, 40)) * (rng.random((60, 40)) < 0.7)).astype(float))
    less, eq = row_ranks(x.indptr, x.data)
    for k in (1, 5, 17, 40):
        keep = top_k_mask(x.indptr, x.data, less, eq, k)
        for i in range(x.shape[0]):
            lo, hi = x.indptr[i], x.indptr[i + 1]
            v = x.data[lo:hi]
            ranked = sorted(range(hi - lo), key=lambda j: (-v[j], -j))[:k]  # highest value, then higher gene
            assert sorted(ranked) == np.flatnonzero(keep[lo:hi]).tolist(), (k, i)
