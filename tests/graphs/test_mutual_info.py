"""Mutual-information estimators: closed forms, hand-computed partitions, a float64 reference, each other."""

import numpy as np
import pytest
from scipy import special, stats

from grn_jax.graphs import mutual_info as mi
from grn_jax.testing import assert_allclose, tolerance


@pytest.fixture(params=["numba", "numpy"])
def deep_path(request, monkeypatch):
    """Both implementations of the adaptive grid's deep trees: the compiled kernel and the numpy fallback."""
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setattr(mi, "_NUMBA_DISABLED", request.param == "numpy")
    mi._deep_kernel.cache_clear()
    yield request.param
    mi._deep_kernel.cache_clear()


def _gaussian_pairs(rng, n, p, rho):
    z = rng.standard_normal((n, p))
    w = rho * z + np.sqrt(1.0 - rho * rho) * rng.standard_normal((n, p))
    return z, w


def test_copula_mi_matches_float64_reference_across_block_padding():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 23)) @ rng.standard_normal((23, 23))  # correlated genes
    x[:, 5] = np.exp(x[:, 5])  # a monotone transform: same ranks, same copula MI
    z = mi.copula_scores(x)
    reg = np.array([0, 3, 7])
    # Reference in float64: normal scores of mid-ranks, Pearson correlation, closed form.
    s = special.ndtri((stats.rankdata(x, axis=0) / (x.shape[0] + 1.0)))
    r_ref = np.corrcoef(s.T)[reg]
    ref = -0.5 * np.log1p(-np.minimum(r_ref ** 2, 1 - 1e-7))
    for block in (7, 23, 512):  # 23 % 7 != 0 exercises the padded last block
        got = mi.gaussian_copula_mi(z[:, reg], z, block=block)
        off = np.ones_like(got, bool)
        off[np.arange(3), reg] = False  # self-MI saturates at the float32 clamp; compared separately
        assert_allclose(got[off], ref[off], np.float32, err_msg=f"block={block}")


@pytest.mark.parametrize("rho", [0.2, 0.5, 0.8])
def test_copula_mi_agrees_with_gaussian_closed_form(rho):
    rng = np.random.default_rng(1)
    n = 20_000
    z, w = _gaussian_pairs(rng, n, 1, rho)
    s = mi.copula_scores(np.concatenate([z, w], axis=1))
    got = float(mi.gaussian_copula_mi(s[:, :1], s[:, 1:])[0, 0])
    se = rho / np.sqrt(n)  # delta method: sd(MI_hat) ~ |rho| / sqrt(N)
    assert abs(got - mi.gaussian_mi_closed_form(rho)) < 4 * se


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8])
def test_adaptive_partitioning_agrees_with_gaussian_closed_form(rho):
    rng = np.random.default_rng(2)
    z, w = _gaussian_pairs(rng, 8000, 6, rho)
    got = mi.adaptive_partition_mi(mi.rank_transform(z, ties="random"), mi.rank_transform(w, ties="random"))
    # 6 pairs of 8000 cells: sd of the mean ~ 0.005; the estimator's small-sample bias is ~ -0.005 at rho 0.8.
    assert abs(got.mean() - mi.gaussian_mi_closed_form(rho)) < 0.02


