"""The native CPU diffusion kernel (kernels/cpu_diffusion.cc): tile paths vs scipy expm,
selection rules, build-failure fallback, bad indices; and the host allocator setting."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.graphs import diffuse, heat_kernel_plan, normalized_laplacian, resolve_impl
from grn_jax.kernels.cpu_diffusion import tile_width
from grn_jax.testing import assert_rel_close
from tests.graphs.test_diffusion import expm_oracle

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU kernel")


def _hub_graph(rng, b, s, e):
    """A hub (node 1) with degree ~s/2 plus random low-degree edges; node 0 is CLS (no edges)."""
    send = np.empty((b, e), np.int32)
    recv = np.empty((b, e), np.int32)
    for c in range(b):
        half = e // 2
        send[c, :half] = 1
        recv[c, :half] = rng.integers(2, s, half)
        send[c, half:] = rng.integers(1, s, e - half)
        recv[c, half:] = rng.integers(1, s, e - half)
    w = rng.uniform(0.1, 1.0, (b, e)).astype(np.float32)
    m = rng.random((b, e)) < 0.9
    return send, recv, w, m


@pytest.mark.parametrize("width", [16, 32, 64, 72, 100, 128])
def test_tile_paths_match_expm(width):
    """Whole-vector tiles (16/32/64 float32 columns), the scalar tile (8 columns: 72) and a
    remainder tile (100 = 64 + 36) all equal exp(-beta L) Q from scipy."""
    rng = np.random.default_rng(width)
    b, s, e, beta = 2, 40, 60, 1.0
    send, recv, w, m = _hub_graph(rng, b, s, e)
    n_real = [40, 31]
    node = np.arange(s)[None, :] < np.asarray(n_real)[:, None]
    cls = np.zeros_like(node)
    cls[:, 0] = True
    m &= node[np.arange(b)[:, None], send] & node[np.arange(b)[:, None], recv]
    q = rng.standard_normal((b, s, width)).astype(np.float32)
    lap = normalized_laplacian(send, recv, w, m, num_nodes=s)
    got = np.asarray(diffuse(lap, jnp.asarray(q), heat_kernel_plan(beta), node_mask_BxS=node,
                             passthrough_mask_BxS=cls, impl="native"))
    want = expm_oracle(send, recv, w, m, np.where(node[..., None], q, 0), beta, n_real)
    assert np.all(got[~node] == 0)
    np.testing.assert_array_equal(got[:, 0], q[:, 0])
    assert_rel_close(got, want, np.float32, what=f"native width={width}")


def test_bf16_input_computes_in_float32():
    rng = np.random.default_rng(3)
    send, recv, w, m = _hub_graph(rng, 2, 24, 30)
    lap = normalized_laplacian(send, recv, w, m, num_nodes=24)
    node = np.ones((2, 24), bool)
    qb = jnp.asarray(rng.standard_normal((2, 24, 32)), jnp.bfloat16)
    got = diffuse(lap, qb, heat_kernel_plan(0.1), node_mask_BxS=node, impl="native")
    want = diffuse(lap, qb.astype(jnp.float32), heat_kernel_plan(0.1), node_mask_BxS=node, impl="xla")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want.astype(jnp.bfloat16), np.float32))


def test_tile_width_rule():
    assert tile_width(2048, 512, 4) == 32  # 3 x 2048 x 64 x 4 B = 1.5 MiB > 1 MiB; 32 fits
    assert tile_width(256, 512, 4) == 64
    assert tile_width(4096, 512, 4) == 16
    assert tile_width(2048, 72, 4) == 8
    assert tile_width(2048, 100, 4) == 64  # no tile divides 100: 64 + a remainder tile of 36
    assert tile_width(16, 5, 4) == 5


def test_impl_selection():
    # conftest fakes 8 CPU devices: the unpartitioned custom call is not chosen automatically
    assert jax.device_count() > 1 and resolve_impl("auto") == "xla"
    assert resolve_impl("native") == "native"
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("cuda")


def test_portable_impl_refuses_the_native_kernel():
    from grn_jax.graphs import portable_impl

    with portable_impl():
        assert resolve_impl("auto") == "xla" and resolve_impl("xla") == "xla"
        with pytest.raises(ValueError, match="impl='native' cannot be exported"):
            resolve_impl("native")
    assert resolve_impl("native") == "native"  # the setting ends with the block


def test_out_of_range_index_is_an_error():
    from jax.experimental import sparse

    data = jnp.ones((1, 3), jnp.float32)
    idx = jnp.asarray([[[0, 0], [1, 1], [1, 7]]], jnp.int32)  # 7 >= S = 4
    lap = sparse.BCOO((data, idx), shape=(1, 4, 4))
    with pytest.raises(Exception, match="index out of range"):
        jax.block_until_ready(diffuse(lap, jnp.ones((1, 4, 8)), heat_kernel_plan(0.1),
                                      node_mask_BxS=jnp.ones((1, 4), bool), impl="native"))


def _python(code: str, **env) -> dict:
    """Run code in a fresh single-device interpreter; it prints one JSON line."""
    full_env = {**os.environ, **env}
    full_env.pop("XLA_FLAGS", None)  # one CPU device, as a user's process has
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=full_env, timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_single_device_process_picks_native_and_build_failure_falls_back(tmp_path):
    code = """
        import json
        from grn_jax.graphs import resolve_impl
        from grn_jax.kernels import native_build
        try:
            resolve_impl("native"); native_error = None
        except ValueError as e:
            native_error = str(e)
        print(json.dumps({"auto": resolve_impl("auto"), "reason": native_build.unavailable_reason(),
                          "native_error": native_error}))
    """
    ok = _python(code)
    assert ok == {"auto": "native", "reason": None, "native_error": None}
    broken = _python(code, CXX=str(tmp_path / "no-such-compiler"), GRN_JAX_CACHE_DIR=str(tmp_path),
                     PATH=str(tmp_path))  # no compiler anywhere on PATH
    assert broken["auto"] == "xla"
    assert "no C++ compiler" in broken["reason"]
    assert "impl='native' cannot run here" in broken["native_error"] and "use impl='xla'" in broken["native_error"]
    off = _python(code, GRN_JAX_NATIVE="0")
    assert off["auto"] == "xla" and "GRN_JAX_NATIVE=0" in off["reason"]


def test_tune_host_allocator_applies_once_and_can_be_turned_off():
    """The allocator setting is a process-level side effect: applied once (later calls report
    the first result), skipped with GRN_JAX_TUNE_MALLOC=0. Its effect on speed is measured in
    benchmarks/bench_diffusion.py (with and without, same run), not asserted here."""
    code = """
        import json, platform
        from grn_jax.runtime import tune_host_allocator
        first = tune_host_allocator()
        print(json.dumps({"first": first, "again": tune_host_allocator(), "glibc": platform.libc_ver()[0] == "glibc"}))
    """
    on = _python(code)
    assert on["first"] == on["again"]
    assert on["first"]["tuned"] == on["glibc"]
    if on["glibc"]:
        assert "M_MMAP_MAX=0" in on["first"]["reason"]
    off = _python(code, GRN_JAX_TUNE_MALLOC="0")
    assert off["first"] == {"tuned": False, "reason": "disabled by GRN_JAX_TUNE_MALLOC=0"}
