"""Task metrics against hand-computed values on toy inputs (and sklearn / numpy where independent)."""

import numpy as np
import pytest

from grn_jax.tasks import metrics as M


def test_classification_scores_hand_computed():
    s = M.classification_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    # a: P=1, R=1/2, F=2/3; b: P=2/3, R=1, F=4/5
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["recall"] == pytest.approx((0.5 + 1) / 2)
    assert s["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_classification_scores_refuses_mismatch():
    with pytest.raises(ValueError, match="y_true"):
        M.classification_scores([0, 1], [0])


def test_top_k_auc_hand_computed():
    labels = np.array(["x", "y", "z"])
    scores = np.array([[0.7, 0.2, 0.1],    # true x: rank 1
                       [0.6, 0.3, 0.1]])   # true y: rank 2
    # top-1 = 1/2, top-2 = 1, top-3 = 1 -> (0.5 + 1 + 1) / 3
    assert M.top_k_auc(["x", "y"], scores, labels) == pytest.approx(2.5 / 3)
    assert M.top_k_auc(["x", "x"], scores, labels) == pytest.approx(1.0)


def test_top_k_auc_random_scores_near_chance():
    rng = np.random.default_rng(0)
    c, n = 5, 20000
    y = rng.integers(0, c, n)
    assert M.top_k_auc(y, rng.random((n, c)), np.arange(c)) == pytest.approx((c + 1) / (2 * c), abs=0.01)


def test_top_k_auc_refuses_unscored_label():
    with pytest.raises(ValueError, match="no score column"):
        M.top_k_auc(["q"], np.ones((1, 2)), ["x", "y"])


def test_ranking_scores_hand_computed():
    y, s = [1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1]
    r = M.ranking_scores(y, s)
    assert r["auroc"] == pytest.approx(3 / 4)            # 3 of 4 positive-negative pairs ordered
    assert r["ap"] == pytest.approx((1 + 2 / 3) / 2)     # precision 1 at the 1st hit, 2/3 at the 2nd
    with pytest.raises(ValueError, match="positives and negatives"):
        M.ranking_scores([1, 1], [0.1, 0.2])


def test_bootstrap_ci_brackets_the_estimate_and_is_degenerate_when_perfect():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(30), 4)
    y = np.tile([1, 0, 1, 0], 30)
    s = y + rng.normal(0, 0.8, y.size)
    point = M.ranking_scores(y, s)["auroc"]
    lo, hi, used = M.bootstrap_ci(lambda a, b: M.ranking_scores(a, b)["auroc"], y, s, groups, n_boot=100)
    assert lo < point < hi and used == 100
    lo, hi, _ = M.bootstrap_ci(lambda a, b: M.ranking_scores(a, b)["auroc"], y, y.astype(float), groups, n_boot=50)
    assert lo == hi == 1.0


def test_pcc_delta_matches_numpy_and_is_nan_for_constants():
    rng = np.random.default_rng(2)
    p, t = rng.normal(size=50), rng.normal(size=50)
    assert M.pcc_delta(p, t) == pytest.approx(np.corrcoef(p, t)[0, 1])
    assert np.isnan(M.pcc_delta(np.ones(5), t[:5]))


def test_enrichment_ratio_and_permutation_null_hand_computed():
    phi, tf = np.array([2.0, 2.0, 1.0, 1.0]), np.array([True, True, False, False])
    assert M.enrichment_ratio(phi, tf) == pytest.approx(2.0)
    # 6 equally likely TF pairs; only the observed one reaches rho = 2: p -> (1 + n/6) / (1 + n)
    out = M.permutation_null(phi, tf, n_perm=3000, seed=0)
    assert out["rho"] == pytest.approx(2.0)
    assert out["p_value"] == pytest.approx(1 / 6, abs=0.03)
    # the null mean: 1/6 * 2 + 1/6 * 1/2 + 4/6 * 1
    assert out["null_mean"] == pytest.approx((2 + 0.5 + 4) / 6, abs=0.05)
    with pytest.raises(ValueError, match="TFs and non-TFs"):
        M.enrichment_ratio(phi, np.zeros(4, bool))


def test_summarize_uses_sample_sd():
    s = M.summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == pytest.approx(1.0) and s["n"] == 3
    assert M.summarize([5.0])["sd"] == 0.0
