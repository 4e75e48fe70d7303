"""Co-expression graph and edge perturbation: exact counts, endpoints, padding, jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.graphs import (coexpression_adjacency, expressed_positions, num_replaced, num_replaced_pairs,
                            perturb_edges, usable_partner_pairs)
from grn_jax.types import BinSpec, GraphBatch, TokenBatch

B, S, E = 4, 12, 16
_perturb = jax.jit(perturb_edges, static_argnames=("alpha", "mode"))


def _toy():
    rng = np.random.default_rng(0)
    n_edges = np.array([5, 16, 10, 0])  # 5 -> 1 replaced, 16 -> 3, 10 -> 2, 0 -> 0
    edge_mask = np.arange(E)[None, :] < n_edges[:, None]
    senders = np.where(edge_mask, rng.integers(1, S, (B, E)), 0).astype(np.int32)
    receivers = np.where(edge_mask, rng.integers(1, S, (B, E)), 0).astype(np.int32)
    weights = np.where(edge_mask, rng.uniform(0.5, 2.0, (B, E)), 0).astype(np.float32)
    graph = GraphBatch(jnp.asarray(senders), jnp.asarray(receivers), jnp.asarray(weights), jnp.asarray(edge_mask))
    lengths = np.array([9, 12, 6, 12])
    token_mask = np.arange(S)[None, :] < lengths[:, None]
    expressed = token_mask & (rng.random((B, S)) < 0.5)
    expressed[:, 0] = True  # CLS must be ignored even if flagged
    expressed[2, :] = False
    expressed[2, [0, 3]] = True  # only one real expressed gene: no co-expression pair possible
    return graph, jnp.asarray(token_mask), jnp.asarray(expressed)


def test_coexpression_adjacency_is_eq3():
    ex = jnp.array([[True, True, False, True, True]])
    adj = np.asarray(coexpression_adjacency(ex))[0]
    want = np.zeros((5, 5), bool)
    for u in (1, 3, 4):
        for v in (1, 3, 4):
            want[u, v] = u != v
    np.testing.assert_array_equal(adj, want)


def test_exact_replaced_count_and_endpoints():
    graph, token_mask, expressed = _toy()
    out = _perturb(jax.random.key(1), graph, token_mask, expressed, alpha=0.2)
    changed = np.asarray((out.senders != graph.senders) | (out.receivers != graph.receivers))
    m = np.asarray(num_replaced(graph, expressed & token_mask, 0.2))
    np.testing.assert_array_equal(m, [1, 3, 0, 0])  # floor(0.2*5), floor(0.2*16), cell 2 has one expressed gene
    # a replaced slot may by chance redraw its old pair; count slots with a new draw instead
    assert np.all(changed.sum(1) <= m)
    ex = np.asarray(expressed)
    adj = np.asarray(coexpression_adjacency(expressed & token_mask))
    s, r = np.asarray(out.senders), np.asarray(out.receivers)
    for b in range(B):
        for j in np.flatnonzero(changed[b]):
            assert adj[b, s[b, j], r[b, j]], (b, j)  # every new edge is in G_co of its cell
            assert ex[b, s[b, j]] and s[b, j] >= 1 and s[b, j] != r[b, j]
    np.testing.assert_array_equal(np.asarray(out.edge_mask), np.asarray(graph.edge_mask))
    np.testing.assert_array_equal(np.asarray(out.weights), np.asarray(graph.weights))
    pad = ~np.asarray(graph.edge_mask)
    np.testing.assert_array_equal(s[pad], np.asarray(graph.senders)[pad])  # padding untouched


def test_count_over_many_keys_is_exact():
    # Mark replaced slots by giving the candidate set positions disjoint from all original endpoints.
    b, s_len, e = 3, 10, 20
    n_edges = np.array([20, 7, 13])
    edge_mask = np.arange(e)[None, :] < n_edges[:, None]
    graph = GraphBatch(jnp.full((b, e), 1, jnp.int32), jnp.full((b, e), 2, jnp.int32),
                       jnp.ones((b, e), jnp.float32), jnp.asarray(edge_mask))
    expressed = jnp.asarray(np.tile(np.arange(s_len) >= 5, (b, 1)))
    token_mask = jnp.ones((b, s_len), bool)
    for alpha, want in ((0.2, [4, 1, 2]), (0.7, [14, 4, 9])):  # 0.7 * 7 = 4.9 -> 4, 0.7 * 20 = 14 exactly
        for seed in range(3):
            out = _perturb(jax.random.key(seed), graph, token_mask, expressed, alpha=alpha)
            new = np.asarray(out.senders) >= 5
            np.testing.assert_array_equal(new.sum(1), want, err_msg=f"alpha={alpha}")
            assert np.all(np.asarray(out.receivers)[new] >= 5)


def test_random_mode_uses_all_gene_tokens():
    b, s_len, e = 2, 10, 50
    edge_mask = jnp.ones((b, e), bool)
    graph = GraphBatch(jnp.full((b, e), 1, jnp.int32), jnp.full((b, e), 2, jnp.int32),
                       jnp.ones((b, e), jnp.float32), edge_mask)
    token_mask = jnp.asarray(np.arange(s_len)[None, :] < np.array([[10], [6]]))
    expressed = jnp.zeros((b, s_len), bool)  # random mode ignores expression
    out = _perturb(jax.random.key(3), graph, token_mask, expressed, alpha=1.0, mode="random")
    s, r = np.asarray(out.senders), np.asarray(out.receivers)
    assert np.all(s != r) and s.min() >= 1 and r.min() >= 1
    assert s[1].max() <= 5 and r[1].max() <= 5  # only the cell's own tokens
    assert len(np.unique(s[0])) >= 6  # spreads over the tokens
    # co-expression mode with nothing expressed replaces nothing
    same = _perturb(jax.random.key(3), graph, token_mask, expressed, alpha=1.0)
    np.testing.assert_array_equal(np.asarray(same.senders), np.asarray(graph.senders))


def test_pairs_uniform_over_coexpression_pairs():
    # 3 expressed genes -> 6 ordered pairs, each with probability 1/6.
    e = 3000
    graph = GraphBatch(jnp.zeros((1, e), jnp.int32), jnp.zeros((1, e), jnp.int32),
                       jnp.ones((1, e), jnp.float32), jnp.ones((1, e), bool))
    expressed = jnp.asarray([[False, True, False, True, True, False]])
    out = _perturb(jax.random.key(5), graph, jnp.ones((1, 6), bool), expressed, alpha=1.0)
    pairs = np.asarray(out.senders)[0] * 10 + np.asarray(out.receivers)[0]
    vals, counts = np.unique(pairs, return_counts=True)
    np.testing.assert_array_equal(vals, [13, 14, 31, 34, 41, 43])
    # binomial sd of a 1/6 frequency over 3000 draws is 0.0068; allow 4 sd
    assert np.all(np.abs(counts / e - 1 / 6) < 4 * np.sqrt(1 / 6 * 5 / 6 / e))


def test_vmap_per_cell_matches_batch_rule():
    graph, token_mask, expressed = _toy()

    def one(key, s, r, w, m, tm, ex):
        g = GraphBatch(s[None], r[None], w[None], m[None])
        return perturb_edges(key, g, tm[None], ex[None]).senders[0]

    keys = jax.random.split(jax.random.key(0), B)
    out = jax.jit(jax.vmap(one))(keys, graph.senders, graph.receivers, graph.weights, graph.edge_mask,
                                 token_mask, expressed)
    changed = np.asarray(out != graph.senders)
    m = np.asarray(num_replaced(graph, expressed & token_mask, 0.2))
    assert np.all(changed.sum(1) <= m)


def test_expressed_positions_ignores_masked_positions():
    spec = BinSpec(n_bins=5)
    bins = jnp.array([[spec.cls_id, 3, spec.mask_id, 0, spec.pad_id]], jnp.int32)
    targets = jnp.array([[0, 0, 2, 0, 0]], jnp.int32)
    loss_mask = jnp.array([[False, False, True, False, False]])
    token_mask = jnp.array([[True, True, True, True, False]])
    g = GraphBatch(*(jnp.zeros((1, 1), d) for d in (jnp.int32, jnp.int32, jnp.float32, bool)))
    batch = TokenBatch(gene_ids=jnp.array([[2, 5, 6, 7, 0]], jnp.int32), bins=bins, targets=targets,
                       loss_mask=loss_mask, token_mask=token_mask, graph=g)
    # the masked position (true bin 2) is not visible as expressed: no MLM target leaks into G_co
    np.testing.assert_array_equal(np.asarray(expressed_positions(batch, spec)), [[False, True, False, False, False]])


def test_bad_arguments():
    graph, token_mask, expressed = _toy()
    with pytest.raises(ValueError, match="mode"):
        perturb_edges(jax.random.key(0), graph, token_mask, expressed, mode="knn")
    with pytest.raises(ValueError, match="alpha"):
        perturb_edges(jax.random.key(0), graph, token_mask, expressed, alpha=1.5)


def test_cell_result_independent_of_batch_mates():
    graph, token_mask, expressed = _toy()
    out = _perturb(jax.random.key(9), graph, token_mask, expressed, alpha=0.2)
    # change everything about cells 0, 2 and 3; cell 1 keeps its row position
    other = GraphBatch(graph.senders.at[jnp.array([0, 2, 3])].set(3), graph.receivers.at[jnp.array([0, 2, 3])].set(4),
                       graph.weights, graph.edge_mask.at[jnp.array([0, 2, 3])].set(True))
    ex2 = expressed.at[jnp.array([0, 2, 3])].set(True)
    out2 = _perturb(jax.random.key(9), other, token_mask, ex2, alpha=0.2)
    np.testing.assert_array_equal(np.asarray(out2.senders[1]), np.asarray(out.senders[1]))
    np.testing.assert_array_equal(np.asarray(out2.receivers[1]), np.asarray(out.receivers[1]))


# --- dataset co-expression partners (issue 14, item 3): a real contrast with the random ablation ---

def _partner_cells(seed=0, b=8, s_len=24, e=32, n_pairs=10):
    """Cells with 12..23 tokens, ~80 % visible (the rest masked), `n_pairs` partner pairs each, e real edges."""
    rng = np.random.default_rng(seed)
    n_tok = rng.integers(12, s_len, b)
    token_mask = np.arange(s_len)[None, :] <= n_tok[:, None]  # CLS + n_tok genes
    visible = token_mask & (rng.random((b, s_len)) < 0.8)
    ps, pr = np.ones((b, e), np.int32), np.ones((b, e), np.int32)
    pmask = np.zeros((b, e), bool)
    pair_sets = []
    for i in range(b):  # test set-up only
        cand = [(u, v) for u in range(1, n_tok[i] + 1) for v in range(u + 1, n_tok[i] + 1) if (u, v) != (1, 2)]
        pick = rng.choice(len(cand), n_pairs, replace=False)
        pairs = [cand[j] for j in pick]
        pair_sets.append({frozenset(p) for p in pairs})
        ps[i, :n_pairs], pr[i, :n_pairs] = np.array(pairs).T
        pmask[i, :n_pairs] = True
    partners = GraphBatch(jnp.asarray(ps), jnp.asarray(pr), jnp.ones((b, e), jnp.float32), jnp.asarray(pmask))
    graph = GraphBatch(jnp.ones((b, e), jnp.int32), jnp.full((b, e), 2, jnp.int32), jnp.ones((b, e), jnp.float32),
                       jnp.ones((b, e), bool))
    return graph, partners, pair_sets, jnp.asarray(token_mask), jnp.asarray(visible), n_tok


def test_exact_count_with_partner_pairs():
    graph, partners, _, token_mask, visible, _ = _partner_cells()
    graph = GraphBatch(graph.senders, graph.receivers, graph.weights,
                       jnp.asarray(np.arange(32)[None, :] < np.array([5, 16, 10, 0, 32, 31, 15, 20])[:, None]))
    usable = np.asarray(jax.jit(usable_partner_pairs)(partners, visible))
    m = np.asarray(jax.jit(num_replaced_pairs, static_argnames="alpha")(graph, usable, alpha=0.2))
    np.testing.assert_array_equal(m, np.where(usable.any(1), [1, 3, 2, 0, 6, 6, 3, 4], 0))
    out = _perturb(jax.random.key(0), graph, token_mask, visible, alpha=0.2, partners=partners)
    # the originals are (1, 2), never a partner pair here: changed slots = replaced slots, all partner pairs
    s, r = np.asarray(out.senders), np.asarray(out.receivers)
    changed = (s != 1) | (r != 2)
    np.testing.assert_array_equal(changed.sum(1), m)
    ok = np.asarray(partners.edge_mask)
    ps, pr = np.asarray(partners.senders), np.asarray(partners.receivers)
    for i, j in zip(*np.nonzero(changed)):
        assert {(s[i, j], r[i, j]), (r[i, j], s[i, j])} & set(zip(ps[i][ok[i]], pr[i][ok[i]]))
    assert np.all(s[~np.asarray(graph.edge_mask)] == 1)


def test_random_and_coexpression_draw_different_pairs():
    """The statistic: the fraction of drawn pairs that are dataset partner pairs, and of pairs touching a
    masked token. Co-expression draws only visible partner pairs (fractions 1 and 0, exactly). A uniform
    random ordered pair of cell b's n_b tokens is a partner pair with probability q_b = 2|P_b| / (n_b(n_b-1))
    and touches a masked token with probability 1 - v_b(v_b-1) / (n_b(n_b-1)) (v_b visible tokens); over N
    independent draws the observed fractions lie within 5 binomial standard deviations of the mean q."""
    graph, partners, pair_sets, token_mask, visible, n_tok = _partner_cells()
    b, e = graph.edge_mask.shape
    keys = jax.random.split(jax.random.key(7), 60)

    def draws(mode):
        f = jax.jit(jax.vmap(lambda k: perturb_edges(k, graph, token_mask, visible, alpha=1.0, mode=mode,
                                                     partners=partners)))
        out = f(keys)
        return np.asarray(out.senders), np.asarray(out.receivers)  # [T, B, E], every slot a fresh draw

    vis = np.asarray(visible)
    stats = {}
    for mode in ("coexpression", "random"):
        s, r = draws(mode)
        assert np.all(s != r) and s.min() >= 1
        in_p = np.array([[[frozenset((s[t, i, j], r[t, i, j])) in pair_sets[i] for j in range(e)]
                          for i in range(b)] for t in range(len(keys))])
        rows = np.arange(b)[None, :, None]
        masked = ~(vis[rows, s] & vis[rows, r])
        stats[mode] = (in_p.mean(), masked.mean(), in_p.size)
    usable = [sum(vis[i, u] and vis[i, v] for u, v in (tuple(p) for p in pair_sets[i])) for i in range(b)]
    assert min(usable) >= 1  # every cell can draw
    assert stats["coexpression"][:2] == (1.0, 0.0)
    n = n_tok.astype(np.float64)
    v = (vis[:, 1:].sum(1)).astype(np.float64)
    q_b = 2 * np.array([len(p) for p in pair_sets]) / (n * (n - 1))
    mq_b = 1 - v * (v - 1) / (n * (n - 1))
    n_draws = stats["random"][2]
    for got, p_b in ((stats["random"][0], q_b), (stats["random"][1], mq_b)):
        mean = p_b.mean()  # every cell gets the same number of draws
        sd = np.sqrt(np.sum(p_b * (1 - p_b)) * n_draws / b) / n_draws
        assert abs(got - mean) < 5 * sd, (got, mean, sd)
    # the two distributions differ: total variation >= 1 - P_random(partner pair) ~ 0.9 here
    assert 1 - stats["random"][0] > 0.8


def test_partner_table_from_planted_modules():
    import scipy.sparse as sp

    from grn_jax.graphs import CoexpressionAccumulator, PartnerTable

    rng = np.random.default_rng(0)
    n, g = 400, 12  # genes 0-3 follow factor a, 4-7 factor b, 8-11 independent noise
    a, b2 = rng.gamma(2.0, 2.0, (n, 1)), rng.gamma(2.0, 2.0, (n, 1))
    lam = np.concatenate([np.repeat(a, 4, 1), np.repeat(b2, 4, 1), np.full((n, 4), 4.0)], 1)
    x = rng.poisson(lam).astype(np.float32)
    acc = CoexpressionAccumulator(np.arange(3, 3 + g), 3 + g)  # vocabulary ids 3.. (specials first)
    cols = sp.csr_matrix(np.concatenate([np.zeros((n, 3), np.float32), x], 1))
    totals = np.full(n, 1e4)  # CP10k scaling is the identity here
    acc.add(cols[:150], totals[:150])
    acc.add(cols[150:], totals[150:])
    src, dst, r = acc.partners(k=3, min_corr=0.2)
    mod = lambda i: (i - 3) // 4  # noqa: E731
    assert len(src) > 0 and np.all(src < dst)
    assert np.all([mod(s) == mod(d) < 2 for s, d in zip(src, dst)])  # partners share a planted module
    want = np.corrcoef(np.log1p(x).T)[src - 3, dst - 3]
    np.testing.assert_allclose(r, want, rtol=1e-5, atol=1e-6)
    table = PartnerTable(src, dst, r, 3 + g)
    ps, pd_, pw = table.cell_pairs(np.array([3, 11, 4, 7, 5]))  # genes at positions 1..5
    got = {frozenset((int(u), int(v))) for u, v in zip(ps, pd_)}
    ids = np.array([3, 11, 4, 7, 5])
    want_pairs = {frozenset((i + 1, j + 1)) for i in range(5) for j in range(i + 1, 5)
                  if table.contains(np.array([ids[i]]), np.array([ids[j]]))[0]}
    assert got == want_pairs and np.all(np.diff(pw) <= 0)  # strongest first
    assert len(table.cell_pairs(ids, max_pairs=1)[0]) == min(1, len(got))


def test_cell_pairs_equal_a_brute_force_scan_of_every_token_pair():
    """The loader's per-cell lookup against an independent O(n^2) scan (order: weight desc, then positions)."""
    from grn_jax.graphs import PartnerTable

    rng = np.random.default_rng(4)
    v = 60
    lo, hi = np.triu_indices(v, k=1)
    pick = rng.choice(len(lo), size=300, replace=False)
    weight = rng.choice([0.2, 0.5, 0.9], size=300).astype(np.float32)  # repeated weights: the tie order matters
    table = PartnerTable(lo[pick], hi[pick], weight, v)
    dense = np.zeros((v, v), np.float32)
    dense[lo[pick], hi[pick]] = weight
    for trial in range(20):
        ids = rng.choice(np.arange(-2, v + 3), size=int(rng.integers(0, 40)), replace=False)  # some out of range
        want = []
        for i in range(len(ids)):
            for j in range(len(ids)):
                gi, gj = ids[i], ids[j]
                if 0 <= gi < v and 0 <= gj < v and dense[gi, gj] > 0:
                    want.append((-float(dense[gi, gj]), i + 1, j + 1))
        want.sort()
        got = table.cell_pairs(ids)
        assert [(-float(w), int(a), int(b)) for a, b, w in zip(*got)] == want, trial
        assert got[0].dtype == np.int32 and got[2].dtype == np.float32
        k = int(rng.integers(0, 5))
        np.testing.assert_array_equal(table.cell_pairs(ids, max_pairs=k)[0], got[0][:k])


