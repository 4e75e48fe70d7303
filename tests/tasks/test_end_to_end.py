"""Every task end to end on a tiny (untrained) model and simulated data, plus the `grn-jax eval` CLI.

The model is freshly initialised, so these tests check plumbing, protocol and
baselines (never that the model is good): leak-free splits, counts of what was left
out, that a cell's features do not depend on its batch, and that the incomplete
graph reaches a GDKA model but not a vanilla one.
"""

import json

import numpy as np
import pytest

from grn_jax.testing import tolerance
from grn_jax.tasks import (evaluate_annotation, evaluate_attention, evaluate_edge_prediction,
                           evaluate_perturbation_response, evaluate_probe, evaluate_reverse_perturbation)
from grn_jax.tasks.classifiers import linear_classifier
from grn_jax.tasks.edge_prediction import masked_cells
from grn_jax.tasks.features import cell_embeddings
from grn_jax.tasks.metrics import classification_scores
from grn_jax.tasks.splits import stratified_splits

QUIET = dict(log=lambda m: None)


def test_annotation_matches_an_independent_refit_and_baselines_differ(runs, sim):
    r = evaluate_annotation(runs["gdka"], sim.adata, label_key="cell_type", graph=runs["graph"],
                            vanilla=runs["vanilla"], batch_size=32, **QUIET)
    table = r.metrics["all"]
    assert set(table) == {"grn_jax", "random_init", "vanilla", "pca_logreg", "majority", "chance"}
    for row in table.values():
        for k in ("precision", "recall", "macro_f1"):
            assert 0.0 <= row[k]["mean"] <= 1.0 and row[k]["n"] == 3
    assert table["pca_logreg"]["macro_f1"]["values"] != table["grn_jax"]["macro_f1"]["values"]
    # split 0 of grn_jax, recomputed from the embeddings with the same protocol
    emb, ok = cell_embeddings(runs["gdka"], sim.adata, graph=runs["graph"], batch_size=32)
    labels = sim.adata.obs["cell_type"].astype(str).to_numpy()
    assert ok.all()
    tr, te = stratified_splits(labels, n_splits=3, test_fraction=0.2, seed=0)[0]
    pred, _, _ = linear_classifier(emb[tr], labels[tr], emb[te], seed=0)
    refit = classification_scores(labels[te], pred)["macro_f1"]
    assert refit == pytest.approx(table["grn_jax"]["macro_f1"]["values"][0])
    assert r.counts["cells_without_embedding"] == 0 and r.counts["all"]["cells"] == sim.adata.n_obs


def test_annotation_zero_shot_setting_uses_only_held_out_types(runs, sim):
    types = sorted(set(sim.adata.obs["cell_type"].astype(str)))
    r = evaluate_annotation(runs["gdka"], sim.adata, label_key="cell_type", graph=runs["graph"],
                            heldout_types=types[1:], n_splits=2, batch_size=32, **QUIET)
    assert set(r.metrics) == {"zero_shot"}  # the in-domain part has one type left: skipped and said so
    assert "skipped" in r.counts["in_domain"]
    assert r.counts["in_domain"]["cells"] + r.counts["zero_shot"]["cells"] == sim.adata.n_obs
    assert r.details["zero_shot"]["classes"] == types[1:]
    with pytest.raises(ValueError, match="heldout_types"):
        evaluate_annotation(runs["gdka"], sim.adata, label_key="cell_type", graph=runs["graph"],
                            heldout_types=["nope"], batch_size=32, **QUIET)


