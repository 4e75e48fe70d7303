"""`grn-jax grn infer` / `grn assign` validate their input as `prepare` does: one line, exit 2, before any work."""

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from grn_jax.data.validate import check_counts_matrix
from tests._cli import fails_in_one_line


def _adata(n_cells=30, n_genes=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, (n_cells, n_genes)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": ["a", "b"] * (n_cells // 2)}, index=[f"c{i}" for i in range(n_cells)])
    return anndata.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))


_fails = fails_in_one_line


def _infer(path, out):
    return ["grn", "infer", str(path), "--out", str(out), "--label-key", "cell_type"]


@pytest.mark.parametrize("case, needle", [
    ("log_normalised", "non-integer value"),
    ("duplicate_genes", "duplicate gene name"),
    ("zero_cells", "no cells"),
    ("negative", "negative value"),
    ("all_zero", "all zeros"),
])
def test_grn_infer_refuses_what_prepare_refuses(tmp_path, capsys, case, needle):
    a = _adata()
    if case == "log_normalised":
        a.X = sp.csr_matrix(np.log1p(a.X.toarray() * 1e4 / a.X.sum(axis=1).A))
    elif case == "duplicate_genes":
        a.var_names = ["HES4"] * 2 + [f"G{i}" for i in range(2, a.n_vars)]
    elif case == "zero_cells":
        a = a[:0].copy()
    elif case == "negative":
        x = a.X.toarray()
        x[4, 2] = -1
        a.X = sp.csr_matrix(x)
    elif case == "all_zero":
        a.X = sp.csr_matrix(a.shape, dtype=np.float32)
    a.write_h5ad(tmp_path / "in.h5ad")
    _fails(capsys, _infer(tmp_path / "in.h5ad", tmp_path / "out"), needle)
    assert not (tmp_path / "out").exists()


def test_grn_infer_checks_the_layer_it_reads(tmp_path, capsys):
    a = _adata()
    a.layers["counts"] = a.X.copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))  # normalised X, raw counts in a layer
    a.write_h5ad(tmp_path / "in.h5ad")
    _fails(capsys, _infer(tmp_path / "in.h5ad", tmp_path / "out"), "non-integer", "--layer")
    # the same check passes on the counts layer (no error raised for these cells)
    check_counts_matrix(a.layers["counts"], a.var_names, a.obs_names)


@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_grn_infer_unreadable_h5ad(tmp_path, capsys, kind):
    good = tmp_path / "good.h5ad"
    _adata().write_h5ad(good)
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"" if kind == "empty" else good.read_bytes()[:3000])
    _fails(capsys, _infer(bad, tmp_path / "out"), str(bad))


def test_grn_infer_and_assign_refuse_an_existing_file_as_out(tmp_path, capsys):
    _adata().write_h5ad(tmp_path / "in.h5ad")
    taken = tmp_path / "taken"
    taken.write_text("x")
    _fails(capsys, _infer(tmp_path / "in.h5ad", taken), "existing file")
    _fails(capsys, ["grn", "assign", str(tmp_path / "in.h5ad"), "--networks-dir", str(tmp_path), "--reference",
                    str(tmp_path / "in.h5ad"), "--out", str(taken)], "existing file")
    assert taken.read_text() == "x"
