"""The controls every cell-level evaluation carries (grn_jax.tasks.controls).

- `random_init`: parameters bitwise equal to the run's initialisation (the toy
  checkpoints hold exactly the state `pretrain` initialises, see tests/tasks/_toy.py);
- the annotation split never holds a cell the run trained on (oracle: the training
  indices `open_train_data` gives `pretrain`);
- no evaluated cell's graph is chosen by its label (refused), and with GREmLN's kNN
  graph integration a cell's embedding does not change when its label does;
- `majority` / `chance` rows equal hand-computed trivial predictions.
"""

import dataclasses

import jax
import numpy as np
import pytest

from grn_jax.inference import GraphSpec
from grn_jax.tasks import evaluate_annotation, evaluate_edge_prediction, evaluate_probe
from grn_jax.tasks.annotation import annotation_scores
from grn_jax.tasks.controls import pretraining_cells, random_init_model, random_init_params, unseen_mask
from grn_jax.tasks.features import cell_embeddings
from grn_jax.tasks.splits import stratified_splits
from tests.tasks._toy import make_run

QUIET = dict(log=lambda m: None)


def _equal_trees(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb))


def test_random_init_params_equal_the_runs_initialisation_bitwise(runs):
    pre = runs["gdka"]  # its checkpoint holds the initial state, made as `pretrain` makes it
    assert _equal_trees(random_init_params(pre), pre.params)
    ctl = random_init_model(pre)
    assert ctl.step == 0 and ctl.vocab == pre.vocab and ctl.tokenization == pre.tokenization
    assert ctl.checkpoint_hash != pre.checkpoint_hash
    other_seed = dataclasses.replace(pre, run_config={**pre.run_config,
                                                      "train": {**pre.run_config["train"], "seed": 7}})
    assert not _equal_trees(random_init_params(other_seed), pre.params)  # the seed is the run's, not any
    with pytest.raises(ValueError, match="train.seed"):
        random_init_params(dataclasses.replace(pre, run_config={**pre.run_config, "train": {}}))


def test_random_init_equals_pretrainings_sharded_init_on_an_fsdp_tensor_mesh(runs):
    """`pretrain` initialises with jit(init, out_shardings) over its mesh: the values do not depend on the mesh."""
    from grn_jax.train import sharding as sh
    from grn_jax.train.config import MeshConfig, TrainConfig
    from grn_jax.train.model_fns import model_fns
    from grn_jax.train.optim import make_optimizer
    from grn_jax.train.state import init_sharded_state
    from grn_jax.train.typed import build

    pre = runs["gdka"]
    mesh = sh.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    tx = make_optimizer(build(TrainConfig, pre.run_config["train"], "train"))
    init = init_sharded_state(model_fns(pre.model_config).init_params, tx, mesh,
                              jax.random.key(pre.run_config["train"]["seed"]))
    assert _equal_trees(random_init_params(pre), jax.device_get(init.state.params))


@pytest.fixture(scope="module")
def half_seen(sim, tmp_path_factory):
    """A run pretrained on sim's first 100 cells (25 % of them its validation split)."""
    from grn_jax.inference import load_pretrained

    root = tmp_path_factory.mktemp("half_seen")
    run = make_run(root, sim, name="run", train_adata=sim.adata[:100].copy(), val_fraction=0.25)
    return load_pretrained(run["run"]), run["config"]


def _trained_names(cfg, sim) -> set:
    """Oracle: the cells `pretrain` draws batches from (open_train_data's train split), by name."""
    from grn_jax.train.data import open_train_data

    data = open_train_data(cfg, process_index=0, process_count=1, log=lambda m: None)
    return set(sim.adata.obs_names[[data.store.cell(int(i))["dataset_row"] for i in data.train_idx]])


