"""Kernels under a batch-sharded mesh (8 fake CPU devices): each device runs its own cells only.

A pallas_call or FFI custom call has no partitioning rule, so without `shard_map`
XLA would gather the batch and every device would compute all of it. Checked
here: every kernel call in the traced program sits inside a `shard_map` and sees
the LOCAL batch (B / shards), the compiled native custom call has local operand
shapes, and values and gradients equal the unsharded (1-device) run bitwise: the
per-cell arithmetic is the same program on the same numbers.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from grn_jax.graphs import diffuse, heat_kernel_plan, normalized_laplacian, resolve_impl
from grn_jax.kernels import (ChebyshevBlocks, DiffusionAttentionBlocks, FlashBlocks, build_ell_laplacian,
                             diffusion_attention)
from grn_jax.kernels import native_build
from grn_jax.kernels.sharding import batch_mesh_axes, batch_shards
from grn_jax.train import sharding as sh
from grn_jax.train.config import MeshConfig

from .graph_cases import random_graph_batch

KERNEL_PRIMITIVES = ("ffi_call", "pallas_call")


def _mesh(data, fsdp, tensor=1):
    return sh.make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor))


def _kernel_calls(jaxpr, inside=False):
    """(primitive, inside a shard_map?, leading dim of its first output) of every kernel call, nested too."""
    found = []
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in KERNEL_PRIMITIVES:
            found.append((name, inside, eqn.outvars[0].aval.shape[0]))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if isinstance(sub, jax.extend.core.Jaxpr):
                    found += _kernel_calls(sub, inside or name == "shard_map")
    return found


def _graph_inputs(seed, b, s, e, d):
    rng = np.random.default_rng(seed)
    n_real = rng.integers(s // 2, s + 1, b)
    n_real[0] = s
    snd, rcv, w, em, tm = random_graph_batch(rng, b, s, e, n_real)
    q = rng.standard_normal((b, s, d)).astype(np.float32)
    cls = (np.arange(s)[None, :] == 0) & tm
    return tuple(jnp.asarray(x) for x in (snd, rcv, w, em, tm, q, cls))


def _ell_inputs(seed, b, s, h, dh):
    """(token mask, ELL Laplacian of 24 random edges per cell) for the Pallas GDKA kernels."""
    snd, rcv, w, em, tm, _, _ = _graph_inputs(seed, b, s, 24, h * dh)
    return tm, build_ell_laplacian(snd, rcv, w, em, tm, width=16)


@pytest.mark.skipif(native_build.unavailable_reason() is not None or jax.default_backend() != "cpu",
                    reason="native CPU kernel not built here")
@pytest.mark.parametrize("mesh_shape", [(8, 1), (2, 4)])
def test_native_diffusion_runs_per_shard_and_equals_one_device(mesh_shape):
    b, s, e, d = 16, 24, 40, 16
    args = _graph_inputs(0, b, s, e, d)
    plan = heat_kernel_plan(1.0)

    def loss(w, q, snd, rcv, em, tm, cls):  # value and both differentiable inputs (Q, edge weights)
        lap = normalized_laplacian(snd, rcv, w, em, num_nodes=s)
        out = diffuse(lap, q, plan, node_mask_BxS=tm, passthrough_mask_BxS=cls, impl="native")
        return jnp.sum(out * jnp.cos(out)), out

    snd, rcv, w, em, tm, q, cls = args
    f = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    (_, want), want_grads = jax.jit(f)(w, q, snd, rcv, em, tm, cls)  # no mesh: one program, every cell

    mesh = _mesh(*mesh_shape)
    sharded = jax.device_put((w, q, snd, rcv, em, tm, cls), NamedSharding(mesh, P(("data", "fsdp"))))
    g = jax.jit(sh.with_rules(f, mesh))
    calls = _kernel_calls(jax.make_jaxpr(sh.with_rules(f, mesh))(*sharded).jaxpr)
    assert [c[0] for c in calls] == ["ffi_call", "ffi_call"]  # forward; dQ in the backward
    assert all(inside and local == b // 8 for _, inside, local in calls), calls
    hlo = g.lower(*sharded).compile().as_text()
    calls_hlo = [ln for ln in hlo.splitlines() if 'custom_call_target="grn_cpu_diffuse_f32"' in ln]
    assert calls_hlo and all(f"f32[{b // 8},{s},{d}]" in ln.split("custom-call(")[0] for ln in calls_hlo), calls_hlo

    (_, got), got_grads = g(*sharded)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for name, a, w_ in zip(("d weights", "d Q"), got_grads, want_grads):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(w_), err_msg=name)


def test_auto_takes_native_only_when_the_batch_covers_every_device():
    mesh = _mesh(2, 4)
    assert batch_mesh_axes() == (None, ())  # no mesh in context
    with sh.rules_in_force(mesh):
        assert batch_mesh_axes(16)[1] == ("data", "fsdp")
        assert batch_mesh_axes(2)[1] == ("data",)  # fsdp=4 does not divide 2 (nor 2 x 4)
        assert batch_shards(16) == (8, 8) and batch_shards(2) == (2, 8)
        if native_build.unavailable_reason() is None and jax.default_backend() == "cpu":
            assert resolve_impl("auto", batch_size=16) == "native"
            assert resolve_impl("auto", batch_size=2) == "xla"  # would be replicated 4x over fsdp
    with sh.rules_in_force(_mesh(1, 1, 8)):  # tensor-only mesh: the batch is not sharded at all
        assert batch_shards(16) == (1, 8)
        assert resolve_impl("auto", batch_size=16) == "xla"


BLOCKS = DiffusionAttentionBlocks(ChebyshevBlocks(block_cols=16, block_rows=8, block_degree=8),
                                  FlashBlocks(block_q=8, block_k=8))


@pytest.mark.parametrize("backward", ["pallas", "xla"])
def test_pallas_gdka_runs_per_shard_and_equals_one_device(backward):
    """Interpret-mode Pallas: the diffusion kernel, the flash kernel and (backward="pallas") its two
    backward kernels each see the local batch inside shard_map; forward and VJP equal 1 device."""
    b, s, h, dh = 8, 16, 2, 8
    tm, ell = _ell_inputs(1, b, s, h, dh)
    rng = np.random.default_rng(2)
    q, k, v, g = (jnp.asarray(rng.standard_normal((b, s, h, dh)), jnp.float32) for _ in range(4))
    coeffs = jnp.asarray(heat_kernel_plan(1.0).as_array(), jnp.float32)
    blocks = DiffusionAttentionBlocks(BLOCKS.diffusion, FlashBlocks(block_q=8, block_k=8, backward=backward))

    def fwd_vjp(q, k, v, mask, ell, g):
        out, vjp = jax.vjp(lambda *x: diffusion_attention(*x, mask, ell, coeffs, block=blocks, interpret=True),
                           q, k, v)
        return out, vjp(g)

    operands = (q, k, v, tm, ell, g)
    want = jax.jit(fwd_vjp)(*operands)
    mesh = _mesh(2, 4)
    sharded = jax.device_put(operands, NamedSharding(mesh, P(("data", "fsdp"))))
    f = sh.with_rules(fwd_vjp, mesh)
    calls = _kernel_calls(jax.make_jaxpr(f)(*sharded).jaxpr)
    # forward: diffusion + flash; backward: flash dQ, dK/dV (pallas only) + diffusion of the cotangent
    assert len(calls) == (5 if backward == "pallas" else 3), calls
    assert all(inside and local == b // 8 for _, inside, local in calls), calls
    got = jax.jit(f)(*sharded)
    for a, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(w_))


def test_kernels_without_a_mesh_are_not_wrapped():
    b, s, h, dh = 2, 16, 1, 8
    tm, ell = _ell_inputs(3, b, s, h, dh)
    q = jnp.ones((b, s, h, dh), jnp.float32)
    coeffs = jnp.ones((4,), jnp.float32)
    fn = functools.partial(diffusion_attention, block=BLOCKS, interpret=True)
    calls = _kernel_calls(jax.make_jaxpr(lambda q: fn(q, q, q, tm, ell, coeffs))(q).jaxpr)
    assert calls == [("pallas_call", False, b)] * 2


def test_sharded_pallas_gdka_lowers_for_cuda_with_local_shapes():
    """Up to `.compile()` for 8 GPUs: the Triton calls sit in the manual (shard_map) region at B / 8."""
    from jax import export

    b, s, h, dh = 8, 16, 2, 8
    tm, ell = _ell_inputs(4, b, s, h, dh)
    q = jnp.ones((b, s, h, dh), jnp.float32)
    coeffs = jnp.ones((4,), jnp.float32)
    mesh = _mesh(8, 1)
    fn = sh.with_rules(lambda q, m, e: diffusion_attention(q, q, q, m, e, coeffs, block=BLOCKS), mesh)
    sharded = jax.device_put((q, tm, ell), NamedSharding(mesh, P(("data", "fsdp"))))
    triton = "__gpu$xla.gpu.triton"
    text = export.export(jax.jit(fn), platforms=["cuda"],
                         disabled_checks=[export.DisabledSafetyCheck.custom_call(triton)])(*sharded).mlir_module()
    calls = [ln for ln in text.splitlines() if triton in ln and "stablehlo.custom_call" in ln]
    assert len(calls) == 2, calls  # diffusion + flash
    assert all(f"tensor<1x{s}x" in ln for ln in calls), calls  # local batch of 1 cell per device
    assert "sdy.manual_computation" in text  # the shard_map region (Shardy) that the partitioner leaves alone
