"""Evaluation metrics shared by the tasks: sklearn where it has them, small tested helpers where not.

- `classification_scores`: accuracy, macro precision / recall / F1 (sklearn);
- `top_k_auc`: area under the top-k accuracy curve, k = 1..C, normalised to [0, 1]
  (GREmLN Table 3's "Top-K AUC"): mean over k of sklearn's top-k accuracy;
- `ranking_scores` + `bootstrap_ci`: AUROC and average precision (sklearn) with a
  percentile bootstrap over *groups* (cells), since pairs of one cell are not independent;
- `pcc_delta`: Pearson correlation of predicted vs true expression change (GRNFormer §4.2);
- `enrichment_ratio` + `permutation_null`: GRNFormer §4.6's rho and a label-permutation p-value;
- `summarize`: mean, sample sd and the values over repeats (splits, seeds).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def summarize(values: Sequence[float]) -> dict:
    """{"mean", "sd" (ddof=1; 0 for one value), "n", "values"} of repeated measurements."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("summarize: no values to summarise")
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "sd": sd, "n": int(v.size), "values": [float(x) for x in v]}


def classification_scores(y_true, y_pred) -> dict:
    """accuracy and macro-averaged precision, recall, F1 (classes absent from both score 0, not NaN)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or y_true.size == 0:
        raise ValueError(f"classification_scores: y_true {y_true.shape} and y_pred {y_pred.shape} must be equal, "
                         "non-empty 1-D arrays")
    labels = np.unique(y_true)  # macro over the classes present in the test split
    p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro",
                                                     zero_division=0)
    return {"accuracy": float(skm.accuracy_score(y_true, y_pred)), "precision": float(p), "recall": float(r),
            "macro_f1": float(f)}


def top_k_auc(y_true, scores_NxC, labels) -> float:
    """Normalised area under the top-k accuracy curve: mean_{k=1..C} top-k accuracy.

    `scores_NxC[:, c]` scores class `labels[c]`. A perfect ranking gives 1; random
    scores give (C + 1) / (2C) in expectation; the last term (k = C) is always 1.
    """
    scores_NxC = np.asarray(scores_NxC, np.float64)
    labels = np.asarray(labels)
    c = scores_NxC.shape[1] if scores_NxC.ndim == 2 else 0
    if c < 2 or len(labels) != c:
        raise ValueError(f"top_k_auc: scores must be [N, C>=2] with one label per column; got {scores_NxC.shape} "
                         f"and {len(labels)} labels")
    missing = sorted(set(np.asarray(y_true).tolist()) - set(labels.tolist()))
    if missing:
        raise ValueError(f"top_k_auc: true labels {missing[:5]} have no score column")
    accs = [skm.top_k_accuracy_score(y_true, scores_NxC, k=k, labels=labels) for k in range(1, c)]
    return float((np.sum(accs) + 1.0) / c)


def ranking_scores(y_true, score) -> dict:
    """AUROC and average precision of binary labels (sklearn)."""
    y_true = np.asarray(y_true).astype(bool)
    if y_true.all() or not y_true.any():
        raise ValueError(f"ranking_scores: need both positives and negatives; got {int(y_true.sum())} positives "
                         f"of {y_true.size}")
    return {"auroc": float(skm.roc_auc_score(y_true, score)), "ap": float(skm.average_precision_score(y_true, score))}


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], y_true, score, groups, *, n_boot: int = 200,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float, int]:
    """Percentile bootstrap interval of `metric(y, s)`, resampling whole groups with replacement.

    Returns (low, high, n_used): resamples without both classes are skipped and
    their number is `n_boot - n_used` (reported by the caller).
    """
    y_true, score, groups = np.asarray(y_true), np.asarray(score), np.asarray(groups)
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1) and n_boot >= 1; got {level}, {n_boot}")
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):  # host-side resampling of a small array
        pick = rng.integers(0, len(uniq), size=len(uniq))
        idx = np.concatenate([members[g] for g in pick])
        y = y_true[idx]
        if y.min() == y.max():
            continue
        vals.append(metric(y, score[idx]))
    if not vals:
        raise ValueError("bootstrap_ci: no resample held both classes; too few groups")
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(vals, [a, 1.0 - a])
    return float(lo), float(hi), len(vals)


def pcc_delta(pred_delta, true_delta) -> float:
    """Pearson correlation between predicted and true expression changes (vs control) over genes."""
    p, t = np.asarray(pred_delta, np.float64).ravel(), np.asarray(true_delta, np.float64).ravel()
    if p.shape != t.shape or p.size < 2:
        raise ValueError(f"pcc_delta: predicted {p.shape} and true {t.shape} changes must match, >= 2 genes")
    if np.ptp(p) == 0 or np.ptp(t) == 0:
        return float("nan")  # undefined for a constant vector; callers count these
    return float(stats.pearsonr(p, t)[0])


def enrichment_ratio(phi, is_tf) -> float:
    """rho = mean(phi | TF) / mean(phi | not TF)."""
    phi, is_tf = np.asarray(phi, np.float64), np.asarray(is_tf, bool)
    if phi.shape != is_tf.shape:
        raise ValueError(f"enrichment_ratio: phi {phi.shape} and is_tf {is_tf.shape} must match")
    if not is_tf.any() or is_tf.all():
        raise ValueError(f"enrichment_ratio: need TFs and non-TFs; got {int(is_tf.sum())} TFs of {is_tf.size}")
    return float(phi[is_tf].mean() / phi[~is_tf].mean())


def permutation_null(phi, is_tf, *, n_perm: int = 1000, seed: int = 0) -> dict:
    """rho under random TF labels (same number of TFs): the null's mean/sd and the one-sided p-value

    p = (1 + #{rho_perm >= rho}) / (1 + n_perm).
    """
    phi, is_tf = np.asarray(phi, np.float64), np.asarray(is_tf, bool)
    rho = enrichment_ratio(phi, is_tf)
    rng = np.random.default_rng(seed)
    k = int(is_tf.sum())
    # one permutation per row, vectorised: the k smallest of random keys are the TFs
    keys = rng.random((n_perm, phi.size))
    tf_NxG = np.zeros((n_perm, phi.size), bool)
    np.put_along_axis(tf_NxG, np.argpartition(keys, k - 1, axis=1)[:, :k], True, axis=1)
    tf_mean = (tf_NxG * phi).sum(1) / k
    other_mean = (~tf_NxG * phi).sum(1) / (phi.size - k)
    null = tf_mean / other_mean
    return {"rho": rho, "null_mean": float(null.mean()), "null_sd": float(null.std(ddof=1)),
            "p_value": float((1 + np.sum(null >= rho)) / (1 + n_perm)), "n_perm": n_perm}