def test_annotation_never_scores_a_pretraining_cell(half_seen, sim, runs):
    pre, cfg = half_seen
    trained = _trained_names(cfg, sim)
    assert len(trained) == 75
    seen = pretraining_cells(pre)
    assert set(seen.train) == trained and len(seen.val) == 25 and not set(seen.val) & trained
    r = evaluate_annotation(pre, sim.adata, label_key="cell_type", graph=runs["graph"], n_splits=2, batch_size=32,
                            **QUIET)
    assert r.counts["cells"] == 160 and r.counts["cells_seen_in_pretraining"] == 75
    scored = set(r.details["all"]["cells"])
    assert len(scored) == r.counts["all"]["cells"] == 85 and not scored & trained
    assert set(seen.val) <= scored  # validation cells were never trained on: they count as unseen
    with pytest.raises(ValueError, match="pretraining set"):
        evaluate_annotation(pre, sim.adata[sorted(trained)].copy(), label_key="cell_type", graph=runs["graph"],
                            **QUIET)
    for fn, kw in ((evaluate_probe, {"n_genes": 10, "n_splits": 2}), (evaluate_edge_prediction, {"n_boot": 5})):
        with pytest.raises(ValueError, match="pretraining set"):
            fn(pre, sim.adata[sorted(trained)].copy(), graph=runs["graph"], batch_size=32, **kw, **QUIET)
    # the caller may name the training cells when the shards are gone
    keep, rep = unseen_mask(pre, sim.adata.obs_names, pretraining=["cell0", "cell5"])
    assert rep["cells_seen_in_pretraining"] == 2 and not keep[0] and not keep[5] and keep.sum() == 158


def test_unknown_pretraining_cells_raise(runs, sim, tmp_path):
    pre = runs["gdka"]
    moved = dataclasses.replace(pre, run_config={**pre.run_config,
                                                 "data": {**pre.run_config["data"], "shards": str(tmp_path)}})
    with pytest.raises(ValueError, match="cells pretraining saw are unknown"):
        evaluate_annotation(moved, sim.adata, label_key="cell_type", graph=runs["graph"], **QUIET)
    rehashed = dataclasses.replace(pre, tokenization={**pre.tokenization, "content_hash": "0" * 64})
    with pytest.raises(ValueError, match="re-prepared"):
        pretraining_cells(rehashed)


@pytest.fixture(scope="module")
def knn_graph(runs, tmp_path_factory):
    """Per-cell-type networks of the pretraining cells (labels.tsv names them) and those cells as the reference."""
    from grn_jax.graphs import infer_cell_type_networks, write_cell_type_networks

    root = tmp_path_factory.mktemp("knn")
    train = runs["train_adata"]
    tfs = list(train.var_names[train.var["is_tf"].to_numpy()])
    nets = infer_cell_type_networks(train, cell_type_key="cell_type", regulators=tfs)
    write_cell_type_networks(nets, root / "networks", cell_names=train.obs_names)
    train.write_h5ad(root / "reference.h5ad")
    return GraphSpec(networks_dir=str(root / "networks"), reference=str(root / "reference.h5ad"))


def test_no_evaluated_cell_gets_its_graph_from_its_label(runs, sim, knn_graph, tmp_path):
    by_label = GraphSpec(networks_dir=knn_graph.networks_dir, cell_type_column="cell_type")
    for fn, kw in ((evaluate_annotation, {"label_key": "cell_type"}), (evaluate_probe, {}),
                   (evaluate_edge_prediction, {})):
        with pytest.raises(ValueError, match="cell_type_column"):
            fn(runs["gdka"], sim.adata, graph=by_label, **kw, **QUIET)
    # kNN integration: the embeddings do not move when the evaluated cells' labels are shuffled or dropped
    shuffled = sim.adata.copy()
    shuffled.obs["cell_type"] = np.random.default_rng(0).permutation(shuffled.obs["cell_type"].to_numpy())
    unlabelled = sim.adata.copy()
    del unlabelled.obs["cell_type"]
    emb = [cell_embeddings(runs["gdka"], ad, graph=knn_graph, batch_size=32)[0]
           for ad in (sim.adata, shuffled, unlabelled)]
    assert np.array_equal(emb[0], emb[1]) and np.array_equal(emb[0], emb[2])
    single = cell_embeddings(runs["gdka"], sim.adata, graph=runs["graph"], batch_size=32)[0]
    assert not np.array_equal(emb[0], single)  # the integrated graphs did reach the model
    r = evaluate_annotation(runs["gdka"], sim.adata, label_key="cell_type", graph=knn_graph, n_splits=2,
                            batch_size=32, random_init=False, **QUIET)
    assert r.settings["graph"]["reference"] == knn_graph.reference and "random_init" not in r.metrics["all"]
    # a reference that holds evaluated cells would let their own labels vote for their graphs
    leaky = tmp_path / "leaky.h5ad"
    sim.adata[:20].write_h5ad(leaky)
    with pytest.raises(ValueError, match="graph reference"):
        evaluate_annotation(runs["gdka"], sim.adata, label_key="cell_type", n_splits=2, **QUIET,
                            graph=dataclasses.replace(knn_graph, reference=str(leaky)))