def test_prepare_writes_partners_and_batches_carry_them(tmp_path):
    from grn_jax.data import prepare
    from grn_jax.data.collate import collate
    from grn_jax.data.shards import ShardStore
    from tests.inference._run import data_config, toy_adata, toy_network

    summary = prepare(toy_adata(n_cells=40), tmp_path / "shards", data_config(), graph=toy_network())
    rec = summary["coexpression"]
    assert rec["pairs"] > 0 and rec["cells"] == 40 and rec["params"]["k"] == 10
    store = ShardStore(tmp_path / "shards")
    cells = [store.cell(i) for i in range(4)]
    batch = collate(cells, store.bin_spec, store.seq_buckets, store.edge_buckets)
    cg = batch.tokens.coexpr_graph
    assert cg is not None and cg.senders.shape == batch.tokens.graph.senders.shape
    ids = batch.tokens.gene_ids
    for i, c in enumerate(cells):
        m = cg.edge_mask[i]
        u, v = ids[i, cg.senders[i][m]], ids[i, cg.receivers[i][m]]
        assert np.all(store.coexpression.contains(u, v))
        n_all = len(store.coexpression.cell_pairs(c["gene_ids"])[0])  # every partner pair among its tokens
        assert m.sum() == min(n_all, cg.edge_mask.shape[1])
    # no table asked for: no partner pairs in the batches
    prepare(toy_adata(n_cells=40), tmp_path / "plain", data_config(), graph=toy_network(), coexpr_partners=0)
    plain = ShardStore(tmp_path / "plain")
    assert plain.coexpression is None and "coexpr_src" not in plain.cell(0)
    (tmp_path / "shards" / rec["file"]).write_bytes(b"x")
    with pytest.raises(ValueError, match="modified"):
        ShardStore(tmp_path / "shards")