def test_adaptive_partitioning_hand_computed_cases():
    n8 = np.arange(8)[:, None]
    # y = x, N = 8: the forced root split leaves two 4-point cells; each is uniform over its 2x2
    # sub-quadrants by the chi-square test (chi2 = 4 < 7.815), so a leaf worth 4 log(4 / (4 * 4)):
    # MI = 2 * 4 log(1/4) / 8 + log 8 = log 2.
    assert_allclose(mi.adaptive_partition_mi(n8, n8), [np.log(2)], np.float64)
    assert_allclose(mi.adaptive_partition_mi(n8, 7 - n8), [np.log(2)], np.float64)  # anti-diagonal
    # y = x, N = 16: the 8-point cells fail uniformity (chi2 = 8 > 7.815) and split into four 4-point
    # leaves 4 log(4 / 16): MI = 4 * 4 log(1/4) / 16 + log 16 = log 4.
    n16 = np.arange(16)[:, None]
    assert_allclose(mi.adaptive_partition_mi(n16, n16), [np.log(4)], np.float64)
    # A 16-point "Latin" layout with one point per 4x4 block and 4 points per 8x8 quadrant: every cell
    # passes uniformity below the forced root split, so MI = 4 * 4 log(4 / 64) / 16 + log 16 = 0.
    x = np.arange(16)
    y = (x % 4) * 4 + x // 4
    assert np.all(np.bincount((x // 4) * 4 + y // 4, minlength=16) == 1)
    assert_allclose(mi.adaptive_partition_mi(x[:, None], y[:, None]), [0.0], np.float64)


def test_adaptive_partitioning_chunking_does_not_change_values():
    rng = np.random.default_rng(3)
    z, w = _gaussian_pairs(rng, 200, 9, 0.6)
    xr, yr = mi.rank_transform(z, ties="random"), mi.rank_transform(np.tanh(w), ties="random")
    whole = mi.adaptive_partition_mi(xr, yr)
    chunked = mi.adaptive_partition_mi(xr, yr, max_points=450)  # two pairs per chunk
    assert_allclose(chunked, whole, np.float64)
    single = [mi.adaptive_partition_mi(xr[:, [p]], yr[:, [p]])[0] for p in range(9)]
    assert_allclose(whole, single, np.float64)


def test_estimators_rank_pairs_alike(deep_path):
    rng = np.random.default_rng(4)
    n, g = 1500, 40
    base = rng.standard_normal((n, 1))
    strength = np.linspace(0.0, 1.5, g)
    x = base * strength + rng.standard_normal((n, g))
    x[:, ::3] = np.exp(x[:, ::3])  # monotone: ranks (and both MIs) unchanged in expectation
    reg = np.array([g - 1])
    gc = mi.gaussian_copula_mi(mi.copula_scores(x)[:, reg], mi.copula_scores(x))[0]
    ap = mi.adaptive_partition_mi_matrix(mi.rank_transform(x, ties="random"), reg)[0]
    others = np.arange(g - 1)
    rho = stats.spearmanr(gc[others], ap[others]).statistic
    assert rho > 0.9, rho
    assert ap[g - 1] == 0.0  # self pair left out


def test_rank_transform_ties():
    x = np.array([[0, 0], [0, 0], [2, 0], [0, 1], [5, 3]], float)
    assert_allclose(mi.rank_transform(x)[:, 0], [1, 1, 3, 1, 4], np.float64)  # mid-ranks, 0-based
    rng = np.random.default_rng(0)
    zeros = np.zeros((200, 2))
    zeros[:5] = 1.0
    r = mi.rank_transform(zeros, ties="random", rng=rng)
    assert sorted(r[:, 0]) == list(range(200)) and sorted(r[:, 1]) == list(range(200))
    assert set(r[:5, 0]) == set(range(195, 200))  # ties broken only within a value
    assert not np.array_equal(r[5:, 0], r[5:, 1])  # each gene gets its own tie-break order
    with pytest.raises(ValueError, match="ties"):
        mi.rank_transform(x, ties="first")


def test_bad_input_names_cell_and_gene():
    x = np.ones((10, 3))
    x[:, 0] = np.arange(10)
    x[:, 2] = np.arange(10) ** 2
    with pytest.raises(ValueError, match=r"constant.*\['B'\]"):
        mi.copula_scores(x, genes=["A", "B", "C"])
    x[:, 1] = np.arange(10)
    x[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 non-finite.*cell row 4, gene 'C'"):
        mi.copula_scores(x, genes=["A", "B", "C"])
    with pytest.raises(ValueError, match="at least 8 cells"):
        mi.adaptive_partition_mi(np.arange(5)[:, None], np.arange(5)[:, None])


def test_bucket_bounds_padding():
    for n in (1, 63, 64, 65, 300, 700, 1000, 4097, 20_000):
        b = mi.bucket(n)
        assert b >= n and b % 64 == 0 and (n < 256 or b <= 1.25 * n), (n, b)
    assert mi.bucket(700) == mi.bucket(650) == 768  # similar sizes share a compiled shape


def test_midranks_match_scipy_on_sparse_tied_and_signed_data():
    rng = np.random.default_rng(5)
    cases = [rng.poisson(0.4, (300, 12)).astype(np.float32),  # mostly zeros: the sparse path
             np.round(rng.standard_normal((80, 6)), 1),  # negatives and ties: the dense path
             np.zeros((6, 2)), np.ones((6, 2))]
    for x in cases:
        assert_allclose(mi.rank_transform(x), stats.rankdata(x, axis=0) - 1.0, np.float64)


@pytest.mark.parametrize("n", [8, 13, 100, 257])
def test_adaptive_histogram_path_matches_point_by_point_reference(n, deep_path):
    """The histogram top levels + resumed deep trees give the values of the point-by-point recursion."""
    rng = np.random.default_rng(n)
    z = rng.standard_normal((n, 12))
    w = 0.8 * z + rng.standard_normal((n, 12)) * np.linspace(0.05, 3.0, 12)  # deep (dependent) to shallow trees
    xr, yr = mi.rank_transform(z, ties="random", rng=rng), mi.rank_transform(w, ties="random", rng=rng)
    ref = np.array([_adaptive_mi_recursive(xr[:, p], yr[:, p]) for p in range(xr.shape[1])])
    tol = tolerance(np.float64)
    np.testing.assert_allclose(mi.adaptive_partition_mi(xr, yr), ref, rtol=tol.rtol, atol=tol.atol)
    grid = mi.adaptive_partition_mi_grid(xr, yr, max_points=5 * n)  # small chunks: several gene and deep chunks
    np.testing.assert_allclose(np.diag(grid), ref, rtol=tol.rtol, atol=tol.atol)
    i, j = 3, 7
    np.testing.assert_allclose(grid[i, j], _adaptive_mi_recursive(xr[:, i], yr[:, j]), rtol=tol.rtol, atol=tol.atol)
    assert np.array_equal(grid, mi.adaptive_partition_mi_grid(xr, yr))  # chunking never changes the bits


def _adaptive_mi_recursive(x, y, chi2=mi.CHI2_3DOF_P05):
    """ARACNe adaptive partitioning written as the plain recursion over cells (one pair, Python loops):
    the definition, independent of the histogram, Morton-order and vectorised paths."""
    n = len(x)
    total = 0.0

    def leaf(k, wx, wy):
        return k * np.log(k / (wx * wy)) if k > 0 else 0.0

    def visit(idx, xlo, xhi, ylo, yhi, root):
        nonlocal total
        mx, my = (xlo + xhi) // 2, (ylo + yhi) // 2
        quads = [[i for i in idx if (x[i] >= mx) == qx and (y[i] >= my) == qy] for qx in (0, 1) for qy in (0, 1)]
        e = len(idx) / 4.0
        if not root and sum((len(q) - e) ** 2 for q in quads) / e <= chi2:
            total += leaf(len(idx), xhi - xlo, yhi - ylo)  # uniform: a leaf
            return
        for (qx, qy), q in zip(((0, 0), (0, 1), (1, 0), (1, 1)), quads):
            bx = (mx, xhi) if qx else (xlo, mx)
            by = (my, yhi) if qy else (ylo, my)
            if len(q) <= 2:
                total += leaf(len(q), bx[1] - bx[0], by[1] - by[0])
            else:
                visit(q, *bx, *by, root=False)

    visit(list(range(n)), 0, n, 0, n, root=True)
    return total / n + np.log(n)


@pytest.mark.parametrize("n", [8, 9, 16, 31, 64, 150, 301])
def test_adaptive_grid_matches_plain_recursion(n, deep_path):
    """Every path of the grid (depth-2 cumulative counts, depth-3 Morton-prefix counts, sorted Morton codes
    below) and the per-pair function against the recursive definition, for independent to deterministic pairs,
    whatever the chunking."""
    rng = np.random.default_rng(100 + n)
    z = rng.standard_normal((n, 4))
    noise = np.array([0.0, 0.1, 0.5, 1.0, 3.0, 100.0])
    w = np.concatenate([z[:, :1] + noise * rng.standard_normal((n, noise.size)),
                        np.sin(4 * z[:, 1:2]) + 0.05 * rng.standard_normal((n, 1)), -z[:, 2:3]], axis=1)
    xr, yr = mi.rank_transform(z, ties="random", rng=rng), mi.rank_transform(w, ties="random", rng=rng)
    ref = np.array([[_adaptive_mi_recursive(xr[:, i], yr[:, j]) for j in range(yr.shape[1])]
                    for i in range(xr.shape[1])])
    tol = tolerance(np.float64)
    grid = mi.adaptive_partition_mi_grid(xr, yr)
    np.testing.assert_allclose(grid, ref, rtol=tol.rtol, atol=tol.atol)
    for max_points in (n, 3 * n + 1, 64 * n):  # gene chunks and deep-pair chunks of every size: same bits
        assert np.array_equal(mi.adaptive_partition_mi_grid(xr, yr, max_points=max_points), grid)
    i, j = np.divmod(np.arange(xr.shape[1] * yr.shape[1]), yr.shape[1])
    np.testing.assert_allclose(mi.adaptive_partition_mi(xr[:, i], yr[:, j]), ref.ravel(), rtol=tol.rtol,
                               atol=tol.atol)
    assert ref[0, 0] > ref[0, 5]
    if n >= 64:
        assert ref[0, 0] > np.log(8)  # y = x: the tree goes below depth 3 (the sorted Morton path ran)


@pytest.mark.parametrize("n", [9, 64, 300, 1000])
def test_adaptive_grid_compiled_kernel_gives_the_numpy_bits(n, monkeypatch):
    """The numba deep-tree kernel and the numpy path (Morton sort + binary searches) give the same bits on
    independent to deterministic pairs, whatever the chunking."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(200 + n)
    z = rng.standard_normal((n, 6))
    w = np.concatenate([z + s * rng.standard_normal((n, 6)) for s in (0.0, 0.05, 0.3, 1.0, 10.0)], axis=1)
    w[:, 0] = -z[:, 0]
    xr, yr = mi.rank_transform(z, ties="random", rng=rng), mi.rank_transform(w, ties="random", rng=rng)
    got = {}
    for path in ("numba", "numpy"):
        monkeypatch.setattr(mi, "_NUMBA_DISABLED", path == "numpy")
        mi._deep_kernel.cache_clear()
        assert (mi._deep_kernel() is None) == (path == "numpy")
        got[path] = [mi.adaptive_partition_mi_grid(xr, yr, max_points=m) for m in (n, 64 * n, 1 << 22)]
    mi._deep_kernel.cache_clear()
    for a, b in zip(got["numba"], got["numpy"]):
        assert np.array_equal(a, b)
    if n >= 64:
        assert got["numba"][0][0, 0] > np.log(8)  # y = x: trees below depth 3 (the kernel's generic levels)


def _lexsort_ranks(x, key):
    order = np.lexsort((key, x), axis=0)
    out = np.empty(x.shape, np.int32)
    np.put_along_axis(out, order, np.arange(x.shape[0], dtype=np.int32)[:, None], axis=0)
    return out


def test_random_tie_ranks_are_the_lexsort_order():
    """The sort-by-(dense rank + key / 2) ranks equal lexsort((key, x)) on tied, signed and constant data, through
    the collision fallback, the repeated-key and non-finite fallbacks, and with precomputed dense ranks."""
    rng = np.random.default_rng(7)
    cases = [np.where(rng.random((300, 30)) < 0.6, 0.0, rng.poisson(2.0, (300, 30))),
             np.round(rng.standard_normal((200, 5)), 1), np.zeros((9, 2)), np.array([[0.0], [-0.0], [1.0]]),
             np.array([[1.0, np.inf], [np.nan, 0.0], [0.0, 0.0]])]
    for x in cases:
        got = mi.rank_transform(x, ties="random", rng=np.random.default_rng(1))
        assert np.array_equal(got, _lexsort_ranks(x, np.random.default_rng(1).random(x.shape)))
        if np.isfinite(x).all():
            again = mi.rank_transform(x, ties="random", rng=np.random.default_rng(1), dense_GxN=mi.dense_ranks(x))
            assert np.array_equal(again, got)
    x = np.zeros((40, 1)) + np.arange(40)[:, None] // 20 * 1000.0  # two tie groups, dense ranks 0 and 1
    dense = mi.dense_ranks(x)
    key = rng.random(x.shape) * 0.5 + 0.5
    key[21] = np.nextafter(key[20], 2.0)  # distinct keys whose sums d + key / 2 round to the same value
    assert (dense[0, 20] + 0.5 * key[20]) == (dense[0, 21] + 0.5 * key[21])
    got = mi._random_tie_ranks(dense, key)
    assert np.array_equal(got.T, _lexsort_ranks(x, key))
    key[21] = key[20]  # a repeated key: the caller's lexsort decides
    assert mi._random_tie_ranks(dense, key) is None
