"""Pretraining start: graph diagnostics over training cells and `diffusion_beta: auto` (dense eigvalsh oracle)."""

import json

import numpy as np
import pytest
import yaml

from grn_jax.config import build_run_config, resolve_vocab_size
from grn_jax.train.data import open_train_data
from grn_jax.train.graph_check import check_graphs
from tests.models._cells import dense_laplacian_np
from tests.train.shards import N_BINS, make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("shards") / "shards")


def _tree(shards, run_dir, beta="auto"):
    return {"name": "graph-check", "data": {"shards": str(shards)},
            "model": {"preset": "tiny", "n_bins": N_BINS, "d_model": 16, "n_layers": 1, "n_heads": 2,
                      "mlp_dim": 32, "attention": "diffusion", "diffusion_beta": beta},
            "train": {"run_dir": str(run_dir), "steps": 2, "batch_size": 8, "checkpoint_every": 100,
                      "eval_every": 0, "progress": False, "tensorboard": False},
            "mesh": {"data": -1, "fsdp": 1, "tensor": 1}}


def _oracle_beta(store, idx):
    """1 / median over training cells with edges of the smallest non-zero eigenvalue of the full dense L."""
    lmins = []
    for i in idx:
        c = store.cell(int(i))
        if len(c["edge_src"]) == 0:
            continue
        n = len(c["gene_ids"])
        edges = [(int(s) - 1, int(d) - 1, float(w)) for s, d, w in zip(c["edge_src"], c["edge_dst"],
                                                                          c["edge_weight"])]
        eig = np.linalg.eigvalsh(dense_laplacian_np(n, edges))
        lmins.append(eig[eig > 1e-8].min())
    return 1.0 / np.median(lmins), len(lmins)


def test_auto_beta_is_one_over_lambda_min_of_training_cells(shards, tmp_path):
    cfg = build_run_config(_tree(shards, tmp_path / "run"))
    data = open_train_data(cfg, process_index=0, process_count=1, log=lambda _: None)
    cfg = resolve_vocab_size(cfg, data.vocab_size)  # as pretrain does
    assert cfg.model.diffusion_beta == "auto"
    lines = []
    resolved, report = check_graphs(cfg, data, sample_cells=len(data.train_idx), log=lines.append)
    want, n_with_edges = _oracle_beta(data.store, data.train_idx)
    assert resolved.model.diffusion_beta == pytest.approx(want, rel=1e-9)
    assert report["diffusion_beta_auto"]["sample_cells"] == n_with_edges
    assert report["graph"]["cells"] == len(data.train_idx)  # training cells only, never validation
    assert report["graph"]["diffusion"]["beta"] == resolved.model.diffusion_beta
    assert any("auto ->" in ln for ln in lines) and any("gene tokens have an edge" in ln for ln in lines)
    # a number passes through unchanged
    fixed, _ = check_graphs(resolve_vocab_size(build_run_config(_tree(shards, tmp_path / "r2", beta=0.3)),
                                               data.vocab_size), data, log=lambda _: None)
    assert fixed.model.diffusion_beta == 0.3


def test_bad_beta_and_unresolved_auto_are_one_line_errors():
    from grn_jax.models import build_model, heat_plan, tiny

    with pytest.raises(ValueError, match="diffusion_beta"):
        tiny(diffusion_beta="large")
    with pytest.raises(ValueError, match="pretraining resolves"):
        heat_plan(tiny(diffusion_beta="auto"))
    assert build_model(tiny(diffusion_beta="auto"))  # building the module is fine; tracing it is not


@pytest.mark.slow  # a 2-step pretraining run (~45 s on the shared CPUs)
def test_pretrain_records_the_resolved_beta(shards, tmp_path):
    from grn_jax.train.loop import pretrain

    run_dir = tmp_path / "run"
    pretrain(build_run_config(_tree(shards, run_dir)), log=lambda _: None)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    report = json.loads((run_dir / "graph_diagnostics.json").read_text())
    assert isinstance(saved["model"]["diffusion_beta"], float)
    assert saved["model"]["diffusion_beta"] == report["diffusion_beta_auto"]["beta"]
    assert 0 < report["graph"]["gene_tokens_with_edge_fraction"] <= 1
