"""Package-level checks: fake devices, rank promotion, the jraph shim, tolerances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax import testing
from grn_jax import _compat


def test_eight_fake_cpu_devices():
    assert jax.device_count() == 8
    assert all(d.platform == "cpu" for d in jax.devices())


def test_rank_promotion_raises():
    with pytest.raises(ValueError):
        _ = jnp.ones((3,)) + jnp.ones((2, 3))


def test_jraph_shim_runs_the_removed_tree_functions():
    jraph = _compat.import_jraph()
    assert jax.tree_map is jax.tree.map and jax.tree_leaves is jax.tree.leaves
    graph = jraph.GraphsTuple(
        nodes=jnp.arange(3.0)[:, None], edges=jnp.ones((2, 1)), senders=jnp.array([0, 1]),
        receivers=jnp.array([1, 2]), n_node=jnp.array([3]), n_edge=jnp.array([2]), globals=None)
    # pad_with_graphs -> jax.tree_leaves; zero_out_padding -> jax.tree_map
    padded = jraph.pad_with_graphs(graph, n_node=5, n_edge=4, n_graph=2)
    zeroed = jraph.zero_out_padding(padded)
    np.testing.assert_array_equal(np.asarray(zeroed.nodes[:, 0]), [0.0, 1.0, 2.0, 0.0, 0.0])


def test_tolerance_per_dtype_and_relative_error():
    assert testing.tolerance(np.float64).rel == 1e-12
    assert testing.tolerance(jnp.float32).rel == 1e-6
    with pytest.raises(ValueError, match="no tolerance"):
        testing.tolerance(np.int32)
    assert testing.relative_error([1.0, 0.0], [1.0, 0.0]) == 0.0
    assert testing.relative_error([3.0, 4.0], [0.0, 0.0]) == 5.0
    np.testing.assert_allclose(testing.relative_error([1.1, 0.0], [1.0, 0.0]), 0.1, rtol=1e-12)
    with pytest.raises(AssertionError, match="relative error"):
        testing.assert_rel_close([1.0, 1e-5], [1.0, 0.0], np.float32)


def test_cli_reports_bad_input_in_one_line(capsys, monkeypatch):
    from grn_jax import cli

    monkeypatch.delenv("GRN_JAX_DEBUG", raising=False)
    parser = cli.build_parser()

    def boom(args):
        raise ValueError("cell 'c7' has negative counts; pass raw counts")

    args = parser.parse_args(["version"])
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(args, boom))
    assert cli.main(["version"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "grn-jax version: error: cell 'c7' has negative counts; pass raw counts"


class _Fixed:
    def __init__(self, args, func):
        self._args, self._func = args, func

    def parse_args(self, argv):
        self._args.func = self._func
        return self._args
