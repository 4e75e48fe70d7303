"""The tasks' scoring on constructed features with known answers (no model): predictors and baselines are real."""

import numpy as np
import pytest

from grn_jax.tasks.annotation import annotation_scores
from grn_jax.tasks.edge_prediction import mask_cell_edges, pair_features, undirected_pairs
from grn_jax.tasks.metrics import pcc_delta
from grn_jax.tasks.perturbation import response_scores, reverse_scores
from grn_jax.tasks.probe import probe_scores
from grn_jax.tasks.splits import group_splits


def _clusters(n_per=20, k=3, d=8, sep=6.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"t{i}" for i in range(k)], n_per)
    centers = rng.normal(0, sep, (k, d))
    x = centers[np.repeat(np.arange(k), n_per)] + rng.normal(0, 1, (k * n_per, d))
    return x, labels


def test_annotation_scores_separable_vs_uninformative_features():
    x, labels = _clusters()
    noise = np.random.default_rng(5).normal(size=x.shape)
    table, details = annotation_scores({"good": x, "noise": noise, "pca": x}, labels, pca_methods=("pca",))
    assert table["good"]["macro_f1"]["mean"] == 1.0 and table["good"]["macro_f1"]["n"] == 3
    assert table["pca"]["macro_f1"]["mean"] == 1.0
    assert table["noise"]["macro_f1"]["mean"] < 0.7
    assert np.trace(np.array(details["confusion_split0"]["good"])) == details["split_sizes"][0][1]


def test_reverse_scores_lasso_and_top_k_auc():
    x, labels = _clusters(n_per=12, k=4)
    noise = np.random.default_rng(6).normal(size=x.shape)
    table, _ = reverse_scores({"lasso": x, "noise": noise}, labels, lasso_methods=("lasso",))
    assert table["lasso"]["accuracy"]["mean"] == 1.0 and table["lasso"]["top_k_auc"]["mean"] == 1.0
    assert table["noise"]["top_k_auc"]["mean"] < 0.9  # chance is (4 + 1) / 8 = 0.625


def test_response_scores_linear_truth_beats_mean_shift_and_baseline_is_the_train_mean():
    rng = np.random.default_rng(3)
    p, d, g = 12, 4, 40
    shift = rng.normal(size=(p, d))
    delta = shift @ rng.normal(size=(d, g))  # the change is linear in the embedding shift
    targets = rng.integers(0, g, p)
    table, details = response_scores(shift, delta, targets, n_splits=3, test_fraction=0.25, seed=0, ridge_alpha=1e-6)
    assert table["grn_jax_in_silico"]["pcc_delta"]["mean"] > 0.999
    # mean_shift by hand on the first split
    tr, te = (np.array(a) for a in details["splits"][0])
    base = delta[tr].mean(0)
    vals = [pcc_delta(np.delete(base, targets[j]), np.delete(delta[j], targets[j])) for j in te]
    assert table["mean_shift"]["pcc_delta"]["values"][0] == pytest.approx(np.mean(vals))
    assert tr.tolist() == group_splits(np.arange(p), n_splits=3, test_fraction=0.25, seed=0)[0][0].tolist()


def test_probe_scores_recovers_a_linear_code_and_not_noise():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(120, 6))
    expr = z @ rng.normal(size=(6, 30)) + 0.01 * rng.normal(size=(120, 30))
    table, _ = probe_scores({"code": z, "noise": rng.normal(size=(120, 6))}, expr, n_genes=20, pca_baseline_dim=6)
    assert table["code"]["r2"]["mean"] > 0.99 and table["code"]["r2_pooled"]["mean"] > 0.99
    assert table["noise"]["r2"]["mean"] < 0.1
    assert table["expression_pca"]["r2"]["mean"] > 0.99  # rank-6 expression: 6 PCs keep it


def test_mask_cell_edges_hides_fifteen_percent_and_negatives_are_non_edges():
    rng = np.random.default_rng(0)
    n = 12
    iu = np.stack(np.triu_indices(n, 1), 1) + 1
    pairs = iu[np.sort(rng.choice(len(iu), 20, replace=False))]
    observed, hidden, negatives = mask_cell_edges(pairs, n, 0.15, np.random.default_rng(1))
    assert len(hidden) == 3 and len(observed) == 17
    both = np.concatenate([observed, hidden])
    assert len(np.unique(both, axis=0)) == 20 and {tuple(p) for p in both} == {tuple(p) for p in pairs}
    assert len(negatives) == 3 and not ({tuple(p) for p in negatives} & {tuple(p) for p in pairs})
    assert (negatives[:, 0] < negatives[:, 1]).all() and negatives.min() >= 1 and negatives.max() <= n
    assert mask_cell_edges(pairs[:1], n, 0.15, rng) is None


def test_undirected_pairs_merges_directions_and_drops_self_loops():
    out = undirected_pairs([1, 2, 3, 3], [2, 1, 3, 1])
    assert out.tolist() == [[1, 2], [1, 3]]


def test_pair_features_hand_computed():
    # observed path 1-2-3 plus 3-4; pairs (1,3) and (2,4)
    observed = np.array([[1, 2], [2, 3], [3, 4]])
    h = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])  # positions 1..4
    f = pair_features(h, observed, np.array([[1, 3], [2, 4]]))
    # (1,3): h1*h3 = [1,0], |h1-h3| = [0,1], deg 1+2=3, 1*2=2, common {2} = 1
    np.testing.assert_allclose(f[0], [1, 0, 0, 1, 3, 2, 1])
    # (2,4): h2*h4 = [0,0], |h2-h4| = [3,2], deg 2+1=3, 2*1=2, common {3} = 1
    np.testing.assert_allclose(f[1], [0, 0, 3, 2, 3, 2, 1])
    np.testing.assert_allclose(pair_features(None, observed, np.array([[1, 4]])), [[2, 1, 0]])


def test_non_edges_both_regimes_are_distinct_non_edges():
    from grn_jax.tasks.edge_prediction import _non_edges

    # dense: 10 pairs of 5 positions, 8 are edges -> exactly the 2 others, by enumeration
    iu = np.stack(np.triu_indices(5, 1), 1) + 1
    edges = iu[:8]
    got = _non_edges(edges, 5, 3, np.random.default_rng(0))
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, iu[8:].tolist()))
    # sparse and long: rejection sampling
    rng = np.random.default_rng(1)
    a = rng.integers(1, 301, (2, 500))
    edges = undirected_pairs(a[0], a[1])
    got = _non_edges(edges, 300, 50, np.random.default_rng(2))
    assert got.shape == (50, 2) and len({tuple(p) for p in got.tolist()}) == 50
    assert (got[:, 0] < got[:, 1]).all() and got.min() >= 1 and got.max() <= 300
    assert not ({tuple(p) for p in got.tolist()} & {tuple(p) for p in edges.tolist()})
