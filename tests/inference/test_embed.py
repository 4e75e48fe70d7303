"""`embed`: streaming into an h5ad, batch-size and chunk invariance, unknown genes, provenance, refusals."""

import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from grn_jax.inference import CLS_KEY, GENE_CONTEXT_KEY, GENE_TOKEN_KEY, MEAN_KEY, UNS_KEY, GraphSpec, embed
from grn_jax.inference.model_fn import gene_embedding_table
from grn_jax.testing import assert_allclose


@pytest.fixture(scope="module")
def embedded(toy_run, pretrained, tmp_path_factory):
    """The toy cells embedded from the .h5ad: batch 8 / one chunk, batch 3 / chunks of 7, batch 1 / chunks of 5,
    batch 64 / one chunk."""
    out = tmp_path_factory.mktemp("embed")
    graph = GraphSpec(network=str(toy_run["network"]))
    reports = {}
    for name, bs, chunk in (("a", 8, 64), ("b", 3, 7), ("c", 1, 5), ("d", 64, 64)):
        reports[name] = embed(pretrained, toy_run["h5ad"], out / f"{name}.h5ad", graph=graph, batch_size=bs,
                              chunk_cells=chunk, progress=False, log=lambda m: None)
    return {k: anndata.read_h5ad(out / f"{k}.h5ad") for k in reports}, reports


def test_outputs_written_with_shapes_and_finite_values(embedded, toy_run, pretrained):
    ads, reports = embedded
    a = ads["a"]
    n, d = toy_run["adata"].n_obs, pretrained.model_config.d_model
    assert a.obsm[CLS_KEY].shape == (n, d) and a.obsm[MEAN_KEY].shape == (n, d)
    assert np.isfinite(a.obsm[CLS_KEY]).all() and np.isfinite(a.obsm[MEAN_KEY]).all()
    # the input's own content is carried over unchanged
    np.testing.assert_array_equal(a.X.toarray(), toy_run["adata"].X.toarray())
    assert list(a.obs_names) == list(toy_run["adata"].obs_names)
    # cells differ from each other (not a constant vector)
    assert np.std(a.obsm[CLS_KEY], axis=0).max() > 1e-3
    assert reports["a"].cells_without_vocab_genes == 0


def test_embeddings_identical_whatever_the_batch_size_and_chunking(embedded):
    ads, _ = embedded
    # one cell per compiled program (grn_jax.inference.model_fn): bitwise, not merely close
    for other in ("b", "c", "d"):
        for key in (CLS_KEY, MEAN_KEY):
            assert np.array_equal(ads[other].obsm[key], ads["a"].obsm[key]), (other, key)
    # the gene context is a sum over cells accumulated in chunk order: equal to float32 rounding
    assert_allclose(ads["b"].varm[GENE_CONTEXT_KEY], ads["a"].varm[GENE_CONTEXT_KEY], np.float32)


def test_gene_embeddings_against_the_table_and_hidden_states(embedded, pretrained, toy_run):
    ads, _ = embedded
    a = ads["a"]
    table = np.asarray(gene_embedding_table(pretrained.params))
    ids = pretrained.vocab.lookup(list(a.var_names))
    np.testing.assert_array_equal(a.varm[GENE_TOKEN_KEY], table[ids])
    # a gene never expressed in any cell (and no neighbour token) has no context embedding
    expressed = np.asarray((toy_run["adata"].X > 0).sum(axis=0)).ravel() > 0
    ctx = a.varm[GENE_CONTEXT_KEY]
    assert np.isnan(ctx[~expressed]).all() and np.isfinite(ctx[expressed]).all()


def test_provenance_in_uns(embedded, pretrained):
    ads, _ = embedded
    uns = ads["a"].uns[UNS_KEY]
    ckpt = json.loads(uns["checkpoint"])
    assert ckpt["checkpoint_sha256"] == pretrained.checkpoint_hash and ckpt["step"] == pretrained.step
    assert json.loads(uns["model_config"])["d_model"] == pretrained.model_config.d_model
    assert json.loads(uns["tokenization"])["content_hash"] == pretrained.tokenization["content_hash"]
    assert json.loads(uns["graph"])["kind"] == "single network"


