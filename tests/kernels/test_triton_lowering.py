"""The GPU path without a GPU: the kernels lower to Triton IR for CUDA (`jax.export`, nothing compiled).

Lowering runs the Pallas-Triton lowering rules, so an unsupported primitive, a
non-power-of-two tile or a bad indexer fails here, on CPU. What it cannot show:
PTX compilation, runtime correctness and speed on a GPU (the `gpu`-marked tests).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from grn_jax.graphs import heat_kernel_plan, normalized_laplacian
from grn_jax.kernels import (ChebyshevBlocks, DiffusionAttentionBlocks, FlashBlocks, build_ell_laplacian,
                             diffusion_attention)
from grn_jax.models.attention import DiffusionContext
from grn_jax.models.attention import diffusion_attention as model_gdka

from .graph_cases import random_graph_batch

_TRITON = "__gpu$xla.gpu.triton"


def _lower_for_cuda(fn, *args) -> str:
    exp = export.export(jax.jit(fn), platforms=["cuda"],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call(_TRITON)])(*args)
    text = exp.mlir_module()
    assert _TRITON in text
    return text


def _triton_kernels(fn, *args):
    return re.findall(r'name = "([a-z_]+)", num_stages', _lower_for_cuda(fn, *args))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_and_their_vjp_lower_to_triton(dtype):
    b, s, h, d = 2, 128, 2, 32
    snd, rcv, w, em, tm = random_graph_batch(np.random.default_rng(0), b, s, 256, [s, 100])
    ell = build_ell_laplacian(snd, rcv, w, em, tm, width=16)
    q = jnp.ones((b, s, h, d), dtype)
    blocks = DiffusionAttentionBlocks(ChebyshevBlocks(block_cols=32, block_rows=32, block_degree=8),
                                      FlashBlocks(block_q=32, block_k=32))

    def fwd_bwd(q, k, v, mask, ell, coeffs):
        out, vjp = jax.vjp(lambda *a: diffusion_attention(*a, mask, ell, coeffs, block=blocks), q, k, v)
        return out, vjp(out)

    text = _lower_for_cuda(fwd_bwd, q, q, q, jnp.asarray(tm), ell, jnp.ones((9,), jnp.float32))
    names = re.findall(r'name = "([a-z_]+)", num_stages', text)
    # No S x S array anywhere in the program, forward or backward (S = 128).
    assert not re.search(r"tensor<[^>]*128x128", text)
    # forward diffusion, flash attention, its two backward kernels, and the diffusion kernel again
    # for dQ (the operator is symmetric)
    assert sorted(names) == ["chebyshev_diffusion", "chebyshev_diffusion", "diffusion_flash_attention",
                             "diffusion_flash_attention_dkv", "diffusion_flash_attention_dq"]


def test_model_pallas_path_lowers_to_triton(monkeypatch):
    # On CPU the model falls back to XLA; pretend the backend is a GPU to lower what it would run.
    import grn_jax.kernels.dispatch as dispatch

    monkeypatch.setattr(dispatch, "pallas_unavailable_reason", lambda **kw: None)
    s, h, d = 17, 2, 6  # exercises the power-of-two padding of S, the head dim and the column block
    snd, rcv, w, em, tm = random_graph_batch(np.random.default_rng(1), 2, s, 30, [s, 11])
    cls = jnp.asarray((np.arange(s)[None, :] == 0) & tm)
    ctx = DiffusionContext(normalized_laplacian(snd, rcv, w, em, num_nodes=s), jnp.asarray(tm), cls)
    q = jnp.ones((2, s, h, d), jnp.float32)
    plan = heat_kernel_plan(0.1)
    names = _triton_kernels(lambda q, k, v, m, c: model_gdka(q, k, v, m, c, plan, impl="pallas")[0],
                            q, q, q, jnp.asarray(tm), ctx)
    assert sorted(names) == ["chebyshev_diffusion", "diffusion_flash_attention"]


def test_lowering_rejects_non_power_of_two_tiles():
    # Interpret mode accepts any dividing tile; Triton does not — the model path pads instead (above).
    from grn_jax.kernels import chebyshev_diffusion

    snd, rcv, w, em, tm = random_graph_batch(np.random.default_rng(0), 1, 24, 40, [24])
    ell = build_ell_laplacian(snd, rcv, w, em, tm, width=16)
    with pytest.raises(ValueError, match="power of 2"):
        _triton_kernels(lambda q, e: chebyshev_diffusion(q, e, jnp.ones((3,)), block=ChebyshevBlocks(
            block_rows=12, block_cols=16)), jnp.ones((1, 24, 16)), ell)


def test_gremln_gradient_with_pallas_impl_lowers_to_triton(monkeypatch):
    # The whole model's training gradient (scanned GDKA layers) with attention_impl="pallas", for CUDA.
    import grn_jax.kernels.dispatch as dispatch
    from grn_jax.models import build_model, example_batch, tiny

    monkeypatch.setattr(dispatch, "pallas_unavailable_reason", lambda **kw: None)
    cfg = tiny(attention_impl="pallas")
    model = build_model(cfg)
    batch = example_batch(cfg, batch_size=2, seq_len=32, num_edges=32)
    params = jax.eval_shape(lambda key: model.init({"params": key}, batch, deterministic=True), jax.random.key(0))

    def loss(p, batch):
        return jnp.mean(model.apply(p, batch, deterministic=True).bin_logits ** 2)

    names = _triton_kernels(jax.grad(loss), params, batch)
    assert sorted(set(names)) == ["chebyshev_diffusion", "diffusion_flash_attention",
                                  "diffusion_flash_attention_dkv", "diffusion_flash_attention_dq"]