def test_masked_cells_do_not_depend_on_batch_and_graph_reaches_gdka_only(runs, sim):
    sub = sim.adata[:40].copy()
    others = {"vanilla": runs["vanilla"]}
    a, counts = masked_cells(runs["gdka"], sub, graph=runs["graph"], others=others, batch_size=32, seed=3)
    b, _ = masked_cells(runs["gdka"], sub, graph=runs["graph"], others=others, batch_size=8, seed=3)
    assert counts["cells"] == 40 and len(a) == 40 - counts["cells_with_fewer_than_2_edges"]
    for ca, cb in zip(a, b):
        assert ca.row == cb.row and np.array_equal(ca.positives, cb.positives)
        assert np.array_equal(ca.negatives, cb.negatives) and np.array_equal(ca.observed, cb.observed)
        # inference runs one cell per program (lax.map): bitwise equal whatever the batch size
        assert np.array_equal(ca.hidden["grn_jax"], cb.hidden["grn_jax"])
        assert np.array_equal(ca.hidden["vanilla"], cb.hidden["vanilla"])
    full = {m: cell_embeddings(p, sub, graph=runs["graph"], batch_size=32)[0]
            for m, p in (("grn_jax", runs["gdka"]), ("vanilla", runs["vanilla"]))}
    rows = [c.row for c in a]
    masked_mean = {m: np.stack([c.mean[m] for c in a]) for m in full}
    # same compiled program, same tokens; vanilla never reads the edges: bitwise equal
    assert np.array_equal(masked_mean["vanilla"], full["vanilla"][rows])
    assert np.abs(masked_mean["grn_jax"] - full["grn_jax"][rows]).max() > 1e-4


def test_edge_prediction_end_to_end(runs, sim):
    r = evaluate_edge_prediction(runs["gdka"], sim.adata, graph=runs["graph"], vanilla=runs["vanilla"],
                                 n_boot=50, batch_size=32, **QUIET)
    table = r.metrics["held_out_cells"]
    assert set(table) == {"grn_jax", "random_init", "vanilla", "expression", "graph_only"}
    for row in table.values():
        for k in ("auroc", "ap"):
            lo, hi = row[k]["ci"]
            assert 0.0 <= lo <= row[k]["value"] <= hi <= 1.0
    assert table["expression"]["auroc"]["value"] != table["graph_only"]["auroc"]["value"]
    assert r.counts["cells_used"] + r.counts["cells_with_fewer_than_2_edges"] == sim.adata.n_obs
    assert r.details["train_cells"] + r.details["test_cells"] == r.counts["cells_used"]


def test_probe_end_to_end(runs, sim):
    r = evaluate_probe(runs["gdka"], sim.adata, graph=runs["graph"], n_genes=20, n_splits=2, batch_size=32, **QUIET)
    table = r.metrics["reconstruction"]
    assert set(table) == {"grn_jax", "random_init", "expression_pca"}
    assert table["expression_pca"]["r2"]["mean"] > table["grn_jax"]["r2"]["mean"] - 1.0  # both finite numbers
    assert all(np.isfinite(v) for row in table.values() for m in row.values() for v in m["values"])
    assert len(r.details["gene_names_split0"]) == 20


def test_reverse_perturbation_end_to_end(runs, sim):
    cond = sim.adata.obs["perturbation"].astype(str)
    r = evaluate_reverse_perturbation(runs["gdka"], sim.adata, condition_key="perturbation", graph=runs["graph"],
                                      vanilla=runs["vanilla"], batch_size=32, **QUIET)
    table = r.metrics["perturbed_cells"]
    assert set(table) == {"grn_jax_frozen", "vanilla_frozen", "lasso_logreg"}
    assert r.counts["control_cells_left_out"] == int((cond == "control").sum())
    assert r.counts["cells_used"] == int((cond != "control").sum())
    assert r.details["classes"] == sorted(set(cond) - {"control"})
    # knocked-out genes read zero in their cells: the lasso baseline must find them (3 classes, chance 1/3)
    assert table["lasso_logreg"]["accuracy"]["mean"] > 0.8
    with pytest.raises(ValueError, match="obs has no column 'condition'"):
        evaluate_reverse_perturbation(runs["gdka"], sim.adata, graph=runs["graph"], **QUIET)