def test_unknown_genes_are_counted_warned_and_do_not_change_embeddings(embedded, toy_run, pretrained):
    base = toy_run["adata"]
    extra = sp.csr_matrix(np.tile([[5.0, 0.0, 7.0]], (base.n_obs, 1)).astype(np.float32))
    ad2 = anndata.AnnData(X=sp.hstack([base.X, extra]).tocsr(), obs=base.obs.copy(),
                          var=pd.DataFrame(index=list(base.var_names) + ["NOVEL1", "NOVEL2", "NOVEL3"]))
    msgs = []
    with pytest.warns(UserWarning, match=r"3 of 33 genes of the data are not in the model's vocabulary"):
        rep = embed(pretrained, ad2, graph=GraphSpec(network=str(toy_run["network"])), batch_size=8,
                    progress=False, log=msgs.append)
    assert rep.genes["genes_not_in_vocab"] == 3 and any("NOVEL" in m for m in msgs)
    # the model sees gene ids and rank bins only; unknown genes are skipped, so embeddings are unchanged
    assert_allclose(ad2.obsm[CLS_KEY], embedded[0]["a"].obsm[CLS_KEY], np.float32)
    assert np.isnan(ad2.varm[GENE_TOKEN_KEY][-3:]).all()


def test_cell_without_vocabulary_genes_gets_nan_and_a_warning(toy_run, pretrained):
    base = toy_run["adata"][:4].copy()
    x = base.X.toarray()
    x[2] = 0
    base.X = sp.csr_matrix(x)
    with pytest.warns(UserWarning, match=r"1 of 4 cells express no vocabulary gene.*cell2"):
        rep = embed(pretrained, base, graph=GraphSpec(network=str(toy_run["network"])), batch_size=8,
                    progress=False, log=lambda m: None)
    assert rep.cells_without_vocab_genes == 1
    assert np.isnan(base.obsm[CLS_KEY][2]).all() and np.isfinite(base.obsm[CLS_KEY][[0, 1, 3]]).all()


def test_refusals(toy_run, pretrained, tmp_path):
    with pytest.raises(ValueError, match="trained with per-cell graphs but no graph was given"):
        embed(pretrained, toy_run["h5ad"], tmp_path / "o.h5ad", progress=False)
    with pytest.raises(ValueError, match="needs an output path"):
        embed(pretrained, toy_run["h5ad"], None, graph=GraphSpec(network=str(toy_run["network"])))
    (tmp_path / "exists.h5ad").write_text("x")
    with pytest.raises(ValueError, match="exists"):
        embed(pretrained, toy_run["h5ad"], tmp_path / "exists.h5ad", graph=GraphSpec(network=str(toy_run["network"])),
              progress=False)
    renamed = toy_run["adata"].copy()
    renamed.var_names = [f"other{i}" for i in range(renamed.n_vars)]
    with pytest.raises(ValueError, match="none of the 30 genes"):
        embed(pretrained, renamed, graph=GraphSpec(network=str(toy_run["network"])), progress=False)
    bad = toy_run["adata"][:3].copy()
    bad.X = sp.csr_matrix(np.where(bad.X.toarray() > 0, 1.5, 0).astype(np.float32))
    with pytest.raises(ValueError, match="cell 0 .*cell0"):
        embed(pretrained, bad, graph=GraphSpec(network=str(toy_run["network"])), progress=False)


def test_file_input_is_streamed_in_chunks_never_loaded_whole(toy_run, pretrained, tmp_path, monkeypatch):
    import grn_jax.data.ingest as ingest

    def no_full_read(*a, **k):
        raise AssertionError("embed must not load the whole input file")

    monkeypatch.setattr(anndata, "read_h5ad", no_full_read)
    monkeypatch.setattr(ingest.anndata, "read_h5ad", no_full_read)
    spans = []
    rows = ingest.CountsSource.rows

    def spy(self, start, stop):
        spans.append((start, stop, self.backed))
        return rows(self, start, stop)

    monkeypatch.setattr(ingest.CountsSource, "rows", spy)
    embed(pretrained, toy_run["h5ad"], tmp_path / "s.h5ad", graph=GraphSpec(network=str(toy_run["network"])),
          batch_size=8, chunk_cells=6, progress=False, log=lambda m: None)
    assert spans == [(0, 6, True), (6, 12, True), (12, 18, True), (18, 20, True)]
