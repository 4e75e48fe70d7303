"""GREmLN forward: shapes, padding/batch invariance, permutation equivariance, beta=0, dropout, tracing."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.models import GREmLN, ModelOutput, build_model, init_variables, tiny
from grn_jax.testing import assert_allclose, assert_reorder_close
from tests.models._cells import make_batch, random_cell

VOCAB, N_BINS = 64, 8

# differently shaped programs differ by summation order only: 2 layers x (d_model + mlp_dim + S)
REORDER_TERMS = 2 * (32 + 64 + 16)


def _cfg(**kw):
    base = dict(gene_vocab_size=VOCAB, n_bins=N_BINS, d_model=32, n_layers=2, n_heads=4, mlp_dim=64,
                diffusion_beta=1.0, dropout_rate=0.2, attention_dropout_rate=0.2)
    base.update(kw)
    return tiny(**base)


def _cells(seed=0):
    rng = np.random.default_rng(seed)
    return [random_cell(rng, n, VOCAB, N_BINS, e) for n, e in ((5, 6), (9, 12), (3, 2))]


@functools.lru_cache(maxsize=None)
def _model_and_vars(**kw):
    cfg = _cfg(**kw)
    model = build_model(cfg)
    batch = make_batch(_cells(), 16, 12, N_BINS)
    return model, init_variables(model, jax.random.key(0), batch)


@functools.lru_cache(maxsize=None)
def _apply_fn(model):
    return jax.jit(lambda v, b: model.apply(v, b, deterministic=True))


def _run(model, variables, batch) -> ModelOutput:
    return _apply_fn(model)(variables, batch)


@pytest.mark.parametrize("kw", [dict(), dict(attention=("diffusion", "vanilla"), norm="post")])
def test_output_shapes_and_dtypes(kw):
    model, variables = _model_and_vars(**kw)
    batch = make_batch(_cells(), 16, 12, N_BINS)
    out = _run(model, variables, batch)
    chex.assert_shape(out.bin_logits, (3, 16, N_BINS))
    chex.assert_shape(out.hidden, (3, 16, 32))
    chex.assert_shape([out.cls_embedding, out.mean_embedding], (3, 32))
    chex.assert_type(out.bin_logits, jnp.float32)
    chex.assert_tree_all_finite(out)
    # padding rows are zero, CLS is row 0, mean is over the real gene tokens only
    tm = batch.token_mask
    assert float(jnp.abs(out.hidden[~tm]).max()) == 0.0
    np.testing.assert_array_equal(np.asarray(out.cls_embedding), np.asarray(out.hidden[:, 0]))
    for b in range(3):
        n = int(tm[b].sum()) - 1
        assert_allclose(out.mean_embedding[b], np.asarray(out.hidden[b, 1: n + 1]).mean(0), jnp.float32)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_logits():
    cfg = _cfg(dtype="bfloat16")
    model = build_model(cfg)
    batch = make_batch(_cells(), 16, 12, N_BINS)
    variables = init_variables(model, jax.random.key(0), batch)
    out = jax.jit(lambda v, b: model.apply(v, b, deterministic=True))(variables, batch)
    chex.assert_type(out.hidden, jnp.bfloat16)
    chex.assert_type(out.bin_logits, jnp.float32)
    chex.assert_type(jax.tree.leaves(variables["params"])[0], jnp.float32)
    chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("attention", ["diffusion", "vanilla"])
def test_cell_output_independent_of_batch_mates_and_padding(attention):
    model, variables = _model_and_vars(attention=attention)
    cells = _cells()
    alone = _run(model, variables, make_batch([cells[0]], 8, 8, N_BINS))
    # same cell at index 1 of a batch with other cells, longer sequence bucket and edge bucket
    crowd = _run(model, variables, make_batch([cells[1], cells[0], cells[2]], 16, 12, N_BINS))
    n = len(cells[0].genes) + 1
    assert_reorder_close(crowd.hidden[1, :n], alone.hidden[0, :n], jnp.float32, n_terms=REORDER_TERMS, err_msg="hidden")
    assert_reorder_close(crowd.bin_logits[1, :n], alone.bin_logits[0, :n], jnp.float32, n_terms=REORDER_TERMS, err_msg="logits")
    assert_reorder_close(crowd.cls_embedding[1], alone.cls_embedding[0], jnp.float32, n_terms=REORDER_TERMS, err_msg="cls")
    assert_reorder_close(crowd.mean_embedding[1], alone.mean_embedding[0], jnp.float32, n_terms=REORDER_TERMS, err_msg="mean")


def test_gene_permutation_equivariance():
    model, variables = _model_and_vars()
    cells = _cells(5)
    perm = np.random.default_rng(1).permutation(len(cells[1].genes))
    base = _run(model, variables, make_batch(cells, 16, 12, N_BINS))
    moved = _run(model, variables, make_batch([cells[0], cells[1].permuted(perm), cells[2]], 16, 12, N_BINS))
    n = len(perm)
    # token i of the permuted cell is token perm[i] of the original
    assert_reorder_close(moved.hidden[1, 1: n + 1], np.asarray(base.hidden[1, 1: n + 1])[perm], jnp.float32, n_terms=REORDER_TERMS)
    assert_reorder_close(moved.cls_embedding[1], base.cls_embedding[1], jnp.float32, n_terms=REORDER_TERMS)
    assert_reorder_close(moved.mean_embedding[1], base.mean_embedding[1], jnp.float32, n_terms=REORDER_TERMS)
    # the graph matters: relabelling genes WITHOUT relabelling edges changes the output
    wrong = cells[1].permuted(perm)
    wrong.edges = cells[1].edges
    bad = _run(model, variables, make_batch([cells[0], wrong, cells[2]], 16, 12, N_BINS))
    assert not np.allclose(np.asarray(bad.hidden[1, 1: n + 1]), np.asarray(base.hidden[1, 1: n + 1])[perm],
                           atol=1e-4)


def test_beta_zero_model_equals_vanilla_model_exactly():
    model_d, variables = _model_and_vars(diffusion_beta=0.0)
    model_v, _ = _model_and_vars(attention="vanilla")
    batch = make_batch(_cells(), 16, 12, N_BINS)
    out_d = _run(model_d, variables, batch)
    out_v = _run(model_v, variables, batch)  # same parameter tree: layer runs are named by position only
    for name in ("hidden", "bin_logits", "cls_embedding", "mean_embedding"):
        np.testing.assert_array_equal(np.asarray(getattr(out_d, name)), np.asarray(getattr(out_v, name)),
                                      err_msg=name)


def test_dropout_only_when_not_deterministic():
    model, variables = _model_and_vars()
    batch = make_batch(_cells(), 16, 12, N_BINS)

    @jax.jit
    def fwd(v, key):
        return model.apply(v, batch, deterministic=True, rngs={"dropout": key}).hidden

    @jax.jit
    def train(v, key):
        return model.apply(v, batch, deterministic=False, rngs={"dropout": key}).hidden

    a, b = fwd(variables, jax.random.key(1)), fwd(variables, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert_allclose(a, _run(model, variables, batch).hidden, jnp.float32)  # another program: round-off only
    t1, t2 = train(variables, jax.random.key(1)), train(variables, jax.random.key(2))
    assert not np.allclose(np.asarray(t1), np.asarray(t2))


def test_jit_traces_once_per_bucket_shape_and_laplacian_once_per_forward(monkeypatch):
    import grn_jax.graphs.laplacian as lap_mod

    model, variables = _model_and_vars()  # init outside the count; 2 diffusion layers
    calls = {"trace": 0, "laplacian": 0}
    real = lap_mod.normalized_laplacian

    def counting(*a, **k):
        calls["laplacian"] += 1
        return real(*a, **k)

    monkeypatch.setattr(lap_mod, "normalized_laplacian", counting)

    @jax.jit
    def fwd(v, b):
        calls["trace"] += 1
        return model.apply(v, b, deterministic=True).bin_logits

    rng = np.random.default_rng(3)
    for seed in range(3):  # new values, same bucket: one trace
        cells = [random_cell(rng, n, VOCAB, N_BINS, e) for n, e in ((4 + seed, 5), (6, 3))]
        fwd(variables, make_batch(cells, 16, 12, N_BINS))
    assert calls["trace"] == 1
    assert calls["laplacian"] == 1  # both diffusion layers share one Laplacian
    fwd(variables, make_batch(cells, 32, 12, N_BINS))  # next sequence bucket: one more
    assert calls["trace"] == 2


def test_scanned_layers_stack_parameters():
    _, variables = _model_and_vars()
    kernel = variables["params"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert kernel.value.shape == (2, 32, 4, 8)
    assert kernel.names == (None, "embed", "heads", "head_dim")


def test_model_is_a_pure_flax_module():
    model, variables = _model_and_vars()
    assert isinstance(model, GREmLN)
    assert set(variables) == {"params"}
