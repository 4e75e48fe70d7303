"""Random splits that never leak: stratified cell splits and whole-group (perturbation) splits."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit


def check_disjoint(train_idx, test_idx, what: str = "cells") -> None:
    """Raise if a train and a test index coincide (a leak)."""
    both = np.intersect1d(np.asarray(train_idx), np.asarray(test_idx))
    if both.size:
        raise AssertionError(f"{both.size} {what} are in both the train and the test split (e.g. {both[:5].tolist()})")


def stratified_splits(labels, *, n_splits: int = 3, test_fraction: float = 0.2,
                      seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n_splits` random stratified (train, test) index pairs, each class in both parts.

    Every class needs >= 2 members (callers filter and report smaller classes first).
    """
    labels = np.asarray(labels)
    if not 0.0 < test_fraction < 1.0 or n_splits < 1:
        raise ValueError(f"splits: test_fraction must be in (0, 1) and n_splits >= 1; got {test_fraction}, "
                         f"{n_splits}")
    names, counts = np.unique(labels, return_counts=True)
    if len(names) < 2:
        raise ValueError(f"splits: need >= 2 classes, got {names.tolist()}")
    small = names[counts < 2]
    if small.size:
        raise ValueError(f"splits: classes {small.tolist()[:5]} have < 2 cells; filter them first")
    n_test = max(int(round(test_fraction * len(labels))), len(names))
    n_train = len(labels) - n_test
    if n_train < len(names):
        raise ValueError(f"splits: {len(labels)} cells cannot hold every one of {len(names)} classes in both a "
                         f"train and a test part; add cells or drop classes")
    sss = StratifiedShuffleSplit(n_splits=n_splits, test_size=n_test, random_state=seed)
    out = []
    for tr, te in sss.split(np.zeros(len(labels)), labels):
        check_disjoint(tr, te)
        out.append((np.sort(tr), np.sort(te)))
    return out


def group_splits(groups, *, n_splits: int = 3, test_fraction: float = 0.25,
                 seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n_splits` random splits of the distinct `groups` values into (train groups, test groups)."""
    names = np.unique(np.asarray(groups))
    n_test = max(1, int(round(test_fraction * len(names))))
    if len(names) - n_test < 1:
        raise ValueError(f"splits: {len(names)} groups cannot be split into non-empty train and test parts")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_splits):
        perm = rng.permutation(len(names))
        tr, te = np.sort(names[perm[n_test:]]), np.sort(names[perm[:n_test]])
        check_disjoint(tr, te, "groups")
        out.append((tr, te))
    return out


def min_count_filter(labels, min_count: int) -> tuple[np.ndarray, dict]:
    """Boolean keep-mask of cells whose label has >= min_count cells, and {label: count} of those dropped."""
    labels = np.asarray(labels)
    names, counts = np.unique(labels, return_counts=True)
    small = {str(n): int(c) for n, c in zip(names, counts) if c < min_count}
    keep = ~np.isin(labels, list(small)) if small else np.ones(len(labels), bool)
    return keep, small
