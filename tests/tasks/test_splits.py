"""Splits never leak: train and test are disjoint, every class appears in both, small classes are counted."""

import numpy as np
import pytest

from grn_jax.tasks.splits import check_disjoint, group_splits, min_count_filter, stratified_splits


def test_stratified_splits_disjoint_cover_all_classes_and_differ():
    labels = np.array(["a"] * 10 + ["b"] * 6 + ["c"] * 4)
    splits = stratified_splits(labels, n_splits=3, test_fraction=0.25, seed=0)
    assert len(splits) == 3
    for tr, te in splits:
        assert np.intersect1d(tr, te).size == 0
        assert len(tr) + len(te) == len(labels)
        assert set(labels[tr]) == set(labels[te]) == {"a", "b", "c"}
    assert not np.array_equal(splits[0][1], splits[1][1])


def test_stratified_splits_refuse_tiny_classes():
    with pytest.raises(ValueError, match="< 2 cells"):
        stratified_splits(np.array(["a", "a", "b"]))


def test_group_splits_hold_out_whole_groups():
    for tr, te in group_splits(np.array(["g1", "g2", "g3", "g4"]), n_splits=3, test_fraction=0.25, seed=0):
        assert len(te) == 1 and len(tr) == 3 and np.intersect1d(tr, te).size == 0


def test_min_count_filter_counts_what_it_drops():
    keep, small = min_count_filter(np.array(["a"] * 5 + ["b"] * 2), 3)
    assert small == {"b": 2} and keep.sum() == 5 and not keep[-2:].any()


def test_check_disjoint_raises_on_a_leak():
    with pytest.raises(AssertionError, match="both"):
        check_disjoint([1, 2, 3], [3, 4])
