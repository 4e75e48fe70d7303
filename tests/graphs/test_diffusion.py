"""Chebyshev diffusion vs the exact heat kernel (scipy expm), masking, invariances, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from grn_jax.graphs import (ChebyshevPlan, EllLayout, apply_packed, diffuse, diffuse_exact, fixed_order_heat_kernel_plan,
                            heat_kernel_plan, normalized_laplacian, pack_laplacian, pack_shifted)
from grn_jax.testing import assert_allclose, assert_rel_close, assert_reorder_close, relative_error, tolerance
from tests.graphs.test_laplacian import laplacian_oracle, random_graph_batch

B, S, E, D = 3, 16, 24, 5
N_REAL = [16, 11, 7]  # CLS + genes per cell; the rest is padding
BETAS = [0.01, 0.1, 1.0, 10.0]
IMPLS = ["xla", "native"]  # the pure-JAX recurrence and the fused C++ CPU kernel, same oracle


def _masks(n_real, seq_len):
    node = np.arange(seq_len)[None, :] < np.asarray(n_real)[:, None]
    cls = np.zeros_like(node)
    cls[:, 0] = True
    return node, cls


def expm_oracle(s, r, w, m, q, beta, n_real):
    """exp(-beta L) Q per cell with scipy, in float64, on the graph nodes only; CLS passes."""
    lap = laplacian_oracle(s, r, w, m, q.shape[1])
    node, cls = _masks(n_real, q.shape[1])
    graph = node & ~cls
    out = np.zeros(q.shape, np.float64)
    for b in range(q.shape[0]):
        q0 = np.where(graph[b][:, None], q[b].astype(np.float64), 0)
        out[b] = np.where(graph[b][:, None], scipy.linalg.expm(-beta * lap[b]) @ q0, 0)
    return np.where(cls[..., None], q, out)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    s, r, w, m = random_graph_batch(rng, B, S, E, n_real=N_REAL)
    q = rng.standard_normal((B, S, D)).astype(np.float32)
    node, cls = _masks(N_REAL, S)
    q[~node] = np.nan  # padding content must never leak into real positions
    return s, r, w, m, q, node, cls


K_PAD = 28  # every test plan is padded with zero coefficients to this order: one compile serves all


def padded(plan):
    """Coefficients c_0..c_K_PAD (zeros past the plan's order: exact, and one static shape)."""
    assert plan.order <= K_PAD
    c = np.zeros(K_PAD + 1)
    c[:plan.order + 1] = plan.as_array()
    return c


@functools.partial(jax.jit, static_argnames=("layout", "cell_loop", "impl"))
def _run(s, r, w, m, q, coeffs, node, cls, layout=EllLayout(), cell_loop="auto", impl="xla"):
    lap = normalized_laplacian(s, r, w, m, q.shape[1])
    return diffuse(lap, q, coeffs, node_mask_BxS=node, passthrough_mask_BxS=cls, layout=layout, cell_loop=cell_loop,
                   impl=impl)


def _diffuse(s, r, w, m, q, node, cls, plan, **kw):
    coeffs = padded(plan) if isinstance(plan, ChebyshevPlan) else np.asarray(plan)
    dtype = np.float64 if np.asarray(q).dtype == np.float64 else np.float32
    return _run(s, r, w, m, q, coeffs.astype(dtype), node, cls, **kw)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("impl", IMPLS)
def test_float32_matches_expm(problem, beta, impl):
    s, r, w, m, q, node, cls = problem
    got = np.asarray(_diffuse(s, r, w, m, q, node, cls, heat_kernel_plan(beta), impl=impl))
    want = expm_oracle(s, r, w, m, np.where(node[..., None], q, 0), beta, N_REAL)
    assert got.dtype == np.float32
    assert np.all(got[~node] == 0), "padding positions must be zero"
    np.testing.assert_array_equal(got[:, 0], q[:, 0])  # CLS passes through bit-for-bit
    assert_rel_close(got, want, np.float32, what=f"chebyshev beta={beta}")


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("impl", IMPLS)
def test_float64_matches_expm(problem, beta, impl):
    s, r, w, m, q, node, cls = problem
    with jax.enable_x64(True):
        plan = heat_kernel_plan(beta, 1e-13)
        got = np.asarray(_diffuse(s, r, w.astype(np.float64), m, q.astype(np.float64), node, cls, plan, impl=impl))
    assert got.dtype == np.float64
    want = expm_oracle(s, r, w.astype(np.float64), m, np.where(node[..., None], q, 0).astype(np.float64), beta,
                       N_REAL)
    assert_rel_close(got, want, np.float64, what=f"chebyshev float64 beta={beta}")
    # the dense eigh reference (its float32 form is itself only ~1e-6 accurate at beta = 10)
    with jax.enable_x64(True):
        lap = normalized_laplacian(s, r, w.astype(np.float64), m, S)
        exact = np.asarray(diffuse_exact(lap, jnp.asarray(q, jnp.float64), beta, node_mask_BxS=node,
                                         passthrough_mask_BxS=cls))
    assert_rel_close(exact, want, np.float64, what=f"eigh reference beta={beta}")


@pytest.mark.parametrize("impl", IMPLS)
def test_unhalved_c0_would_be_caught(problem, impl):
    """Public GREmLN defect: c_0 not halved = exp(-beta L) + c_0/2 I. The accuracy test above
    rejects it by a factor of ~1e6."""
    s, r, w, m, q, node, cls = problem
    plan = heat_kernel_plan(0.1)
    unhalved = padded(plan)
    unhalved[0] *= 2.0  # diffuse halves c_0 itself; doubling reproduces the defect
    bad = np.asarray(_diffuse(s, r, w, m, q, node, cls, unhalved, impl=impl))
    want = expm_oracle(s, r, w, m, np.where(node[..., None], q, 0), 0.1, N_REAL)
    assert relative_error(bad, want) > 0.5
    assert relative_error(bad, want) > 1e5 * tolerance(np.float32).rel


def test_fixed_order_64_agrees(problem):
    s, r, w, m, q, node, cls = problem
    lap = normalized_laplacian(s, r, w, m, S)
    got = diffuse(lap, jnp.asarray(q), fixed_order_heat_kernel_plan(0.1, 64), node_mask_BxS=node,
                  passthrough_mask_BxS=cls, layout=None)
    want = expm_oracle(s, r, w, m, np.where(node[..., None], q, 0), 0.1, N_REAL)
    assert_rel_close(got, want, np.float32, what="K=64")


def test_one_way_star_is_bounded():
    """Public-code defect: source-only degrees on one-way edges blow outputs up to ~1e6 ||Q||.
    The heat kernel is a contraction: ||exp(-beta L) Q|| <= ||Q||."""
    s = np.array([[1, 1, 1, 1, 1]], np.int32)
    r = np.array([[2, 3, 4, 5, 6]], np.int32)
    w = np.ones((1, 5), np.float32)
    m = np.ones((1, 5), bool)
    q = np.random.default_rng(3).standard_normal((1, 8, 4)).astype(np.float32)
    node, cls = _masks([8], 8)
    got = np.asarray(_diffuse(s, r, w, m, q, node, cls, heat_kernel_plan(1.0), layout=None))
    assert np.linalg.norm(got[0, 1:]) <= np.linalg.norm(q[0, 1:])
    assert_rel_close(got, expm_oracle(s, r, w, m, q, 1.0, [8]), np.float32)


@pytest.mark.parametrize("impl", IMPLS)
def test_batch_and_padding_invariance(problem, impl):
    s, r, w, m, q, node, cls = problem
    plan = heat_kernel_plan(1.0)
    ref = np.asarray(_diffuse(s, r, w, m, q, node, cls, plan, impl=impl))
    # other batch-mates: cell 0 kept, cells 1, 2 replaced by fresh graphs and queries
    rng = np.random.default_rng(7)
    s2, r2, w2, m2 = random_graph_batch(rng, B, S, E)
    q2 = rng.standard_normal((B, S, D)).astype(np.float32)
    for a, b in ((s2, s), (r2, r), (w2, w), (m2, m), (q2, q)):
        a[0] = b[0]
    node2, cls2 = _masks([16, 16, 16], S)
    node2[0] = node[0]
    other = np.asarray(_diffuse(s2, r2, w2, m2, q2, node2, cls2, plan, impl=impl))
    np.testing.assert_array_equal(other[0], ref[0])
    # more padding (S 16 -> 40) and more edge slots (E 24 -> 64) for cell 1 (11 real tokens)
    pad_s, pad_e = 40, 64
    sp = np.zeros((1, pad_e), np.int32)
    rp = np.zeros((1, pad_e), np.int32)
    wp = np.zeros((1, pad_e), np.float32)
    mp = np.zeros((1, pad_e), bool)
    sp[0, :E], rp[0, :E], wp[0, :E], mp[0, :E] = s[1], r[1], w[1], m[1]
    qp = np.full((1, pad_s, D), 1e30, np.float32)
    qp[0, :S] = np.where(node[1][:, None], q[1], 1e30)
    nodep, clsp = _masks([N_REAL[1]], pad_s)
    more = np.asarray(_diffuse(sp, rp, wp, mp, qp, nodep, clsp, plan, impl=impl))
    # another S / E bucket is another program: equal up to summation order (Chebyshev terms x edge slots)
    assert_reorder_close(more[0, :S], ref[1], np.float32, n_terms=len(plan.coeffs) * pad_e)
    assert np.all(more[0, N_REAL[1]:] == 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_permutation_equivariance(problem, impl):
    s, r, w, m, q, node, cls = problem
    plan = heat_kernel_plan(1.0)
    ref = np.asarray(_diffuse(s, r, w, m, q, node, cls, plan, impl=impl))
    perm = np.concatenate([[0], 1 + np.random.default_rng(5).permutation(S - 1)])  # CLS stays at 0
    inv = np.argsort(perm)  # new position of old position p is inv[p]
    got = np.asarray(_diffuse(inv[s].astype(np.int32), inv[r].astype(np.int32), w, m, q[:, perm], node[:, perm],
                              cls[:, perm], plan, impl=impl))
    np.testing.assert_allclose(got, ref[:, perm], rtol=1e-5, atol=1e-6)


def test_vmap_loop_and_bf16(problem):
    """cell_loop="vmap" (accelerators) with bf16 Q: computed in float32 from the bf16 input, so it
    equals the float32 "map" result on that input, rounded to bf16 once."""
    s, r, w, m, q, node, cls = problem
    plan = heat_kernel_plan(0.1)
    qb = jnp.asarray(np.where(node[..., None], q, 0), jnp.bfloat16)
    got = _diffuse(s, r, w, m, qb, node, cls, plan, cell_loop="vmap")
    assert got.dtype == jnp.bfloat16
    want = np.asarray(_diffuse(s, r, w, m, np.asarray(qb, np.float32), node, cls, plan, cell_loop="map"))
    assert_allclose(np.asarray(got, np.float32), np.asarray(jnp.asarray(want).astype(jnp.bfloat16), np.float32),
                    jnp.bfloat16)
    # and the float32 vmap path agrees with map to float32 round-off
    assert_rel_close(np.asarray(got, np.float32), want, jnp.bfloat16, what="vmap bf16 vs map f32")


@pytest.mark.parametrize("impl", IMPLS)
def test_grad_wrt_q_is_exp_minus_2_beta_l(problem, impl):
    """d/dQ 1/2 ||exp(-beta L) Q||^2 = exp(-2 beta L) Q on graph nodes (L symmetric)."""
    s, r, w, m, q, node, cls = problem
    beta = 0.5
    q0 = np.where(node[..., None], q, 0)
    graph = jnp.asarray(node & ~cls)
    coeffs = padded(heat_kernel_plan(beta)).astype(np.float32)

    def loss(qq):
        out = _run(s, r, w, m, qq, coeffs, node, cls, impl=impl)
        return 0.5 * jnp.sum(jnp.where(graph[..., None], out, 0) ** 2)

    got = jax.jit(jax.grad(loss))(jnp.asarray(q0))
    want = expm_oracle(s, r, w, m, q0, 2 * beta, N_REAL)
    want[:, 0] = 0  # the loss ignores the CLS output
    assert_rel_close(got, want, np.float32, what="grad wrt Q")


@pytest.mark.parametrize("impl", IMPLS)
def test_grad_wrt_edge_weights_matches_expm_finite_differences(problem, impl):
    s, r, w, m, q, node, cls = problem
    beta = 1.0
    q0 = np.where(node[..., None], q, 0).astype(np.float64)
    g = np.random.default_rng(11).standard_normal(q0.shape)
    with jax.enable_x64(True):
        coeffs = padded(heat_kernel_plan(beta, 1e-13))

        def loss(ww):
            return jnp.sum(_run(s, r, ww, m, jnp.asarray(q0), coeffs, node, cls, impl=impl) * g)

        grad = np.asarray(jax.grad(loss)(jnp.asarray(w, jnp.float64)))

    def oracle_loss(ww):
        return float(np.sum(expm_oracle(s, r, ww, m, q0, beta, N_REAL) * g))

    h = 1e-6
    checked = 0
    for b, e in [(0, 0), (0, 3), (1, 5), (2, 1), (2, 4)]:
        if not m[b, e] or s[b, e] == r[b, e]:
            continue
        wp, wm = w.astype(np.float64), w.astype(np.float64)
        wp[b, e] += h
        wm[b, e] -= h
        fd = (oracle_loss(wp) - oracle_loss(wm)) / (2 * h)
        np.testing.assert_allclose(grad[b, e], fd, rtol=1e-6, atol=1e-8)
        checked += 1
    assert checked >= 3
    assert np.all(grad[~m] == 0)


def test_bad_arguments(problem):
    s, r, w, m, q, node, cls = problem
    lap = normalized_laplacian(s, r, w, m, S)
    plan = heat_kernel_plan(0.1)
    with pytest.raises(ValueError, match="q_BxSxD must be"):
        diffuse(lap, jnp.zeros((B, S)), plan, node_mask_BxS=node)
    with pytest.raises(ValueError, match="laplacian must be a BCOO"):
        diffuse(lap, jnp.zeros((B, S + 1, D)), plan, node_mask_BxS=node)
    with pytest.raises(ValueError, match="node_mask_BxS"):
        diffuse(lap, jnp.zeros((B, S, D)), plan, node_mask_BxS=node[:, 1:])
    with pytest.raises(ValueError, match="cell_loop"):
        diffuse(lap, jnp.zeros((B, S, D)), plan, node_mask_BxS=node, cell_loop="scan")
    with pytest.raises(ValueError, match="BCOO"):
        diffuse(lap.todense(), jnp.zeros((B, S, D)), plan, node_mask_BxS=node)


@pytest.mark.parametrize("layout", [EllLayout(width=2, heavy_rows=16, heavy_width=14),  # rows spill to heavy rows
                                    EllLayout(width=1, heavy_rows=1, heavy_width=1),  # overflows: COO fallback
                                    None])  # COO segment-sum path
def test_sparse_layouts_agree_with_expm(problem, layout):
    s, r, w, m, q, node, cls = problem
    lap = normalized_laplacian(s, r, w, m, S)
    if layout is not None:
        packed = jax.vmap(pack_shifted, in_axes=(0, 0, 0, None, None))(
            lap.data, lap.indices[..., 0], lap.indices[..., 1], S, layout)
        assert bool(jnp.any(packed.overflow)) == (layout.width == 1)
    got = _diffuse(s, r, w, m, q, node, cls, heat_kernel_plan(1.0), layout=layout)
    want = expm_oracle(s, r, w, m, np.where(node[..., None], q, 0), 1.0, N_REAL)
    assert_rel_close(got, want, np.float32, what=f"layout {layout}")


def test_packed_product_matches_dense(problem):
    """(L - I) t from the packed slots equals the dense product, hubs included."""
    s, r, w, m, q, node, cls = problem
    lap = normalized_laplacian(s, r, w, m, S)
    layout = EllLayout(width=2, heavy_rows=16, heavy_width=14)  # rows with > 2 entries spill to heavy rows
    t = np.random.default_rng(2).standard_normal((S, D)).astype(np.float32)
    dense = np.asarray(lap.todense(), np.float64)

    @jax.jit
    def packed_products(lap, t):
        p = jax.vmap(pack_shifted, in_axes=(0, 0, 0, None, None))(
            lap.data, lap.indices[..., 0], lap.indices[..., 1], S, layout)
        return p, jax.vmap(apply_packed, in_axes=(0, None))(p, t)

    p, got = packed_products(lap, jnp.asarray(t))
    assert not bool(jnp.any(p.overflow)) and float(p.heavy_chunk_used.sum()) > 0  # heavy rows in use
    for b in range(B):
        assert_rel_close(got[b], (dense[b] - np.eye(S)) @ t, np.float32, what=f"cell {b}")


def test_prepacked_laplacian_reused(problem):
    """pack_laplacian once per batch, diffuse in every layer: same values as packing inside."""
    s, r, w, m, q, node, cls = problem
    plan = heat_kernel_plan(1.0)
    ref = np.asarray(_diffuse(s, r, w, m, q, node, cls, plan))

    @jax.jit
    def two_layers(lap, q):
        packed = pack_laplacian(lap)
        first = diffuse(packed, q, padded(plan).astype(np.float32), node_mask_BxS=node, passthrough_mask_BxS=cls)
        return first, diffuse(packed, first, padded(plan).astype(np.float32), node_mask_BxS=node,
                              passthrough_mask_BxS=cls)

    first, second = two_layers(normalized_laplacian(s, r, w, m, S), jnp.asarray(q))
    np.testing.assert_allclose(np.asarray(first), ref, rtol=1e-6, atol=1e-7)
    want = expm_oracle(s, r, w, m, np.where(node[..., None], q, 0), 2.0, N_REAL)  # exp(-L) twice = exp(-2L)
    assert_rel_close(second, want, np.float32, what="two layers")