def test_perturbation_response_end_to_end(runs, sim):
    r = evaluate_perturbation_response(runs["gdka"], sim.adata, condition_key="perturbation", graph=runs["graph"],
                                       max_control_cells=40, batch_size=32, **QUIET)
    table = r.metrics["held_out_perturbations"]
    assert set(table) == {"grn_jax_in_silico", "mean_shift"}
    assert all(-1.0 <= v <= 1.0 for row in table.values() for v in row["pcc_delta"]["values"])
    assert r.counts["control_cells_used"] == 40 and r.counts["perturbations"] == 3


def test_knockout_copies_zero_only_the_target():
    import anndata
    import scipy.sparse as sp

    from grn_jax.tasks.perturbation import knockout_copies

    x = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    ad = anndata.AnnData(X=sp.csr_matrix(x))
    ad.var_names = ["a", "b", "c", "d"]
    out = knockout_copies(ad, ["b", "d"])
    dense = out.X.toarray()
    np.testing.assert_array_equal(dense[:3], x)
    want_b = x.copy()
    want_b[:, 1] = 0
    want_d = x.copy()
    want_d[:, 3] = 0
    np.testing.assert_array_equal(dense[3:6], want_b)
    np.testing.assert_array_equal(dense[6:], want_d)
    assert out.obs["in_silico_ko"].tolist() == ["control"] * 3 + ["b"] * 3 + ["d"] * 3


def test_importance_matches_a_loop():
    from grn_jax.tasks.attention import importance

    rng = np.random.default_rng(0)
    w = rng.random((2, 3, 5, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], bool)
    phi = np.asarray(importance(w, mask))
    for b in range(2):
        genes = [i for i in range(1, 5) if mask[b, i]]
        for j in range(5):
            want = w[b][:, genes, j].sum() / (3 * len(genes)) if j in genes else 0.0
            assert phi[b, j] == pytest.approx(want, rel=1e-5)


def test_attention_end_to_end(runs, sim):
    r = evaluate_attention(runs["gdka"], sim.adata, graph=runs["graph"], tf_column="is_tf", n_perm=200,
                           batch_size=32, **QUIET)
    row = r.metrics["tf_enrichment"]["grn_jax"]
    assert row["rho"] > 0 and 0 < row["p_value"] <= 1
    n_tf = int(sim.adata.var["is_tf"].sum())
    assert r.counts["tf_genes_seen"] == n_tf and sum(r.details["is_tf"]) == n_tf
    phi = np.array(r.details["phi"])
    tf = np.array(r.details["is_tf"])
    assert row["rho_gene"] == pytest.approx(phi[tf].mean() / phi[~tf].mean())
    assert (phi > 0).all() and (phi < 1).all()  # a key's mean attention share
    assert r.settings["layer"] == "last encoder self-attention"


def test_cli_eval_writes_json_and_markdown(runs, sim, tmp_path, capsys):
    from grn_jax.cli import main

    h5ad = tmp_path / "cells.h5ad"
    sim.adata.write_h5ad(h5ad)
    out = tmp_path / "eval"
    rc = main(["eval", "probe", str(h5ad), "--checkpoint", str(runs["gdka"].run_dir), "--out", str(out),
               "--network", str(runs["network"]), "--n-splits", "2", "--n-genes", "10"])
    assert rc == 0
    data = json.loads((out / "probe.json").read_text())
    assert data["task"] == "probe" and data["settings"]["n_genes"] == 10
    assert "| grn_jax |" in (out / "probe.md").read_text()
    rc = main(["eval", "annotation", str(h5ad), "--checkpoint", str(runs["gdka"].run_dir), "--out", str(out),
               "--network", str(runs["network"]), "--label-key", "no_such_column"])
    assert rc == 2 and "no_such_column" in capsys.readouterr().err


