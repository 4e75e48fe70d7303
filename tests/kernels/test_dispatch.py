"""Model-side selection of the Pallas GDKA: fallback with a logged reason, and parity with the XLA path."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.graphs import heat_kernel_plan, normalized_laplacian
from grn_jax.kernels import ChebyshevBlocks, DiffusionAttentionBlocks, FlashBlocks
from grn_jax.kernels.dispatch import pallas_gdka, pallas_unavailable_reason
from grn_jax.models.attention import DiffusionContext
from grn_jax.models.attention import diffusion_attention as model_gdka
from grn_jax.testing import assert_rel_close

from .graph_cases import random_graph_batch


def _inputs(s=17, h=2, d=6):
    rng = np.random.default_rng(0)
    snd, rcv, w, em, tm = random_graph_batch(rng, 2, s, 30, [s, 11])
    q, k, v = (jnp.asarray(rng.normal(size=(2, s, h, d)), jnp.float32) for _ in range(3))
    cls = jnp.asarray((np.arange(s)[None, :] == 0) & tm)
    ctx = DiffusionContext(normalized_laplacian(snd, rcv, w, em, num_nodes=s), jnp.asarray(tm), cls)
    return q, k, v, jnp.asarray(tm), ctx


def test_reason_names_backend_and_dropout():
    assert "backend 'cpu'" in pallas_unavailable_reason(backend="cpu")
    assert pallas_unavailable_reason(backend="gpu") is None
    assert "dropout" in pallas_unavailable_reason(backend="gpu", dropout_active=True)


def test_falls_back_on_cpu_with_logged_reason(caplog):
    q, k, v, tm, ctx = _inputs()
    plan = heat_kernel_plan(0.5)
    with caplog.at_level(logging.WARNING):
        assert pallas_gdka(q, k, v, tm, ctx.laplacian, ctx.node_mask_BxS, ctx.passthrough_mask_BxS, plan) is None
        out, weights = jax.jit(lambda *a: model_gdka(*a, plan, impl="pallas"))(q, k, v, tm, ctx)
    assert "falls back to 'xla'" in caplog.text and "backend 'cpu'" in caplog.text
    ref, ref_weights = jax.jit(lambda *a: model_gdka(*a, plan, impl="xla"))(q, k, v, tm, ctx)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    assert weights is not None and weights.shape == ref_weights.shape
    with pytest.raises(ValueError, match="attention_impl='triton' is unknown"):
        model_gdka(q, k, v, tm, ctx, plan, impl="triton")


@pytest.mark.parametrize("blocks", [
    DiffusionAttentionBlocks(ChebyshevBlocks(block_cols=8, block_rows=8, block_degree=8),
                             FlashBlocks(block_q=8, block_k=8)),
    DiffusionAttentionBlocks(),  # S = 17 below the 64 tile: padded to the power of two 32
], ids=["small-tiles", "default-tiles"])
def test_interpret_path_matches_model_xla_path_with_padding(blocks):
    # S = 17 does not tile: the dispatcher pads S with isolated, masked positions and the head dim
    # 6 -> 16 with zeros (Triton needs power-of-two tiles, dots >= 16), then cuts back;
    # C = 12 does not divide by block_cols = 8: it uses the power-of-two divisor 4.
    q, k, v, tm, ctx = _inputs()
    plan = heat_kernel_plan(1.0)
    f = jax.jit(lambda *a: pallas_gdka(*a, plan, block=blocks, interpret=True))
    out = f(q, k, v, tm, ctx.laplacian, ctx.node_mask_BxS, ctx.passthrough_mask_BxS)
    ref = jax.jit(lambda *a: model_gdka(*a, plan, impl="xla")[0])(q, k, v, tm, ctx)
    assert out.shape == q.shape
    assert_rel_close(out, ref, jnp.float32, what="pallas (interpret) vs model xla path")
