"""Hybrid (cell-type + cell-specific graph) checkpoints embed new cells (issue 14, item 4).

A new cell's cell-specific graph comes from its AUCell scores against the
thresholds fitted in training (saved in the shards' summary, hence in the
checkpoint's tokenisation record), using the thresholds of the type the kNN graph
integration predicts for it: no label is read.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from grn_jax.types import GeneNetwork
from tests.inference._run import N_GENES, data_config, toy_adata

TOP_FRACTION = 0.3  # 30 genes: K = 9 ranks, so the AUCs vary from cell to cell


def _networks() -> dict:
    chain = [(f"g{i}", f"g{i + 1}") for i in range(19)]
    hubs = [(f"g{h}", f"g{t}") for h in (0, 10, 20) for t in range(h + 1, min(h + 8, N_GENES))]
    mk = lambda e: GeneNetwork(np.array([a for a, _ in e]), np.array([b for _, b in e]),  # noqa: E731
                               np.linspace(0.5, 2.0, len(e)), np.zeros(len(e)), {"method": "toy"})
    return {"t0": mk(chain), "t1": mk(hubs)}


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    """Prepare with both graph scales, pretrain 2 steps of a tiny GRNFormer, and write the networks folder."""
    from grn_jax.data import prepare
    from grn_jax.data.config import IngestConfig
    from grn_jax.graphs.cell_specific import cell_specific_factory
    from grn_jax.graphs.network_io import write_network
    from grn_jax.inference import load_pretrained
    from grn_jax.train.loop import pretrain

    root = tmp_path_factory.mktemp("hybrid")
    nets = _networks()
    train = toy_adata(n_cells=40)
    cfg = dataclasses.replace(data_config(), ingest=IngestConfig(cell_type_column="cell_type"))
    prepare(train, root / "shards", cfg, graph=nets,
            cell_graph=cell_specific_factory(nets, "cell_type", top_fraction=TOP_FRACTION, min_cells=5))
    (root / "nets" / "networks").mkdir(parents=True)
    for t, net in nets.items():
        write_network(net, root / "nets" / "networks" / f"{t}.tsv")
    (root / "nets" / "summary.json").write_text(json.dumps(
        {"params": {}, "cell_types": [{"cell_type": t, "file": f"networks/{t}.tsv"} for t in nets]}))
    pd.DataFrame({"cell": train.obs_names, "cell_type": train.obs["cell_type"]}).to_csv(
        root / "nets" / "labels.tsv", sep="\t", index=False)
    train.write_h5ad(root / "train.h5ad")
    rc = run_config(root, attention="vanilla", steps=2, adapter={"fusion_heads": 2, "fanout": 2})
    pretrain(rc, log=lambda m: None)
    query = toy_adata(n_cells=12, seed=3)
    query.obs_names = [f"new{i}" for i in range(query.n_obs)]
    query.obs = query.obs.drop(columns="cell_type")  # new cells come without labels
    return {"pre": load_pretrained(root / "run"), "nets": nets, "net_dir": root / "nets",
            "reference": root / "train.h5ad", "train": train, "query": query}


def run_config(root, *, attention, steps, adapter):
    from grn_jax.config import build_run_config

    return build_run_config({
        "name": "hybrid", "data": {"shards": str(root / "shards"), "shuffle": False},
        "model": {"preset": "tiny", "n_bins": 8, "d_model": 16, "n_layers": 1, "n_heads": 2, "mlp_dim": 16,
                  "attention": attention, "adapter": adapter},
        "train": {"run_dir": str(root / "run"), "steps": steps, "batch_size": 8, "eval_every": 0,
                  "checkpoint_every": steps, "tensorboard": False, "progress": False, "async_checkpoint": False,
                  "val_fraction": 0.0},
        "mesh": {"data": -1}})


def _spec(h):
    from grn_jax.inference import GraphSpec

    return GraphSpec(networks_dir=str(h["net_dir"]), reference=str(h["reference"]))


def _embed(h, adata, batch_size):
    from grn_jax.inference.embed import CLS_KEY, MEAN_KEY, embed

    a = adata.copy()
    embed(h["pre"], a, graph=_spec(h), batch_size=batch_size, progress=False, log=lambda m: None)
    return a.obsm[CLS_KEY], a.obsm[MEAN_KEY], a.uns


def test_hybrid_checkpoint_embeds_independently_of_batch_mates(hybrid):
    assert hybrid["pre"].tokenization["with_cell_graph"]
    cls, mean, uns = _embed(hybrid, hybrid["query"], batch_size=4)
    assert np.isfinite(cls).all() and np.isfinite(mean).all()
    cls1, mean1, _ = _embed(hybrid, hybrid["query"], batch_size=1)
    sub = [7, 2, 9]
    cls_s, mean_s, _ = _embed(hybrid, hybrid["query"][sub], batch_size=3)
    np.testing.assert_array_equal(cls1, cls)  # bitwise: batch size and batch-mates do not matter
    np.testing.assert_array_equal(mean1, mean)
    np.testing.assert_array_equal(cls_s, cls[sub])
    np.testing.assert_array_equal(mean_s, mean[sub])
    prov = json.loads(uns["grn_jax_embed"]["graph"]) if isinstance(uns["grn_jax_embed"]["graph"], str) \
        else uns["grn_jax_embed"]["graph"]
    assert prov["cell_graph"]["type_assignment"] == "kNN integration's most probable type"


def test_new_cell_active_regulons_equal_hand_computation(hybrid):
    from grn_jax.data.ingest import open_counts
    from grn_jax.graphs.aucell import aucell, regulons_from_network
    from grn_jax.graphs.cell_specific import vocab_gene_columns
    from grn_jax.inference.graph_sources import build_cell_graph_source, build_graph_source
    from grn_jax.inference.tokens import TrainingTokenizer

    pre, q = hybrid["pre"], hybrid["query"]
    rec = pre.tokenization["cell_graph"]["thresholds"]
    assert sorted(rec["types"]) == ["t0", "t1"] and rec["top_fraction"] == TOP_FRACTION
    tok = TrainingTokenizer.from_record(pre.tokenization, pre.vocab)
    src = open_counts(q.copy(), tok.ingest_config(backed=False, cell_type_column=None))
    gsrc, _ = build_graph_source(_spec(hybrid), pre.vocab, src, 5, log=lambda m: None)
    csrc, report = build_cell_graph_source(_spec(hybrid), pre.tokenization["cell_graph"], pre.vocab, src, 5, gsrc,
                                           log=lambda m: None)
    # the type: the kNN posterior's argmax, never a label (the query has none)
    want_type = np.asarray(gsrc.exclusion.types)[np.argmax(gsrc.posterior, axis=1)]
    np.testing.assert_array_equal(csrc.grns.cell_types, want_type)
    x = vocab_gene_columns(q.X, pre.vocab, q.var_names).toarray()
    n_active = 0
    for i in range(q.n_obs):
        t = want_type[i]
        regs = regulons_from_network(hybrid["nets"][t], pre.vocab.genes, min_size=rec["min_regulon_size"])
        auc = aucell(x[i:i + 1], regs, top_fraction=rec["top_fraction"])[0]
        by_hand = regs.names[auc > np.asarray(rec["types"][t]["threshold"])]
        np.testing.assert_array_equal(csrc.grns.active_regulons(i), by_hand)
        n_active += len(by_hand)
    assert n_active > 0  # the check is not vacuous


def test_training_cells_rescored_match_the_fit(hybrid):
    """apply_thresholds on the training cells with their own types reproduces the fitted activity exactly."""
    from grn_jax.data.vocab import GeneVocab
    from grn_jax.graphs.cell_specific import apply_thresholds, fit_cell_specific_grns, vocab_gene_columns

    a, nets = hybrid["train"], hybrid["nets"]
    vocab = GeneVocab(list(a.var_names))
    x = vocab_gene_columns(a.X, vocab, a.var_names)
    labels = a.obs["cell_type"].to_numpy()
    fit = fit_cell_specific_grns(x, vocab.genes, nets, labels, top_fraction=TOP_FRACTION, min_cells=5)
    again = apply_thresholds(x, vocab.genes, nets, fit.thresholds_record(), labels)
    for t in fit.types:
        np.testing.assert_array_equal(again.types[t].active_CxR, fit.types[t].active_CxR)
    assert fit.thresholds_record() == hybrid["pre"].tokenization["cell_graph"]["thresholds"]
    with pytest.raises(ValueError, match="other genes"):
        apply_thresholds(x[:, :-1], vocab.genes[:-1], nets, fit.thresholds_record(), labels)
    with pytest.raises(ValueError, match="regulons"):
        apply_thresholds(x, vocab.genes, {"t0": nets["t1"], "t1": nets["t1"]}, fit.thresholds_record(), labels)


def test_hide_pairs_switches_off_hidden_edges_in_both_directions_only():
    from grn_jax.tasks.edge_prediction import hide_pairs

    # cell of 5 tokens (positions 1..5); slot 6 is padding (0 -> 0) and one edge points past the cell
    senders = np.array([1, 3, 2, 4, 5, 0, 9], np.int32)
    receivers = np.array([3, 1, 4, 2, 1, 0, 1], np.int32)
    mask = np.array([True, True, True, True, True, False, True])
    hidden = np.array([[1, 3]])  # both directions of 1-3 go; 2-4, 1-5 stay
    got = hide_pairs(senders, receivers, mask, hidden, 5)
    np.testing.assert_array_equal(got, [False, False, True, True, True, False, True])
    np.testing.assert_array_equal(mask, [True, True, True, True, True, False, True])  # input untouched
    got = hide_pairs(senders, receivers, mask, np.array([[1, 3], [2, 4], [1, 5]]), 5)
    np.testing.assert_array_equal(got, [False] * 6 + [True])


def test_hybrid_checkpoint_edge_prediction_hides_edges_from_both_graphs(hybrid, monkeypatch):
    """Masked-edge prediction runs on hybrid checkpoints: the hidden pairs reach neither graph the model reads."""
    from grn_jax.inference import model_fn
    from grn_jax.tasks import edge_prediction as ep

    calls, seen = [], []
    orig_mask, orig_arrays = ep.mask_cell_edges, model_fn.batch_arrays

    def mask_spy(pairs, n, fraction, rng):
        res = orig_mask(pairs, n, fraction, rng)
        if res is not None:
            calls.append(res[1])
        return res

    def arrays_spy(tokens, with_cell_graph):
        seen.append((tokens, with_cell_graph))
        return orig_arrays(tokens, with_cell_graph)

    monkeypatch.setattr(ep, "mask_cell_edges", mask_spy)
    monkeypatch.setattr(model_fn, "batch_arrays", arrays_spy)
    cells, counts = ep.masked_cells(hybrid["pre"], hybrid["query"], graph=_spec(hybrid), batch_size=4, seed=1,
                                    progress=False)
    assert cells and all(np.isfinite(c.hidden["grn_jax"]).all() for c in cells)
    assert all(flag for _, flag in seen)  # the hybrid model got its cell-specific graph
    hidden_all = {tuple(p) for h in calls for p in h}
    n_cell_edges = 0
    for tokens, _ in seen:
        for g in (tokens.graph, tokens.cell_graph):
            for r in range(tokens.batch_size):
                on = g.edge_mask[r]
                active = {(min(a, b), max(a, b)) for a, b in zip(g.senders[r][on], g.receivers[r][on])}
                n_cell_edges += len(active) if g is tokens.cell_graph else 0
                # rows share position numbers, so test each row against its own cell's hidden pairs
                row_cells = [c for c in cells if len(c.gene_ids) == int(tokens.token_mask[r].sum()) - 1
                             and np.array_equal(c.gene_ids, tokens.gene_ids[r, 1:len(c.gene_ids) + 1])]
                for c in row_cells:
                    assert not active & {tuple(p) for p in c.positives}
    assert hidden_all and n_cell_edges > 0  # not vacuous: edges were hidden and cell-specific edges remain
    again, _ = ep.masked_cells(hybrid["pre"], hybrid["query"], graph=_spec(hybrid), batch_size=1, seed=1,
                               progress=False)
    for a, b in zip(cells, again):  # bitwise: batch-mates and batch size do not matter
        np.testing.assert_array_equal(a.hidden["grn_jax"], b.hidden["grn_jax"])