def _macro_f1(y_true, y_pred) -> float:
    """Macro-F1 over the classes of y_true, by hand (0 where a class has no true positive)."""
    f = []
    for c in np.unique(y_true):
        tp = np.sum((y_pred == c) & (y_true == c))
        p = tp / max(np.sum(y_pred == c), 1)
        r = tp / np.sum(y_true == c)
        f.append(0.0 if tp == 0 else 2 * p * r / (p + r))
    return float(np.mean(f))


def test_majority_and_chance_rows_match_hand_computed_predictions():
    rng = np.random.default_rng(3)
    labels = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    x = rng.normal(size=(100, 4))
    table, _ = annotation_scores({"noise": x}, labels, n_splits=3, seed=2)
    assert set(table) == {"noise", "majority", "chance"}
    for s, (tr, te) in enumerate(stratified_splits(labels, n_splits=3, seed=2)):
        want = _macro_f1(labels[te], np.full(len(te), "a"))  # "a" is the most common training class
        assert table["majority"]["macro_f1"]["values"][s] == pytest.approx(want)
        assert table["majority"]["accuracy"]["values"][s] == pytest.approx(np.mean(labels[te] == "a"))
    # uniform guessing over 3 classes: accuracy near 1/3 over the splits' 60 test cells
    assert 0.1 < table["chance"]["accuracy"]["mean"] < 0.6
    assert table["chance"]["macro_f1"]["values"] != table["majority"]["macro_f1"]["values"]


def test_training_reference_holds_exactly_the_trained_cells(half_seen, sim, tmp_path):
    import anndata

    from grn_jax.reporting import controls_line, write_training_reference

    pre, cfg = half_seen
    h5ad = tmp_path / "cells.h5ad"
    sim.adata.write_h5ad(h5ad)
    ref = anndata.read_h5ad(write_training_reference(pre.run_dir, h5ad, tmp_path / "ref.h5ad"))
    assert set(ref.obs_names) == _trained_names(cfg, sim)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    row = lambda v: {"macro_f1": {"mean": v}}  # noqa: E731
    line = controls_line({"grn_jax": row(0.5), "random_init": row(0.25), "chance": row(0.1)})
    assert line == ("macro_f1 (mean over splits): grn_jax 0.500, random_init 0.250, chance 0.100; "
                    "grn_jax - random_init = +0.250; grn_jax - chance = +0.400")
    assert controls_line({"pca_logreg": row(0.9)}) is None


@pytest.mark.slow
def test_quickstart_evaluations_score_held_out_cells_with_knn_graphs(half_seen, sim, tmp_path):
    """quickstart_graph on a toy OUT folder: reference = the training cells, scored = the others, no label graphs."""
    from grn_jax.graphs import infer_cell_type_networks, write_cell_type_networks
    from grn_jax.reporting import quickstart_graph

    pre, cfg = half_seen
    trained = _trained_names(cfg, sim)
    assert quickstart_graph(tmp_path, pre.run_dir) == GraphSpec()  # no networks folder: no graph
    seen = sim.adata[:100].copy()  # the run's shards: networks inferred from them, labels.tsv names them
    tfs = list(seen.var_names[seen.var["is_tf"].to_numpy()])
    nets = infer_cell_type_networks(seen, cell_type_key="cell_type", regulators=tfs)
    write_cell_type_networks(nets, tmp_path / "networks", cell_names=seen.obs_names)
    sim.adata.write_h5ad(tmp_path / "pbmc68k_counts.h5ad")
    graph = quickstart_graph(tmp_path, pre.run_dir)
    assert graph.cell_type_column is None and graph.reference == str(tmp_path / "eval_reference.h5ad")
    r = evaluate_annotation(pre, tmp_path / "pbmc68k_counts.h5ad", label_key="cell_type", graph=graph,
                            n_splits=2, batch_size=32, **QUIET)
    assert r.counts["cells_seen_in_pretraining"] == len(trained) == 75
    assert not set(r.details["all"]["cells"]) & trained
    assert {"grn_jax", "random_init", "pca_logreg", "majority", "chance"} <= set(r.metrics["all"])
