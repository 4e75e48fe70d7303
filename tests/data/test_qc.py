"""QC bounds, keep-middle and min-genes, with every filtered cell attributed to one reason."""

import numpy as np

from grn_jax.data import QCConfig, qc_cells


def test_bounds_and_attribution():
    totals = np.array([500, 1500, 2000, 200_000, 5000, 3000])
    genes = np.array([900, 900, 100, 900, 600, 499])
    r = qc_cells(totals, genes, QCConfig())
    assert r.keep.tolist() == [False, True, False, False, True, False]
    assert r.report["filtered_by"] == {"total_counts_below_min": 1, "total_counts_above_max": 1,
                                       "outside_keep_middle": 0, "too_few_genes": 2}
    assert r.report["cells_kept"] + r.report["cells_filtered"] == 6


def test_keep_middle_90_percent():
    totals = np.arange(1, 101) * 1000.0  # 1k..100k
    r = qc_cells(totals, np.full(100, 1000), QCConfig(keep_middle=0.9))
    lo, hi = np.quantile(totals, [0.05, 0.95])
    assert r.report["keep_middle_bounds"] == [lo, hi]
    assert r.keep.sum() == ((totals >= lo) & (totals <= hi)).sum() == 90


def test_normalised_input_skips_count_bounds():
    r = qc_cells(np.array([1.0, 2.0]), np.array([600, 10]), QCConfig(), counts_are_raw=False)
    assert r.keep.tolist() == [True, False] and "not applied" in r.report["note"]