@pytest.mark.slow
def test_reverse_perturbation_finetuned(runs, sim, tmp_path):
    r = evaluate_reverse_perturbation(runs["gdka"], sim.adata, condition_key="perturbation", graph=runs["graph"],
                                      finetune_dir=tmp_path / "ft", finetune_steps=4, n_splits=2, batch_size=16,
                                      **QUIET)
    row = r.metrics["perturbed_cells"]["grn_jax_finetuned"]
    assert row["accuracy"]["n"] == 2 and 0.5 <= row["top_k_auc"]["mean"] <= 1.0


@pytest.mark.slow
def test_attention_reads_the_grnformer_fusion_layer_like_the_model_read_out(sim, tmp_path):
    """On a GRNFormer checkpoint the read-out is the fusion cross-attention; phi equals models.attention_importance."""
    import jax

    from grn_jax.inference import GraphSpec, TrainingTokenizer, batch_arrays, load_pretrained
    from grn_jax.inference.graph_sources import build_graph_source
    from grn_jax.data.ingest import open_counts
    from grn_jax.models import attention_importance, build_model
    from grn_jax.tasks.attention import importance_fn
    from tests.tasks._toy import make_run

    run = make_run(tmp_path, sim, attention="vanilla", name="grnformer",
                   model={"adapter": {"fusion_heads": 2, "perturb_alpha": 0.0}})
    pre = load_pretrained(run["run"])
    graph = GraphSpec(network=str(run["network"]))
    r = evaluate_attention(pre, sim.adata[:40], graph=graph, tf_column="is_tf", n_perm=100, **QUIET)
    assert r.settings["layer"] == "fusion cross-attention"
    tok = TrainingTokenizer.from_record(pre.tokenization, pre.vocab)
    src = open_counts(sim.adata[:16].copy(), tok.ingest_config(backed=False))
    col_ids, _ = tok.column_map(src)
    gsrc, _ = build_graph_source(graph, pre.vocab, src, 64, log=lambda m: None)
    t = tok.tokenize(src.rows(0, 16), 0, col_ids, src, ingest=tok.ingest_config(backed=False), graph_source=gsrc)
    batch, _ = next(tok.batches(t, 16))
    ours = np.asarray(importance_fn(pre.model_config)(pre.params, *batch_arrays(batch.tokens, False)))
    ref = np.asarray(jax.device_get(attention_importance(build_model(pre.model_config), {"params": pre.params},
                                                         batch.tokens)))
    tol = tolerance(np.float32)
    np.testing.assert_allclose(ours, ref, rtol=tol.rtol, atol=tol.atol)


def test_unlabelled_cells_are_left_out_and_counted(runs, sim):
    ad = sim.adata.copy()
    ct = ad.obs["cell_type"].astype(object)
    ct.iloc[:7] = None
    ad.obs["cell_type"] = ct
    r = evaluate_annotation(runs["gdka"], ad, label_key="cell_type", graph=runs["graph"], n_splits=2,
                            batch_size=32, **QUIET)
    assert r.counts["cells_without_label"] == 7 and r.counts["all"]["cells"] == ad.n_obs - 7


def test_attention_degrees_match_the_network(runs, sim):
    """Every cell expresses (almost) all 30 genes, so a gene's mean degree is close to its network degree."""
    r = evaluate_attention(runs["gdka"], sim.adata[:20], graph=runs["graph"], tf_column="is_tf", n_perm=10,
                           batch_size=32, **QUIET)
    net = sim.network
    deg = {g: 0 for g in r.details["genes"]}
    for a, b in zip(net.regulator, net.target):
        deg[a] = deg.get(a, 0) + 1
        deg[b] = deg.get(b, 0) + 1
    got = dict(zip(r.details["genes"], r.details["mean_degree"]))
    tf = [g for g, t in zip(r.details["genes"], r.details["is_tf"]) if t]
    other = [g for g in r.details["genes"] if g not in tf]
    assert np.mean([got[g] for g in tf]) > np.mean([got[g] for g in other])  # TFs are the hubs, as in the truth
    assert np.mean([deg[g] for g in tf]) > np.mean([deg[g] for g in other])
    assert all(got[g] <= 2 * deg[g] + 1e-9 for g in got)
