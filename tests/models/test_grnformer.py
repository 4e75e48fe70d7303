"""GRNFormer adapter: structure, invariances, training-only augmentation, attention read-out."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.models import (AdapterConfig, GRNFormer, attention_importance, build_model, fusion_attention_weights,
                            init_variables, tf_enrichment_ratio, tiny)
from grn_jax.testing import assert_allclose, assert_reorder_close
from tests.models._cells import make_batch, random_cell

VOCAB, N_BINS, S, E = 64, 8, 16, 16
# differently shaped programs differ by summation order only: 2 layers x (d_model + mlp_dim + S) + the GNN's
REORDER_TERMS = 2 * (32 + 64 + S) + 2 * 32 + E


def _cfg(gnn="sage", **kw):
    return tiny(gene_vocab_size=VOCAB, n_bins=N_BINS, d_model=32, n_layers=2, n_heads=4, mlp_dim=64,
                adapter=AdapterConfig(gnn=gnn, fanout=2, fusion_heads=4, fusion_beta=1.0, perturb_alpha=0.25), **kw)


def _cells(seed=0):
    rng = np.random.default_rng(seed)
    return [random_cell(rng, n, VOCAB, N_BINS, e, ce) for n, e, ce in ((6, 10, 5), (11, 14, 9), (4, 3, 2))]


@functools.lru_cache(maxsize=None)
def _setup(gnn="sage", attention="diffusion"):  # GDKA + adapter: a combination neither paper tried
    model = build_model(_cfg(gnn, attention=attention))
    variables = init_variables(model, jax.random.key(0), make_batch(_cells(), S, E, N_BINS, cell_graph=True))
    return model, variables, jax.jit(lambda v, b: model.apply(v, b, deterministic=True))


def test_grnformer_output_structure_and_parameters():
    model, variables, fwd = _setup()
    assert isinstance(model, GRNFormer)
    out = fwd(variables, make_batch(_cells(), S, E, N_BINS, cell_graph=True))
    chex.assert_shape(out.bin_logits, (3, S, N_BINS))
    chex.assert_shape(out.hidden, (3, S, 32))
    chex.assert_tree_all_finite(out)
    p = variables["params"]
    assert set(p["adapter"]) == {"gnn", "fusion", "ln_fusion", "ln_struct"}
    assert "ln_input" in p["adapter"]["gnn"]  # node features normalised before the GNN
    # the adapter replaces the final layer: 1 backbone layer of n_layers=2
    assert p["encoder"]["layers_0"]["mlp"]["wi"]["kernel"].value.shape[0] == 1


def test_grnformer_requires_an_adapter():
    with pytest.raises(ValueError, match="adapter"):
        GRNFormer(tiny())


@pytest.mark.parametrize("gnn,attention", [("sage", "diffusion"),
                                           pytest.param("gcn", "vanilla", marks=pytest.mark.slow),
                                           pytest.param("gin", "vanilla", marks=pytest.mark.slow)])
def test_grnformer_cell_independent_of_batch_mates_and_padding(gnn, attention):
    model, variables, fwd = _setup(gnn, attention)
    cells = _cells()
    # alone in a smaller sequence and edge bucket vs last in a full batch of the standard bucket
    alone = fwd(variables, make_batch([cells[1]], 12, 14, N_BINS, cell_graph=True))
    crowd = fwd(variables, make_batch([cells[2], cells[0], cells[1]], S, E, N_BINS, cell_graph=True))
    n = len(cells[1].genes) + 1
    assert_reorder_close(crowd.hidden[2, :n], alone.hidden[0, :n], jnp.float32, n_terms=REORDER_TERMS)
    assert_reorder_close(crowd.mean_embedding[2], alone.mean_embedding[0], jnp.float32, n_terms=REORDER_TERMS)


def test_grnformer_gene_permutation_equivariance():
    model, variables, fwd = _setup()
    cells = _cells(3)
    perm = np.random.default_rng(2).permutation(len(cells[1].genes))
    base = fwd(variables, make_batch(cells, S, E, N_BINS, cell_graph=True))
    moved = fwd(variables, make_batch([cells[0], cells[1].permuted(perm), cells[2]], S, E, N_BINS, cell_graph=True))
    n = len(perm)
    assert_reorder_close(moved.hidden[1, 1: n + 1], np.asarray(base.hidden[1, 1: n + 1])[perm], jnp.float32, n_terms=REORDER_TERMS)
    assert_reorder_close(moved.cls_embedding[1], base.cls_embedding[1], jnp.float32, n_terms=REORDER_TERMS)


def test_perturbation_and_sampling_only_in_training(monkeypatch):
    import grn_jax.graphs.coexpression as coex

    model, variables, fwd = _setup()
    batch = make_batch(_cells(), S, E, N_BINS, cell_graph=True)
    calls = {"n": 0}
    real = coex.perturb_edges

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(coex, "perturb_edges", counting)

    @jax.jit
    def train(v, key):
        k1, k2 = jax.random.split(key)
        return model.apply(v, batch, deterministic=False, rngs={"sample": k1, "perturb": k2}).hidden

    ref = fwd(variables, batch).hidden
    assert calls["n"] == 0
    t1, t2 = train(variables, jax.random.key(1)), train(variables, jax.random.key(2))
    assert calls["n"] == 2  # both graph scales, traced once
    assert not np.allclose(np.asarray(t1), np.asarray(t2))
    assert not np.allclose(np.asarray(t1), np.asarray(ref))


def test_attention_importance_is_a_distribution_over_genes():
    model, variables, _ = _setup()
    batch = make_batch(_cells(), S, E, N_BINS, cell_graph=True)
    w = np.asarray(fusion_attention_weights(model, variables, batch), np.float64)
    phi = np.asarray(attention_importance(model, variables, batch), np.float64)
    tm = np.asarray(batch.token_mask)
    for b in range(3):
        n = int(tm[b].sum()) - 1
        # independent recomputation of phi_j = 1/(H N) sum_h sum_i a_ij over the real query genes
        want = w[b, :, 1: n + 1, :].sum(axis=(0, 1)) / (w.shape[1] * n)
        assert_allclose(phi[b], want, jnp.float32)
        assert_allclose(phi[b].sum(), 1.0, jnp.float32)  # keys are the cell's genes only
        assert phi[b, 0] == 0 and np.all(phi[b, n + 1:] == 0)


def test_tf_enrichment_ratio_by_hand():
    phi = np.array([[0.0, 0.4, 0.1, 0.3, 0.2, 0.0]])
    genes = np.array([[2, 5, 6, 7, 8, 0]])
    tm = np.array([[True, True, True, True, True, False]])
    is_tf = np.zeros(10, bool)
    is_tf[[5, 7]] = True
    assert tf_enrichment_ratio(phi, genes, tm, is_tf) == pytest.approx(((0.4 + 0.3) / 2) / ((0.1 + 0.2) / 2))
    with pytest.raises(ValueError, match="non-TF"):
        tf_enrichment_ratio(phi, genes, tm, np.ones(10, bool))
    with pytest.raises(ValueError, match="outside is_tf_vocab"):
        tf_enrichment_ratio(phi, genes, tm, np.ones(6, bool))
