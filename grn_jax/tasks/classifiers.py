"""The linear read-outs the tasks fit on frozen features (sklearn), and the expression baselines.

Every transform (scaling, PCA) is fitted on the training cells only, so nothing
about the test cells reaches the classifier.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def linear_classifier(x_train, y_train, x_test, *, l1: bool = False, c: float = 1.0, seed: int = 0,
                      pca_components: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit standardise (-> PCA) -> logistic regression on the train rows; (predictions, class scores, classes).

    `l1`: lasso (L1) logistic regression (saga), the GREmLN §4.5 linear baseline.
    `pca_components`: reduce to at most this many components first (capped by the
    train size and feature count), the PCA-50 baseline of GREmLN §4.2.
    """
    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"linear_classifier: the training cells hold {len(np.unique(y_train))} class(es); need 2+")
    steps = [StandardScaler()]
    if pca_components is not None:
        n = min(pca_components, x_train.shape[0] - 1, x_train.shape[1])
        steps.append(PCA(n_components=n, random_state=seed))
    if l1:
        clf = LogisticRegression(l1_ratio=1.0, solver="saga", C=c, max_iter=3000, random_state=seed)
    else:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    model = make_pipeline(*steps, clf)
    model.fit(x_train, y_train)
    return model.predict(x_test), model.predict_proba(x_test), model.classes_
