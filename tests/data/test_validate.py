"""Each bad input fails with one clear message naming the problem, the cell/gene and the fix."""

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from grn_jax.data import DataConfig, GeneVocab, IngestConfig, QCConfig, prepare

from ._helpers import toy_adata

LOOSE = DataConfig(qc=QCConfig(min_counts=None, max_counts=None, min_genes=0))


def _bad(value, cell=3, gene=5):
    a = toy_adata()
    x = a.X.toarray()
    x[cell, gene] = value
    a.X = sp.csr_matrix(x)
    return a


@pytest.mark.parametrize("value,match", [
    (-1.0, r"negative value in X: cell 3 \('cell3'\), gene 5 \('g5'\)"),
    (np.nan, r"non-finite value in X: cell 3 \('cell3'\), gene 5 \('g5'\)"),
    (np.inf, r"non-finite value in X: cell 3 \('cell3'\), gene 5 \('g5'\)"),
    (2.5, r"non-integer value in X where raw counts are expected: cell 3 \('cell3'\), gene 5 \('g5'\)"),
])
def test_bad_values_name_cell_and_gene(tmp_path, value, match):
    with pytest.raises(ValueError, match=match):
        prepare(_bad(value), tmp_path / "out", LOOSE)


def test_normalised_input_switch_accepts_non_integers(tmp_path):
    a = toy_adata()
    a.X = a.X.astype(np.float64)
    a.X.data = np.log1p(a.X.data * 1.37)
    cfg = DataConfig(ingest=IngestConfig(normalized_input=True), qc=QCConfig(min_genes=0))
    s = prepare(a, tmp_path / "out", cfg)
    assert s["cells"]["cells_kept"] == a.n_obs and not s["cells"]["total_count_bounds_applied"]


def test_duplicate_gene_names(tmp_path):
    a = toy_adata()
    a.var_names = ["g0", "g1", "g0"] + [f"g{i}" for i in range(3, a.n_vars)]
    with pytest.raises(ValueError, match=r"duplicate gene name.*'g0' x2.*var_names_make_unique"):
        prepare(a, tmp_path / "out", LOOSE)


def test_empty_matrices(tmp_path):
    a = toy_adata()
    with pytest.raises(ValueError, match="has no cells"):
        prepare(a[:0].copy(), tmp_path / "o1", LOOSE)
    with pytest.raises(ValueError, match="no genes"):
        prepare(anndata.AnnData(sp.csr_matrix((4, 0), dtype=np.float32)), tmp_path / "o2", LOOSE)
    z = anndata.AnnData(sp.csr_matrix((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="is all zeros"):
        prepare(z, tmp_path / "o3", LOOSE)


def test_no_gene_in_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="none of the 40 genes of X is in the vocabulary"):
        prepare(toy_adata(), tmp_path / "out", LOOSE, vocab=GeneVocab(["TP53", "GATA1"]))


def test_genes_outside_vocabulary_are_counted_not_mapped(tmp_path):
    a = toy_adata()
    vocab = GeneVocab([f"g{i}" for i in range(10)] + ["other"])
    s = prepare(a, tmp_path / "out", LOOSE, vocab=vocab)
    assert s["genes"]["genes_not_in_vocab"] == 30 and s["genes"]["genes_in_vocab"] == 10
    assert s["genes"]["genes_not_in_vocab_example"][:2] == ["g10", "g11"]


def test_qc_removing_everything_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"QC removed all 60 cells.*min_genes is 500"):
        prepare(toy_adata(), tmp_path / "out", DataConfig(qc=QCConfig(min_counts=None)))


def test_missing_layer_raw_column(tmp_path):
    a = toy_adata()
    with pytest.raises(ValueError, match=r"ingest.layer='counts' not found"):
        prepare(a, tmp_path / "o", DataConfig(ingest=IngestConfig(layer="counts")))
    with pytest.raises(ValueError, match="has no .raw"):
        prepare(a, tmp_path / "o", DataConfig(ingest=IngestConfig(use_raw=True)))
    with pytest.raises(ValueError, match="cell_type_column='label' is not an obs column"):
        prepare(a, tmp_path / "o", DataConfig(ingest=IngestConfig(cell_type_column="label"), qc=LOOSE.qc))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"qc.keep_middle=1.5"):
        DataConfig.from_dict({"qc": {"keep_middle": 1.5}})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['min_gene'\] in section 'qc'"):
        DataConfig.from_dict({"qc": {"min_gene": 3}})
    with pytest.raises(ValueError, match="tokenize.n_bins"):
        DataConfig.from_dict({"tokenize": {"n_bins": 1}})
