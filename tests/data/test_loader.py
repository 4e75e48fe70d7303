"""grain loader: contract, padding, resume to the identical next batch, per-host partition."""

import json

import numpy as np
import pytest

from grn_jax.data import (DataConfig, QCConfig, ShardStore, TokenizeConfig, cells_skipped_per_epoch, make_loader,
                          prepare)
from grn_jax.types import GENE_CLS, GENE_PAD, GeneNetwork, validate_token_batch

from ._helpers import toy_adata


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    net = GeneNetwork(np.array([f"g{i}" for i in range(0, 30)]), np.array([f"g{i}" for i in range(10, 40)]),
                      np.linspace(0.1, 3, 30), np.zeros(30))
    cfg = DataConfig(qc=QCConfig(min_counts=None, max_counts=None, min_genes=1),
                     tokenize=TokenizeConfig(n_bins=10, max_genes=31, min_seq_bucket=8, min_edge_bucket=4))
    a = toy_adata(n_cells=23, density=0.4)
    prepare(a, out / "s", cfg, graph=net)
    return ShardStore(out / "s")


def _batches(it, n):
    return [next(it) for _ in range(n)]


def _eq(a, b):
    la, lb = np.asarray([a.cell_index]), np.asarray([b.cell_index])
    np.testing.assert_array_equal(la, lb)
    for f in ("gene_ids", "bins", "token_mask"):
        np.testing.assert_array_equal(getattr(a.tokens, f), getattr(b.tokens, f))
    for f in ("senders", "receivers", "weights", "edge_mask"):
        np.testing.assert_array_equal(getattr(a.tokens.graph, f), getattr(b.tokens.graph, f))


def test_batches_follow_the_contract(store):
    it = make_loader(store, 4, shuffle=False, num_epochs=1, drop_remainder=False, process_index=0, process_count=1)
    seen = []
    for batch in it:
        t = batch.tokens
        validate_token_batch(t)
        assert t.seq_len in store.seq_buckets and t.graph.senders.shape[1] in store.edge_buckets
        for r in range(4):
            if not batch.cell_mask[r]:
                assert not t.token_mask[r].any() and not t.graph.edge_mask[r].any()
                continue
            c = store.cell(int(batch.cell_index[r]))
            n = len(c["gene_ids"])
            assert t.gene_ids[r, 0] == GENE_CLS and t.bins[r, 0] == store.bin_spec.cls_id
            np.testing.assert_array_equal(t.gene_ids[r, 1:n + 1], c["gene_ids"])
            np.testing.assert_array_equal(t.bins[r, 1:n + 1], c["bins"])
            assert (t.gene_ids[r, n + 1:] == GENE_PAD).all() and (t.bins[r, n + 1:] == store.bin_spec.pad_id).all()
            assert t.token_mask[r].sum() == n + 1
            k = len(c["edge_src"])
            g = t.graph
            assert g.edge_mask[r].sum() == k and (g.weights[r, k:] == 0).all()
            assert (g.senders[r, :k] >= 1).all() and (g.receivers[r, :k] <= n).all()  # never CLS, in range
            seen.append(int(batch.cell_index[r]))
    assert seen == list(range(len(store)))


def test_resume_gives_identical_next_batch(store):
    kw = dict(shuffle=True, seed=7, process_index=0, process_count=1)
    it = make_loader(store, 4, **kw)
    _batches(it, 7)  # crosses an epoch boundary (23 cells -> 5 batches per epoch)
    state = json.loads(json.dumps(it.get_state()))
    expected = _batches(it, 3)
    fresh = make_loader(store, 4, **kw)
    fresh.set_state(state)
    for a, b in zip(expected, _batches(fresh, 3)):
        _eq(a, b)
    with pytest.raises(ValueError, match="same data and arguments"):
        make_loader(store, 4, shuffle=True, seed=8, process_index=0, process_count=1).set_state(state)


def test_epochs_are_shuffled_differently_and_cover_all_cells(store):
    it = make_loader(store, 1, shuffle=True, seed=3, process_index=0, process_count=1)
    e1 = [int(next(it).cell_index[0]) for _ in range(len(store))]
    e2 = [int(next(it).cell_index[0]) for _ in range(len(store))]
    assert sorted(e1) == sorted(e2) == list(range(len(store)))
    assert e1 != e2


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_hosts_partition_cells_exactly_once(store, drop_remainder):
    n, p = len(store), 3
    per_host = []
    for h in range(p):
        it = make_loader(store, 2, shuffle=True, seed=5, num_epochs=1, drop_remainder=drop_remainder,
                         process_index=h, process_count=p)
        cells = [int(c) for b in it for c, ok in zip(b.cell_index, b.cell_mask) if ok]
        per_host.append(cells)
    allc = sorted(c for cells in per_host for c in cells)
    assert len(allc) == len(set(allc))  # no cell on two hosts
    if drop_remainder:
        assert len({len(c) for c in per_host}) == 1  # equal steps on every host
        per_epoch = (n - cells_skipped_per_epoch(n, p)) // p  # 7 cells per host
        assert [len(c) for c in per_host] == [per_epoch // 2 * 2] * p  # full batches of 2 only
    else:
        assert allc == list(range(n))


def test_cell_graph_travels_to_the_batch(tmp_path):
    from grn_jax.data import SingleNetworkSource

    net = GeneNetwork(np.array(["g0", "g1", "g2"]), np.array(["g1", "g2", "g3"]), np.ones(3), np.zeros(3))
    cfg = DataConfig(qc=QCConfig(min_counts=None, max_counts=None, min_genes=1),
                     tokenize=TokenizeConfig(n_bins=10, max_genes=40, min_seq_bucket=8, min_edge_bucket=4))
    s = prepare(toy_adata(n_cells=10, density=0.9), tmp_path / "s", cfg, graph=net,
                cell_graph=lambda vocab, counts: SingleNetworkSource(net, vocab.tokens))
    assert s["tokens"]["cell_graph_edges_kept"] == s["tokens"]["edges_kept"] > 0
    store = ShardStore(tmp_path / "s", verify=True)
    b = next(make_loader(store, 5, shuffle=False, process_index=0, process_count=1))
    validate_token_batch(b.tokens)
    np.testing.assert_array_equal(b.tokens.cell_graph.senders, b.tokens.graph.senders)
    np.testing.assert_array_equal(b.tokens.cell_graph.edge_mask, b.tokens.graph.edge_mask)


def test_threaded_reading_gives_the_same_batches_and_resumes(store):
    kw = dict(seed=2, process_index=0, process_count=1)
    threaded, plain = make_loader(store, 4, num_threads=2, **kw), make_loader(store, 4, **kw)
    for a, b in zip(_batches(threaded, 4), _batches(plain, 4)):
        _eq(a, b)
    resumed = make_loader(store, 4, num_threads=2, **kw)
    resumed.set_state(threaded.get_state())
    _eq(next(resumed), next(threaded))


def test_hosts_together_read_the_single_host_batches(store):
    """Host p's batch g is the p-th slice of the single-host batch g: multi-host runs see the same global batches."""
    b, hosts = 2, 3
    single = make_loader(store, b * hosts, shuffle=True, seed=5, num_epochs=1, process_index=0, process_count=1)
    per_host = [make_loader(store, b, shuffle=True, seed=5, num_epochs=1, process_index=h, process_count=hosts)
                for h in range(hosts)]
    n_whole = len(store) // (b * hosts)
    for _ in range(n_whole):
        want = [int(c) for c in next(single).cell_index]
        got = [int(c) for it in per_host for c in next(it).cell_index]
        assert got == want
