"""AUCell against hand-computed recovery-curve areas."""

import numpy as np
import pytest
import scipy.sparse as sp

from grn_jax.graphs.aucell import aucell, regulons_from_network, top_rank_credit
from grn_jax.testing import assert_allclose
from grn_jax.types import GeneNetwork


def _net(pairs):
    reg, tgt = zip(*pairs)
    return GeneNetwork(np.array(reg), np.array(tgt), np.ones(len(reg)), np.zeros(len(reg)))


GENES = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]


def test_regulons_membership_and_report():
    net = _net([("a", "b"), ("a", "c"), ("d", "e"), ("z", "b"), ("a", "zz")])
    regs = regulons_from_network(net, GENES, min_size=2)
    # "z" is not among the genes: its regulon is {b} only (1 gene) -> dropped at min_size=2
    assert list(regs.names) == ["a", "d"]
    m = regs.membership_GxR.toarray()
    np.testing.assert_array_equal(np.flatnonzero(m[:, 0]), [0, 1, 2])  # a + {b, c}
    np.testing.assert_array_equal(np.flatnonzero(m[:, 1]), [3, 4])
    assert regs.report["regulons_too_small"] == 1 and regs.report["edges_unknown_gene"] == 2
    with pytest.raises(ValueError, match="same gene symbols"):
        regulons_from_network(_net([("x", "y")]), GENES)


def test_top_rank_credit_ties_share_average():
    x = np.array([[5.0, 3.0, 3.0, 0.0, 0.0, 1.0]])
    # sorted: 5 -> rank 0 (K-0=3); the two 3s span ranks 1, 2 -> (2+1)/2 each; 1 -> rank 3 -> 0
    np.testing.assert_array_equal(top_rank_credit(x, 3), [[3.0, 1.5, 1.5, 0.0, 0.0, 0.0]])
    # zeros spanning the cutoff share it: K=5 -> 1 at rank3 gets 2; zeros at ranks 4,5 -> (1+0)/2
    np.testing.assert_array_equal(top_rank_credit(x, 5), [[5.0, 3.5, 3.5, 0.5, 0.5, 2.0]])


def test_aucell_hand_computed():
    # 10 genes, top_fraction 0.3 -> K = 3. Cell 0 ranks: j(9) > i(8) > ... strictly decreasing by index.
    x = np.array([
        np.arange(10, dtype=float),          # rank of gene g = 9 - g
        np.arange(10, dtype=float)[::-1],    # rank of gene g = g
        np.zeros(10),                        # all tied: each gene gets mean(3,2,1,0,...,0) = 0.6
    ])
    net = _net([("j", "i"), ("j", "a"), ("a", "b"), ("a", "c")])
    regs = regulons_from_network(net, GENES)  # regulons a: {a, b, c}; j: {a, i, j}
    auc = aucell(x, regs, top_fraction=0.3)
    # cell 0: regulon a genes have ranks 9, 8, 7 -> area 0; regulon j: ranks 0 (j), 1 (i), 9 (a) -> 3 + 2 = 5
    # cell 1: regulon a ranks 0, 1, 2 -> 3 + 2 + 1 = 6; regulon j: ranks 9, 8, 0 -> 3
    # cell 2: every gene 0.6 -> 1.8 per regulon; normaliser K * |R| = 9
    want = np.array([[0.0, 5 / 9], [6 / 9, 3 / 9], [1.8 / 9, 1.8 / 9]])
    assert_allclose(auc, want, np.float64)


def test_aucell_sparse_dense_and_scale_invariant():
    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, size=(30, 40)).astype(float)
    genes = [f"g{i}" for i in range(40)]
    net = _net([("g0", f"g{i}") for i in range(1, 8)] + [("g9", f"g{i}") for i in range(20, 30)])
    regs = regulons_from_network(net, genes)
    a = aucell(x, regs, top_fraction=0.25)
    assert_allclose(aucell(sp.csr_matrix(x), regs, top_fraction=0.25), a, np.float64)
    # per-cell rescaling (library-size normalisation) leaves rankings and AUC unchanged
    assert_allclose(aucell(x * rng.uniform(0.5, 3.0, (30, 1)), regs, top_fraction=0.25), a, np.float64)
    # a cell's score does not depend on the other cells
    assert_allclose(aucell(x[5:6], regs, top_fraction=0.25), a[5:6], np.float64)
    # brute force: explicit recovery curve with average tie ranks
    k = round(0.25 * 40)
    for c in (0, 7):
        for r, members in enumerate(regs.membership_GxR.toarray().T):
            order = np.argsort(-x[c], kind="stable")
            credit = np.zeros(40)
            for pos, g in enumerate(order):
                credit[g] = max(k - pos, 0)
            for v in np.unique(x[c]):  # average within ties
                tie = x[c] == v
                credit[tie] = credit[tie].mean()
            assert abs(a[c, r] - credit[members].sum() / (k * members.sum())) < 1e-12


def test_aucell_bad_input():
    regs = regulons_from_network(_net([("a", "b")]), GENES)
    with pytest.raises(ValueError, match="genes"):
        aucell(np.zeros((2, 5)), regs)
    x = np.zeros((2, 10))
    x[1, 3] = np.nan
    with pytest.raises(ValueError, match="cell 1, gene 3"):
        aucell(x, regs)
