"""Attention functions against numpy/scipy oracles: GDKA = softmax((expm(-beta L) Q) K^T / sqrt(d)) V."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.graphs import heat_kernel_plan, normalized_laplacian, pack_laplacian
from grn_jax.models import DiffusionContext, diffusion_attention, dot_product_attention
from grn_jax.testing import assert_rel_close
from tests.models._cells import heat_kernel_np

B, S, H, K, E = 2, 8, 2, 4, 6
N_GENES = (5, 7)
EDGES = ([(0, 1, 1.0), (1, 2, 0.5), (3, 1, 2.0), (2, 0, 1.0)],  # gene 4 isolated
         [(0, 1, 1.0), (2, 3, 1.5), (4, 5, 0.7), (5, 6, 1.0), (6, 0, 0.3), (1, 0, 0.4)])


def _inputs(seed=0, packed=False):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(B, S, H, K)).astype(np.float32) for _ in range(3))
    token_mask = np.zeros((B, S), bool)
    snd = np.zeros((B, E), np.int32)
    rcv = np.zeros((B, E), np.int32)
    w = np.zeros((B, E), np.float32)
    m = np.zeros((B, E), bool)
    for b, (n, edges) in enumerate(zip(N_GENES, EDGES)):
        token_mask[b, : n + 1] = True
        for e, (s, r, wt) in enumerate(edges):
            snd[b, e], rcv[b, e], w[b, e], m[b, e] = s + 1, r + 1, wt, True
    lap = normalized_laplacian(snd, rcv, w, m, num_nodes=S)
    cls = np.zeros((B, S), bool)
    cls[:, 0] = True
    ctx = DiffusionContext(laplacian=lap, node_mask_BxS=jnp.asarray(token_mask), passthrough_mask_BxS=jnp.asarray(cls),
                           packed=pack_laplacian(lap) if packed else None)
    return q, k, v, token_mask, ctx


def _oracle(q, k, v, token_mask, beta, diffuse_values=False):
    """float64 reference: diffuse gene queries (and values) with scipy expm, keep CLS, zero padding, masked softmax."""
    out = np.zeros_like(q, dtype=np.float64)
    for b, (n, edges) in enumerate(zip(N_GENES, EDGES)):
        phi = heat_kernel_np(n, edges, beta)

        def diffused(x):
            xd = np.zeros((S, H * K))
            xf = x[b].reshape(S, H * K).astype(np.float64)
            xd[0] = xf[0]
            xd[1: n + 1] = phi @ xf[1: n + 1]
            return xd.reshape(S, H, K)

        qd = diffused(q)
        vd = diffused(v) if diffuse_values else v[b].astype(np.float64)
        scores = np.einsum("shk,thk->hst", qd, k[b].astype(np.float64)) / np.sqrt(K)
        scores = np.where(token_mask[b][None, None, :], scores, -np.inf)
        wts = np.exp(scores - scores.max(-1, keepdims=True))
        wts /= wts.sum(-1, keepdims=True)
        out[b] = np.einsum("hst,thk->shk", wts, vd)
    return out


@pytest.mark.parametrize("beta,packed", [(0.1, True), (1.0, False)])
def test_diffusion_attention_matches_expm_oracle(beta, packed):
    q, k, v, token_mask, ctx = _inputs(packed=packed)
    out, _ = diffusion_attention(q, k, v, jnp.asarray(token_mask), ctx, heat_kernel_plan(beta, 1e-10))
    ref = _oracle(q, k, v, token_mask, beta)
    real = token_mask
    assert_rel_close(np.asarray(out)[real], ref[real], jnp.float32, what=f"GDKA beta={beta}")
    # the diffusion matters: plain attention is far from the oracle
    plain, _ = dot_product_attention(q, k, v, jnp.asarray(token_mask))
    assert np.linalg.norm(np.asarray(plain)[real] - ref[real]) > 1e-3 * np.linalg.norm(ref[real])


@pytest.mark.parametrize("impl", ["xla", "blocked"])
def test_diffusing_values_too_matches_expm_oracle(impl):
    """model.diffusion_operands="queries_values": softmax(phi Q K^T / sqrt(d)) phi V, CLS's value untouched."""
    q, k, v, token_mask, ctx = _inputs(4)
    plan = heat_kernel_plan(1.0, 1e-10)
    out, _ = diffusion_attention(q, k, v, jnp.asarray(token_mask), ctx, plan, impl=impl, block=4,
                                 diffuse_values=True)
    ref = _oracle(q, k, v, token_mask, 1.0, diffuse_values=True)
    assert_rel_close(np.asarray(out)[token_mask], ref[token_mask], jnp.float32, what=f"GDKA (Q and V), {impl}")
    queries_only = _oracle(q, k, v, token_mask, 1.0)  # the values' diffusion is not a no-op at this beta
    assert np.linalg.norm(queries_only[token_mask] - ref[token_mask]) > 1e-2 * np.linalg.norm(ref[token_mask])
    with pytest.raises(ValueError, match="queries only"):
        diffusion_attention(q, k, v, jnp.asarray(token_mask), ctx, plan, impl="pallas", diffuse_values=True)


