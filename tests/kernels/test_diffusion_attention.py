"""Diffusion flash attention (Pallas interpret mode) vs dense references, exact oracle and the model's XLA path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.kernels import (ChebyshevBlocks, DiffusionAttentionBlocks, FlashBlocks, build_ell_laplacian,
                             diffusion_attention, diffusion_attention_reference, ell_degree_bound,
                             masked_attention_reference, masked_flash_attention)
from grn_jax.testing import assert_rel_close

from .graph_cases import dense_laplacian_np, diffuse_expm_np, has_gpu, heat_coeffs, random_graph_batch


def _qkv(seed, b, s, h, d, dtype):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(b, s, h, d)), dtype) for _ in range(4))


def _key_mask(b, s, n_real):
    return jnp.asarray(np.arange(s)[None, :] < np.asarray(n_real)[:, None])


@functools.partial(jax.jit, static_argnames=("block",))
def _flash_and_vjp(q, k, v, mask, g, block):
    out, vjp = jax.vjp(lambda *a: masked_flash_attention(*a, mask, block=block, interpret=True), q, k, v)
    return out, vjp(g)


@jax.jit
def _ref_and_vjp(q, k, v, mask, g):
    out, vjp = jax.vjp(lambda *a: masked_attention_reference(*a, mask), q, k, v)
    return out, vjp(g)


FLASH_SWEEP = [
    # (S, H, D, n_real, blocks, dtype)
    (16, 2, 8, [16, 9], FlashBlocks(block_q=8, block_k=4), jnp.float32),
    (32, 1, 16, [5, 32], FlashBlocks(block_q=32, block_k=8), jnp.float32),
    (32, 3, 8, [20, 31], FlashBlocks(block_q=16, block_k=16), jnp.bfloat16),
    (16, 2, 8, [16, 7], FlashBlocks(block_q=4, block_k=8, backward="xla"), jnp.float32),
]


@pytest.mark.parametrize("s,h,d,n_real,blocks,dtype", FLASH_SWEEP)
def test_flash_matches_reference_forward_and_vjp(s, h, d, n_real, blocks, dtype):
    q, k, v, g = _qkv(s * h + d, len(n_real), s, h, d, dtype)
    mask = _key_mask(len(n_real), s, n_real)
    out, grads = _flash_and_vjp(q, k, v, mask, g, blocks)
    ref, ref_grads = _ref_and_vjp(q, k, v, mask, g)
    assert out.dtype == dtype and out.shape == q.shape
    assert_rel_close(out, ref, dtype, what="forward")
    for name, a, b in zip("qkv", grads, ref_grads):
        assert_rel_close(a, b, dtype, what=f"d{name}")
    # Masked keys get exactly zero gradient: they never contributed.
    assert np.all(np.asarray(grads[1], np.float32)[~np.asarray(mask)] == 0)


def test_padded_keys_and_values_do_not_leak():
    q, k, v, g = _qkv(2, 1, 16, 2, 8, jnp.float32)
    mask = _key_mask(1, 16, [10])
    blocks = FlashBlocks(block_q=8, block_k=4)
    out = _flash_and_vjp(q, k, v, mask, g, blocks)[0]
    out2 = _flash_and_vjp(q, k.at[:, 10:].set(50.0), v.at[:, 10:].set(-1e4), mask, g, blocks)[0]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))


def _softmax_attention_np(qd, k, v, mask):
    s = np.einsum("bshd,bthd->bhst", qd, k) / np.sqrt(qd.shape[-1])
    s = np.where(mask[:, None, None, :], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhst,bthd->bshd", p, v)


@functools.partial(jax.jit, static_argnames=("block",))
def _gdka_and_vjp(q, k, v, mask, ell, coeffs, g, block):
    out, vjp = jax.vjp(lambda *a: diffusion_attention(*a, mask, ell, coeffs, block=block, interpret=True), q, k, v)
    return out, vjp(g)


@jax.jit
def _gdka_ref_and_vjp(q, k, v, mask, ell, coeffs, g):
    out, vjp = jax.vjp(lambda *a: diffusion_attention_reference(*a, mask, ell, coeffs), q, k, v)
    return out, vjp(g)


def _graph_case(seed, b, s, n_real):
    rng = np.random.default_rng(seed)
    snd, rcv, w, em, tm = random_graph_batch(rng, b, s, 2 * s, n_real)
    ell = build_ell_laplacian(snd, rcv, w, em, tm, width=ell_degree_bound(snd, rcv, em, s))
    return (snd, rcv, w, em, tm), ell


def test_diffusion_attention_matches_exact_oracle_reference_and_vjp():
    s, h, d, beta = 32, 2, 8, 1.0
    graph, ell = _graph_case(4, 2, s, [32, 19])
    q, k, v, g = _qkv(9, 2, s, h, d, jnp.float32)
    tm = graph[4]
    coeffs = jnp.asarray(heat_coeffs(beta, 10), jnp.float32)
    blocks = DiffusionAttentionBlocks(ChebyshevBlocks(block_cols=8, block_rows=8, block_degree=4),
                                      FlashBlocks(block_q=16, block_k=8))
    out, grads = _gdka_and_vjp(q, k, v, jnp.asarray(tm), ell, coeffs, g, blocks)
    ref, ref_grads = _gdka_ref_and_vjp(q, k, v, jnp.asarray(tm), ell, coeffs, g)
    assert_rel_close(out, ref, jnp.float32, what="GDKA forward")
    for name, a, b in zip("qkv", grads, ref_grads):
        assert_rel_close(a, b, jnp.float32, what=f"GDKA d{name}")
    lap = dense_laplacian_np(*graph[:4], s)
    qd = diffuse_expm_np(lap, np.asarray(q).reshape(2, s, h * d), tm, beta).reshape(2, s, h, d)
    exact = _softmax_attention_np(qd, np.asarray(k, np.float64), np.asarray(v, np.float64), tm)
    assert_rel_close(out, exact, jnp.float32, what="GDKA vs expm + dense softmax")


def test_validation_errors():
    q, k, v, _ = _qkv(0, 1, 16, 2, 8, jnp.float32)
    mask = jnp.ones((1, 16), bool)
    with pytest.raises(ValueError, match=r"q must be \[B, S, H, D\]"):
        masked_flash_attention(q[0], k[0], v[0], mask, interpret=True)
    with pytest.raises(ValueError, match="k and v must have q's shape"):
        masked_flash_attention(q, k[:, :8], v, mask, interpret=True)
    with pytest.raises(ValueError, match=r"key_mask must be \[B, S\]"):
        masked_flash_attention(q, k, v, mask[:, :8], interpret=True)
    with pytest.raises(ValueError, match="block_q=6 does not divide S=16"):
        masked_flash_attention(q, k, v, mask, block=FlashBlocks(block_q=6), interpret=True)
    with pytest.raises(ValueError, match="FlashBlocks.backward must be 'pallas' or 'xla'"):
        FlashBlocks(backward="triton")
    with pytest.raises(ValueError, match="DiffusionAttentionBlocks needs"):
        DiffusionAttentionBlocks(FlashBlocks(), FlashBlocks())


@pytest.mark.slow
@pytest.mark.parametrize("s,h,d,bq,bk,dtype", [(128, 4, 32, 32, 64, jnp.float32), (64, 2, 64, 64, 16, jnp.bfloat16),
                                               (96, 1, 16, 32, 32, jnp.float32)])
def test_flash_sweep_slow(s, h, d, bq, bk, dtype):
    q, k, v, g = _qkv(s, 2, s, h, d, dtype)
    mask = _key_mask(2, s, [s, s // 3])
    out, grads = _flash_and_vjp(q, k, v, mask, g, FlashBlocks(block_q=bq, block_k=bk))
    ref, ref_grads = _ref_and_vjp(q, k, v, mask, g)
    assert_rel_close(out, ref, dtype, what="forward")
    for name, a, b in zip("qkv", grads, ref_grads):
        assert_rel_close(a, b, dtype, what=f"d{name}")


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs a GPU (Pallas-Triton lowering)")
class TestGpu:
    @pytest.fixture(autouse=True)
    def _float32_matmuls(self):
        # XLA's GPU default for float32 dots is TF32; the references must really be float32.
        with jax.default_matmul_precision("highest"):
            yield

    @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
    def test_compiled_gdka_matches_reference(self, dtype):
        s, h, d = 512, 4, 64
        graph, ell = _graph_case(0, 2, s, [512, 300])
        q, k, v, g = _qkv(1, 2, s, h, d, dtype)
        mask = jnp.asarray(graph[4])
        coeffs = jnp.asarray(heat_coeffs(1.0, 9), jnp.float32)
        f = jax.jit(lambda *a: jax.vjp(lambda *x: diffusion_attention(*x, mask, ell, coeffs), *a)[0])
        out = f(q, k, v)
        ref = _gdka_ref_and_vjp(q, k, v, mask, ell, coeffs, g)[0]
        assert_rel_close(out, ref, dtype, what="gpu GDKA forward")
