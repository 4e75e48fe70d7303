"""The quickstart's embedding sanity figure: kNN label agreement on hand-made points."""

import numpy as np

from grn_jax.inference.quickstart import knn_label_agreement


def test_knn_label_agreement_hand_cases():
    # two tight, far-apart clusters of 4 points; k = 3 neighbours are the own cluster
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [10, 10], [10, 11], [11, 10], [11, 11]], float)
    labels = np.array(list("aaaabbbb"))
    assert knn_label_agreement(x, labels, k=3) == 1.0
    # one mislabelled point: its 3 neighbours vote 'a' (it disagrees), the other a's still see 2 of 3 'a'
    bad = labels.copy()
    bad[0] = "b"
    assert knn_label_agreement(x, bad, k=3) == 7 / 8
