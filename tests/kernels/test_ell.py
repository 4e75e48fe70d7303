"""ELL layout of L~ = L - I: against an explicit dense oracle, B's BCOO Laplacian, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.graphs import normalized_laplacian
from grn_jax.kernels import build_ell_laplacian, ell_degree_bound, ell_from_laplacian, safe_width
from grn_jax.testing import assert_allclose

from .graph_cases import dense_laplacian_np, ell_to_dense, random_graph_batch


def test_hand_computed_path_graph():
    # Path 1 - 2 - 3 with weights 1 and 4 (one way); 2 -> 1 repeated adds; self-loop 3 -> 3 dropped.
    snd = np.array([[1, 2, 2, 3]], np.int32)
    rcv = np.array([[2, 3, 1, 3]], np.int32)
    w = np.array([[1.0, 4.0, 1.0, 9.0]], np.float32)
    em = np.ones((1, 4), bool)
    tm = np.array([[True, True, True, True, False]])
    ell = build_ell_laplacian(snd, rcv, w, em, tm, width=2)
    # A_12 = 1 + 1 = 2, A_23 = 4; degrees d1 = 2, d2 = 6, d3 = 4.
    want = np.zeros((5, 5))
    want[1, 2] = want[2, 1] = -2 / np.sqrt(2 * 6)
    want[2, 3] = want[3, 2] = -4 / np.sqrt(6 * 4)
    assert_allclose(ell_to_dense(ell)[0], want, np.float32)
    np.testing.assert_array_equal(np.asarray(ell.node_mask[0]), [False, True, True, True, False])
    np.testing.assert_array_equal(np.asarray(ell.passthrough_mask[0]), [True, False, False, False, False])
    np.testing.assert_array_equal(np.asarray(ell.row_degree[0]), [0, 1, 2, 1, 0])
    # Empty slots point at their own row with value 0.
    assert int(ell.indices[0, 4, 0]) == 4 and float(ell.values[0, 4, 0]) == 0.0
    assert ell_degree_bound(snd, rcv, em, 5, multiple=1) == 2


def test_random_batch_matches_dense_oracle_and_bcoo():
    rng = np.random.default_rng(1)
    s = 24
    snd, rcv, w, em, tm = random_graph_batch(rng, 3, s, 40, [24, 17, 9], one_way=False)
    width = ell_degree_bound(snd, rcv, em, s)
    ell = build_ell_laplacian(snd, rcv, w, em, tm, width=width)
    dense = dense_laplacian_np(snd, rcv, w, em, s) - np.eye(s)
    assert_allclose(ell_to_dense(ell), dense, np.float32)
    lap = normalized_laplacian(snd, rcv, w, em, num_nodes=s)
    ell2 = ell_from_laplacian(lap, tm, np.arange(s)[None, :] == 0 & np.ones((3, 1), bool),
                              width=safe_width(s, lap.nse))
    assert_allclose(ell_to_dense(ell2), dense, np.float32)
    np.testing.assert_array_equal(np.asarray(ell2.node_mask), np.asarray(ell.node_mask))


def test_overflow_is_reported_not_dropped():
    snd = np.array([[1, 1, 1]], np.int32)
    rcv = np.array([[2, 3, 4]], np.int32)
    args = (snd, rcv, np.ones((1, 3), np.float32), np.ones((1, 3), bool), np.ones((1, 5), bool))
    with pytest.raises(ValueError, match=r"cell 0: 1 neighbour entries exceed the ELL width 2"):
        build_ell_laplacian(*args, width=2)
    # Under jit nothing can raise: the count travels with the layout.
    ell = jax.jit(lambda *a: build_ell_laplacian(*a, width=2))(*args)
    assert int(ell.num_dropped[0]) == 1


@pytest.mark.parametrize("field,value,msg", [
    ("receivers", 7, "outside the cell's gene tokens"),
    ("receivers", 0, "outside the cell's gene tokens"),  # the CLS is never in the graph
    ("weights", -1.0, "negative/non-finite weight"),
])
def test_invalid_edges_raise_with_cell(field, value, msg):
    snd = np.array([[1, 2], [1, 2]], np.int32)
    rcv = np.array([[2, 3], [2, 3]], np.int32)
    w = np.ones((2, 2), np.float32)
    tm = np.ones((2, 5), bool)
    tm[1, 4] = False
    arrs = {"senders": snd, "receivers": rcv, "weights": w}
    arrs[field] = arrs[field].copy()
    arrs[field][1, 1] = value
    with pytest.raises(ValueError, match=f"cell 1: 1 masked-in edge.*{msg}"):
        build_ell_laplacian(arrs["senders"], arrs["receivers"], arrs["weights"], np.ones((2, 2), bool), tm,
                            width=4)


def test_shape_errors_name_the_field():
    snd = np.ones((2, 3), np.int32)
    with pytest.raises(ValueError, match="weights must have shape"):
        build_ell_laplacian(snd, snd, np.ones((2, 4), np.float32), np.ones((2, 3), bool), np.ones((2, 5), bool),
                            width=4)
    with pytest.raises(ValueError, match="width must be a positive int"):
        build_ell_laplacian(snd, snd, np.ones((2, 3), np.float32), np.ones((2, 3), bool), np.ones((2, 5), bool),
                            width=0)
    assert jnp.asarray(snd).dtype == jnp.int32


def test_bcoo_entries_touching_padding_are_counted_and_kept_for_parity():
    from grn_jax.graphs import diffuse, heat_kernel_plan
    from grn_jax.kernels import chebyshev_diffusion_reference

    s = 8
    snd = np.array([[1, 2, 3]], np.int32)
    rcv = np.array([[2, 3, 7]], np.int32)  # 3 -> 7 touches a padding position
    tm = (np.arange(s) < 6)[None, :]
    cls = (np.arange(s) == 0)[None, :]
    lap = normalized_laplacian(snd, rcv, np.ones((1, 3), np.float32), np.ones((1, 3), bool), num_nodes=s)
    with pytest.raises(ValueError, match="cell 0: 2 masked-in edge"):  # both stored directions of 3-7
        ell_from_laplacian(lap, tm, cls, width=8)
    ell = jax.jit(lambda lp: ell_from_laplacian(lp, tm, cls, width=8))(lap)
    assert int(ell.num_invalid_edges[0]) == 2
    plan = heat_kernel_plan(1.0)
    q = jnp.asarray(np.random.default_rng(0).normal(size=(1, s, 4)), jnp.float32)
    ours = jax.jit(lambda q, e: chebyshev_diffusion_reference(q, e, plan.as_array()))(q, ell)
    core = jax.jit(lambda lp, q: diffuse(lp, q, plan, node_mask_BxS=jnp.asarray(tm),
                                         passthrough_mask_BxS=jnp.asarray(cls)))(lap, q)
    assert_allclose(ours, core, np.float32)
