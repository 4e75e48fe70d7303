"""Fused Chebyshev diffusion kernel (Pallas interpret mode) vs its jnp reference vs exact oracles."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.graphs import diffuse, heat_kernel_plan, normalized_laplacian
from grn_jax.kernels import (ChebyshevBlocks, build_ell_laplacian, chebyshev_diffusion,
                             chebyshev_diffusion_reference, ell_degree_bound)
from grn_jax.testing import assert_rel_close

from .graph_cases import dense_laplacian_np, diffuse_expm_np, has_gpu, heat_coeffs, random_graph_batch


def _case(seed, b, s, c, e, n_real, dtype=jnp.float32, width=None, multiple=8):
    rng = np.random.default_rng(seed)
    snd, rcv, w, em, tm = random_graph_batch(rng, b, s, e, n_real)
    width = width or ell_degree_bound(snd, rcv, em, s, multiple=multiple)
    ell = build_ell_laplacian(snd, rcv, w, em, tm, width=width)
    q = jnp.asarray(rng.normal(size=(b, s, c)), dtype)
    return (snd, rcv, w, em, tm), ell, q


@functools.partial(jax.jit, static_argnames=("block",))
def _kernel_and_vjp(q, ell, coeffs, g, block):
    f = functools.partial(chebyshev_diffusion, block=block, interpret=True)
    out, vjp = jax.vjp(lambda x: f(x, ell, coeffs), q)
    return out, vjp(g)[0]


@jax.jit
def _reference_and_vjp(q, ell, coeffs, g):
    out, vjp = jax.vjp(lambda x: chebyshev_diffusion_reference(x, ell, coeffs), q)
    return out, vjp(g)[0]


def test_reference_matches_expm_oracle_and_graph_core():
    beta = 1.0
    graph, ell, q = _case(0, 2, 24, 6, 40, [24, 13])
    plan = heat_kernel_plan(beta)
    ref = jax.jit(chebyshev_diffusion_reference)(q, ell, jnp.asarray(plan.as_array(), jnp.float32))
    exact = diffuse_expm_np(dense_laplacian_np(*graph[:4], 24), np.asarray(q), graph[4], beta)
    assert_rel_close(ref, exact, jnp.float32, what="reference vs expm")
    snd, rcv, w, em, tm = graph
    lap = normalized_laplacian(snd, rcv, w, em, num_nodes=24)
    cls = np.arange(24)[None, :] == 0
    core = jax.jit(lambda lap, q, nm, pm: diffuse(lap, q, plan, node_mask_BxS=nm, passthrough_mask_BxS=pm))(
        lap, q, jnp.asarray(tm), jnp.asarray(cls & tm))
    assert_rel_close(ref, core, jnp.float32, what="reference vs grn_jax.graphs.diffuse")


def test_closed_form_coefficients_reach_the_oracle_at_beta_10():
    beta, k_terms = 10.0, 24  # DESIGN: beta = 10 needs ~20 terms
    graph, ell, q = _case(3, 1, 16, 4, 30, [16])
    ref = jax.jit(chebyshev_diffusion_reference)(q, ell, jnp.asarray(heat_coeffs(beta, k_terms), jnp.float32))
    exact = diffuse_expm_np(dense_laplacian_np(*graph[:4], 16), np.asarray(q), graph[4], beta)
    assert_rel_close(ref, exact, jnp.float32, what="beta=10")


SWEEP = [
    # (S, C, E, n_real, K, blocks, dtype)
    (16, 8, 20, [16, 9], 9, ChebyshevBlocks(block_cols=4, block_rows=4, block_degree=2), jnp.float32),
    (32, 16, 48, [30, 32], 2, ChebyshevBlocks(block_cols=16, block_rows=8, block_degree=4), jnp.float32),
    (16, 12, 16, [11, 16], 1, ChebyshevBlocks(block_cols=4, block_rows=16, block_degree=8), jnp.float32),
    (32, 8, 40, [32, 20], 21, ChebyshevBlocks(block_cols=8, block_rows=8, block_degree=8), jnp.bfloat16),
]


@pytest.mark.parametrize("s,c,e,n_real,k_terms,blocks,dtype", SWEEP)
def test_kernel_matches_reference_forward_and_vjp(s, c, e, n_real, k_terms, blocks, dtype):
    _, ell, q = _case(s + c + k_terms, len(n_real), s, c, e, n_real, dtype)
    coeffs = jnp.asarray(heat_coeffs(1.0 if k_terms < 20 else 10.0, k_terms), jnp.float32)
    g = jnp.asarray(np.random.default_rng(7).normal(size=q.shape), dtype)
    out, dq = _kernel_and_vjp(q, ell, coeffs, g, blocks)
    ref, dq_ref = _reference_and_vjp(q, ell, coeffs, g)
    assert out.dtype == dtype and dq.dtype == dtype and out.shape == q.shape
    assert_rel_close(out, ref, dtype, what="forward")
    assert_rel_close(dq, dq_ref, dtype, what="vjp")
    tm = np.asarray(ell.node_mask)
    assert np.all(np.asarray(out, np.float32)[~tm & ~np.asarray(ell.passthrough_mask)] == 0), "padding rows not zero"
    np.testing.assert_array_equal(np.asarray(out[:, 0]), np.asarray(q[:, 0]))  # CLS passes through


def test_cell_output_independent_of_batch_mates_and_padding():
    blocks = ChebyshevBlocks(block_cols=4, block_rows=8, block_degree=4)
    coeffs = jnp.asarray(heat_coeffs(1.0, 8), jnp.float32)
    graph, ell, q = _case(11, 2, 32, 4, 40, [14, 32], width=16)
    fwd = jax.jit(lambda q, ell: chebyshev_diffusion(q, ell, coeffs, block=blocks, interpret=True))
    out_pair = fwd(q, ell)
    snd, rcv, w, em, tm = (a[:1] for a in graph)
    alone_ell = build_ell_laplacian(snd, rcv, w, em, tm[:, :16], width=16)
    q_alone = jnp.asarray(np.asarray(q)[:1, :16]).at[:, 14:].set(1e3)  # garbage in padding
    out_alone = fwd(q_alone, alone_ell)
    np.testing.assert_array_equal(np.asarray(out_alone[0, :14]), np.asarray(out_pair[0, :14]))


def test_hub_graph_with_mostly_empty_degree_tiles():
    # A star (hub 1 linked to every gene) plus a chain: width 32, but most row tiles need one degree tile.
    s = 32
    snd = np.concatenate([np.ones(30, np.int32), np.arange(2, 31, dtype=np.int32)])[None]
    rcv = np.concatenate([np.arange(2, 32, dtype=np.int32), np.arange(3, 32, dtype=np.int32)])[None]
    w = np.linspace(0.1, 2.0, snd.shape[1], dtype=np.float32)[None]
    ell = build_ell_laplacian(snd, rcv, w, np.ones_like(snd, bool), np.ones((1, s), bool), width=32)
    assert int(ell.row_degree[0, 1]) == 30 and int(ell.row_degree[0, 10]) == 3
    q = jnp.asarray(np.random.default_rng(2).normal(size=(1, s, 8)), jnp.float32)
    coeffs = jnp.asarray(heat_coeffs(2.0, 12), jnp.float32)
    out, dq = _kernel_and_vjp(q, ell, coeffs, q, ChebyshevBlocks(block_cols=8, block_rows=8, block_degree=4))
    ref, dq_ref = _reference_and_vjp(q, ell, coeffs, q)
    assert_rel_close(out, ref, jnp.float32, what="hub forward")
    assert_rel_close(dq, dq_ref, jnp.float32, what="hub vjp")


def test_validation_errors():
    _, ell, q = _case(5, 1, 16, 8, 10, [16])
    coeffs = jnp.ones((3,), jnp.float32)
    with pytest.raises(ValueError, match=r"q must be \[B, S, C\]"):
        chebyshev_diffusion(q[0], ell, coeffs, interpret=True)
    with pytest.raises(ValueError, match="block_rows=6 does not divide S=16"):
        chebyshev_diffusion(q, ell, coeffs, block=ChebyshevBlocks(block_rows=6), interpret=True)
    with pytest.raises(ValueError, match=r"ELL indices/values must be \[B, S, R\]"):
        chebyshev_diffusion(q[:, :8], ell, coeffs, interpret=True)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        chebyshev_diffusion(q, ell, jnp.ones((0,)), interpret=True)
    with pytest.raises(ValueError, match="must be a positive int"):
        ChebyshevBlocks(block_cols=0)
    with pytest.raises(ValueError, match="floating point"):
        chebyshev_diffusion(q.astype(jnp.int32), ell, coeffs, interpret=True)


@pytest.mark.slow
@pytest.mark.parametrize("s,c,k_terms,bc,br,bd,dtype", [
    (64, 32, 5, 16, 16, 4, jnp.float32), (64, 64, 33, 32, 32, 8, jnp.float32),
    (128, 16, 13, 16, 32, 16, jnp.bfloat16), (48, 24, 64, 8, 16, 8, jnp.float32),
])
def test_kernel_sweep_slow(s, c, k_terms, bc, br, bd, dtype):
    _, ell, q = _case(s * k_terms, 2, s, c, 3 * s, [s, s // 2 + 1], dtype, multiple=bd)
    coeffs = jnp.asarray(heat_coeffs(0.5, k_terms), jnp.float32)
    g = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), dtype)
    out, dq = _kernel_and_vjp(q, ell, coeffs, g, ChebyshevBlocks(block_cols=bc, block_rows=br, block_degree=bd))
    ref, dq_ref = _reference_and_vjp(q, ell, coeffs, g)
    assert_rel_close(out, ref, dtype, what="forward")
    assert_rel_close(dq, dq_ref, dtype, what="vjp")


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs a GPU (Pallas-Triton lowering)")
class TestGpu:
    @pytest.fixture(autouse=True)
    def _float32_matmuls(self):
        # XLA's GPU default for float32 dots is TF32; the references must really be float32.
        with jax.default_matmul_precision("highest"):
            yield

    @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
    def test_compiled_kernel_matches_reference(self, dtype):
        rng = np.random.default_rng(0)
        snd, rcv, w, em, tm = random_graph_batch(rng, 2, 256, 1024, [256, 200])
        gpu = jax.devices("gpu")[0]
        ell = jax.device_put(build_ell_laplacian(snd, rcv, w, em, tm, width=32), gpu)
        q = jax.device_put(jnp.asarray(rng.normal(size=(2, 256, 128)), dtype), gpu)
        coeffs = jnp.asarray(heat_coeffs(1.0, 9), jnp.float32)
        g = jnp.ones_like(q)
        blocks = ChebyshevBlocks(block_cols=32, block_rows=32, block_degree=8)
        f = jax.jit(lambda x: jax.vjp(lambda y: chebyshev_diffusion(y, ell, coeffs, block=blocks), x))
        out, vjp = f(q)
        ref, dq_ref = _reference_and_vjp(q, ell, coeffs, g)
        assert_rel_close(out, ref, dtype, what="gpu forward")
        assert_rel_close(vjp(g)[0], dq_ref, dtype, what="gpu vjp")