def test_diffusion_operands_is_validated():
    from grn_jax.models import ModelConfig

    with pytest.raises(ValueError, match="diffusion_operands"):
        ModelConfig(gene_vocab_size=10, diffusion_operands="keys")
    with pytest.raises(ValueError, match="queries only"):
        ModelConfig(gene_vocab_size=10, diffusion_operands="queries_values", attention_impl="pallas")


def test_beta_zero_is_vanilla_attention_exactly():
    q, k, v, token_mask, ctx = _inputs(1)
    diff, wd = diffusion_attention(q, k, v, jnp.asarray(token_mask), ctx, heat_kernel_plan(0.0))
    van, wv = dot_product_attention(q, k, v, jnp.asarray(token_mask))
    np.testing.assert_array_equal(np.asarray(diff)[token_mask], np.asarray(van)[token_mask])
    np.testing.assert_array_equal(np.asarray(wd)[:, :, token_mask[0]][0], np.asarray(wv)[:, :, token_mask[0]][0])


def test_padded_keys_and_values_never_contribute():
    q, k, v, token_mask, ctx = _inputs(2)
    k2, v2 = k.copy(), v.copy()
    k2[~token_mask] = 1e4
    v2[~token_mask] = -1e6
    plan = heat_kernel_plan(0.1)
    a, w = diffusion_attention(q, k, v, jnp.asarray(token_mask), ctx, plan)
    b, _ = diffusion_attention(q, k2, v2, jnp.asarray(token_mask), ctx, plan)
    np.testing.assert_array_equal(np.asarray(a)[token_mask], np.asarray(b)[token_mask])
    # masked keys get exactly zero weight
    assert float(jnp.abs(jnp.where(jnp.asarray(token_mask)[:, None, None, :], 0.0, w)).max()) == 0.0


def test_attention_dropout_only_in_training():
    q, k, v, token_mask, _ = _inputs(3)
    mask = jnp.asarray(token_mask)
    r1, r2 = jax.random.key(1), jax.random.key(2)
    det1, _ = dot_product_attention(q, k, v, mask, dropout_rng=r1, dropout_rate=0.5, deterministic=True)
    det2, _ = dot_product_attention(q, k, v, mask, dropout_rng=r2, dropout_rate=0.5, deterministic=True)
    plain, _ = dot_product_attention(q, k, v, mask)
    np.testing.assert_array_equal(np.asarray(det1), np.asarray(det2))
    np.testing.assert_array_equal(np.asarray(det1), np.asarray(plain))
    tr1, _ = dot_product_attention(q, k, v, mask, dropout_rng=r1, dropout_rate=0.5, deterministic=False)
    tr2, _ = dot_product_attention(q, k, v, mask, dropout_rng=r2, dropout_rate=0.5, deterministic=False)
    assert not np.allclose(np.asarray(tr1), np.asarray(tr2))
    assert not np.allclose(np.asarray(tr1), np.asarray(plain))


def test_unknown_attention_impl_is_refused():
    q, k, v, token_mask, ctx = _inputs()
    with pytest.raises(ValueError, match="attention_impl"):
        diffusion_attention(q, k, v, jnp.asarray(token_mask), ctx, heat_kernel_plan(0.1), impl="bogus")


def test_model_plumbs_diffusion_operands_to_every_gdka_layer():
    """Same parameters: diffusing V changes the model's logits at beta 1 and is exactly the paper's GDKA at beta 0."""
    import dataclasses

    from grn_jax.models import build_model, example_batch, tiny

    out = {}
    for beta in (0.0, 1.0):
        for ops in ("queries", "queries_values"):
            cfg = dataclasses.replace(tiny(gene_vocab_size=40), d_model=16, n_layers=1, n_heads=2, mlp_dim=16,
                                      diffusion_beta=beta, diffusion_operands=ops, cell_head=False)
            model = build_model(cfg)
            batch = example_batch(cfg, batch_size=2, seq_len=16, num_edges=16)
            params = jax.jit(lambda k, b: model.init({"params": k}, b, deterministic=True))(jax.random.key(0), batch)
            out[beta, ops] = np.asarray(jax.jit(lambda p, b: model.apply(p, b, deterministic=True).bin_logits)(
                params, batch))
    np.testing.assert_array_equal(out[0.0, "queries"], out[0.0, "queries_values"])  # phi = I: no change at all
    diff = np.linalg.norm(out[1.0, "queries"] - out[1.0, "queries_values"])
    assert diff > 1e-3 * np.linalg.norm(out[1.0, "queries"])