def test_adapter_perturbation_draws_from_the_batch_partners():
    import warnings

    from grn_jax.models import AdapterConfig, tiny
    from grn_jax.models.adapter import perturb_graph

    graph, partners, pair_sets, token_mask, visible, _ = _partner_cells()
    n_bins = 8
    bins = jnp.where(visible, 3, n_bins)  # MASK id where not visible
    batch = TokenBatch(gene_ids=jnp.where(token_mask, 5, 0).astype(jnp.int32), bins=bins.astype(jnp.int32),
                       targets=jnp.zeros_like(bins), loss_mask=~visible & token_mask, token_mask=token_mask,
                       graph=graph, coexpr_graph=partners)
    cfg = tiny(gene_vocab_size=16, n_bins=n_bins, adapter=AdapterConfig(perturb_alpha=0.5))
    out = perturb_graph(jax.random.key(0), graph, batch, cfg)
    s, r = np.asarray(out.senders), np.asarray(out.receivers)
    changed = (s != 1) | (r != 2)  # the originals (1, 2) are never partner pairs here
    assert np.all(changed.sum(1) == 16)  # floor(0.5 * 32)
    assert all(frozenset((s[i, j], r[i, j])) in pair_sets[i] for i, j in zip(*np.nonzero(changed)))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        perturb_graph(jax.random.key(0), graph, batch.replace(coexpr_graph=None), cfg)
    assert any("eq. 3" in str(x.message) for x in w)
