"""Bundled PBMC data: integer counts recovered from scanpy's pbmc68k_reduced, cell types attached."""

import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from grn_jax.datasets import pbmc68k


@pytest.fixture(scope="module")
def pbmc():
    return pbmc68k()


def test_counts_are_integers_and_invert_the_normalisation(pbmc):
    assert pbmc.shape == (700, 765) and sp.isspmatrix_csr(pbmc.X) and pbmc.X.dtype == np.int32
    rec = pbmc.uns["grn_jax"]["count_recovery"]
    assert rec["max_abs_deviation"] < 0.25
    # re-applying scanpy's encoding (log1p of counts * 1e4 / n_counts) reproduces raw.X
    src = sc.datasets.pbmc68k_reduced()
    back = np.log1p(pbmc.X.toarray() * 1e4 / src.obs["n_counts"].to_numpy()[:, None])
    ref = src.raw.X.toarray()
    assert np.abs(back - ref).max() < 0.05
    # the 765 genes hold part of each cell's depth
    assert (np.asarray(pbmc.X.sum(axis=1)).ravel() <= src.obs["n_counts"].to_numpy()).all()


def test_cell_types_from_bulk_labels(pbmc):
    assert pbmc.obs["cell_type"].nunique() == 10
    assert (pbmc.obs["cell_type"].astype(str) == pbmc.obs["bulk_labels"].astype(str)).all()
    assert pbmc.obs["cell_type"].value_counts()["Dendritic"] == 240
