"""Blocked (online-softmax) attention against a float64 oracle and plain attention; remat policies change nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.models import build_model, example_batch
from grn_jax.models.attention import blocked_attention, dot_product_attention, self_attention
from grn_jax.models.config import tiny
from grn_jax.testing import assert_rel_close

B, S, H, K = 2, 13, 2, 4


def _qkvm(seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(B, S, H, K)).astype(np.float32) for _ in range(3))
    mask = np.zeros((B, S), bool)
    mask[0, :9] = True
    mask[1, :] = True
    return q, k, v, mask


def _oracle(q, k, v, mask):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bshk,bthk->bhst", q, k) / np.sqrt(K)
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhst,bthk->bshk", w, v)


@pytest.mark.parametrize("block", [1, 4, 5, 13, 64])  # divides, does not divide, one block, larger than S
def test_blocked_matches_float64_oracle(block):
    q, k, v, mask = _qkvm()
    out = blocked_attention(q, k, v, jnp.asarray(mask), block=block)
    assert out.shape == (B, S, H, K) and out.dtype == jnp.float32
    assert_rel_close(out, _oracle(q, k, v, mask), np.float32, what=f"blocked attention, block {block}")


def test_blocked_gradients_match_plain_attention():
    q, k, v, mask = _qkvm(1)
    mask = jnp.asarray(mask)
    cot = jnp.asarray(np.random.default_rng(2).normal(size=(B, S, H, K)).astype(np.float32))

    def plain(q, k, v):
        return dot_product_attention(q, k, v, mask)[0]

    def blocked(q, k, v):
        return blocked_attention(q, k, v, mask, block=4)

    out_p, vjp_p = jax.vjp(plain, q, k, v)
    out_b, vjp_b = jax.vjp(blocked, q, k, v)
    assert_rel_close(out_b, out_p, np.float32, what="forward")
    for name, gb, gp in zip("qkv", vjp_b(cot), vjp_p(cot)):
        assert_rel_close(gb, gp, np.float32, what=f"d{name}")
    # padded keys get exactly zero gradient
    np.testing.assert_array_equal(np.asarray(vjp_b(cot)[1])[0, 9:], 0.0)


def test_blocked_never_materialises_the_score_matrix():
    q, k, v, mask = _qkvm()
    jaxpr = str(jax.make_jaxpr(lambda *a: blocked_attention(*a, block=4))(q, k, v, mask))
    assert f"f32[{B},{H},{S},{S}]" not in jaxpr and f"f32[{B},{H},{S},4]" in jaxpr
    out, w = self_attention(q, k, v, jnp.asarray(mask), impl="blocked", block=4)
    assert w is None
    with pytest.raises(ValueError, match="attention_dropout_rate=0"):
        self_attention(q, k, v, jnp.asarray(mask), impl="blocked", dropout_rate=0.1, deterministic=False,
                       dropout_rng=jax.random.key(0))
    with pytest.raises(ValueError, match="ModelConfig.attention_impl='blocked' has no attention dropout"):
        tiny(attention_impl="blocked", attention_dropout_rate=0.1)
    with pytest.raises(ValueError, match="ModelConfig.remat must be one of"):
        tiny(remat="layers")


def _loss_and_grads(cfg, variables, batch):
    model = build_model(cfg)

    def loss(params):
        return jnp.mean(model.apply({"params": params}, batch, deterministic=True).bin_logits ** 2)

    loss, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    # one vector: some gradients are exactly zero in exact arithmetic (a key bias shifts every logit of a
    # query equally), so they are rounding noise, comparable only as part of the whole
    return loss, jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grads)])


@pytest.mark.parametrize("attention,n_layers", [("vanilla", 1), pytest.param("diffusion", 2, marks=pytest.mark.slow)])
def test_blocked_and_remat_give_the_plain_model(attention, n_layers):
    base = tiny(attention=attention, n_layers=n_layers)
    batch = example_batch(base, batch_size=2, seq_len=12, num_edges=10)
    variables = build_model(base).init(jax.random.key(0), batch, deterministic=True)
    ref_loss, ref_grads = _loss_and_grads(base, variables, batch)
    for change in ({"attention_impl": "blocked", "attention_block": 5}, {"remat": "attention"},
                   {"remat": "block"}):
        loss, grads = _loss_and_grads(base.replace(**change), variables, batch)
        assert_rel_close(loss, ref_loss, np.float32, what=f"loss with {change}")
        assert_rel_close(grads, ref_grads, np.float32, what=f"gradient with {change}")
