"""`finetune`: a classification head on the pretrained encoder, frozen or full, with pretraining's trainer."""

import json

import jax
import numpy as np
import pytest

from grn_jax.inference import GraphSpec
from grn_jax.inference.finetune import FinetuneConfig, finetune
from grn_jax.train.metrics import read_metrics


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _restore(out_dir):
    """The fine-tuned parameters from the last checkpoint (orbax restore without a target)."""
    import orbax.checkpoint as ocp

    step_dir = max((p for p in (out_dir / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    with ocp.StandardCheckpointer() as c:
        tree = c.restore(step_dir / "state")
    return int(step_dir.name), tree["params"]


def test_frozen_finetune_trains_only_the_head(toy_run, pretrained, tmp_path):
    cfg = FinetuneConfig(label_key="cell_type", out_dir=str(tmp_path / "ft"), freeze_encoder=True, steps=3,
                         batch_size=8, peak_lr=1e-2, val_fraction=0.25, eval_every=3, checkpoint_every=3,
                         progress=False)
    res = finetune(pretrained, toy_run["h5ad"], cfg, graph=GraphSpec(network=str(toy_run["network"])),
                   log=lambda m: None)
    assert res.classes == ["t0", "t1"] and res.final_step == 3
    assert res.cells["train"] + res.cells["val"] == toy_run["adata"].n_obs == 20 and res.cells["val"] == 5
    assert res.cells["classes"] == {"t0": 10, "t1": 10}
    # the validation accuracy is a fraction of the 5 held-out cells
    assert res.val["val_cells"] == 5 and res.val["val_accuracy"] * 5 == pytest.approx(round(res.val["val_accuracy"] * 5))
    step, params = _restore(tmp_path / "ft")
    assert step == 3
    for a, b in zip(_leaves(params["encoder"]), _leaves(pretrained.params)):
        np.testing.assert_array_equal(a, b)  # frozen: not even weight decay touched the encoder
    assert params["head"]["logits"]["kernel"].shape == (pretrained.model_config.d_model, 2)
    # the head did train: it moved away from its initialisation (same seed, same key split as finetune)
    from grn_jax.models import ClassificationHead

    init_head = ClassificationHead(2).init({"params": jax.random.split(jax.random.key(cfg.seed))[1]},
                                           np.zeros((1, pretrained.model_config.d_model), np.float32))["params"]
    moved = [np.abs(a - np.asarray(b)).max() for a, b in zip(_leaves(params["head"]), _leaves(init_head))]
    assert min(moved) > 0
    # the loss at step 0 is the cross-entropy of the initial head: finite and recorded per step
    recs = read_metrics(tmp_path / "ft")
    assert [r["step"] for r in recs] == [0, 1, 2] and all(np.isfinite(r["loss"]) for r in recs)
    saved = json.loads((tmp_path / "ft" / "checkpoints" / "3" / "config" / "metadata").read_text())
    assert saved["classes"] == ["t0", "t1"] and saved["pretrained"]["checkpoint_sha256"] == pretrained.checkpoint_hash


def test_label_errors(toy_run, pretrained, tmp_path):
    g = GraphSpec(network=str(toy_run["network"]))
    with pytest.raises(ValueError, match="'missing' is not an obs column"):
        finetune(pretrained, toy_run["h5ad"], FinetuneConfig(label_key="missing", out_dir=str(tmp_path / "a")),
                 graph=g, log=lambda m: None)
    ad = toy_run["adata"].copy()
    ad.obs["one"] = "same"
    with pytest.raises(ValueError, match="1 distinct label"):
        finetune(pretrained, ad, FinetuneConfig(label_key="one", out_dir=str(tmp_path / "b")), graph=g,
                 log=lambda m: None)
    with pytest.raises(ValueError, match="finetune.pooling"):
        FinetuneConfig(label_key="x", out_dir="y", pooling="max")


@pytest.mark.slow
def test_full_finetune_moves_the_encoder_and_resumes(toy_run, pretrained, tmp_path):
    g = GraphSpec(network=str(toy_run["network"]))
    kw = dict(label_key="cell_type", out_dir=str(tmp_path / "ft"), batch_size=8, peak_lr=1e-2, eval_every=0,
              checkpoint_every=1, progress=False, pooling="mean")
    finetune(pretrained, toy_run["h5ad"], FinetuneConfig(steps=2, **kw), graph=g, log=lambda m: None)
    res = finetune(pretrained, toy_run["h5ad"], FinetuneConfig(steps=4, **kw), graph=g, log=lambda m: None)
    assert (res.start_step, res.final_step) == (2, 4)
    _, params = _restore(tmp_path / "ft")
    moved = [np.abs(a - b).max() for a, b in zip(_leaves(params["encoder"]), _leaves(pretrained.params))]
    assert max(moved) > 0
    assert [r["step"] for r in read_metrics(tmp_path / "ft")] == [0, 1, 2, 3]


@pytest.mark.slow  # two fine-tuning runs (~35 s); the checkpoint logic itself is tested fast in tests/train
def test_rerun_after_a_kill_between_the_final_save_and_its_seal(toy_run, pretrained, tmp_path):
    from grn_jax.train.checkpoint import INTEGRITY_FILE

    g = GraphSpec(network=str(toy_run["network"]))
    cfg = FinetuneConfig(label_key="cell_type", out_dir=str(tmp_path / "ft"), batch_size=8, eval_every=0,
                         checkpoint_every=1, steps=2, progress=False, freeze_encoder=True)
    finetune(pretrained, toy_run["h5ad"], cfg, graph=g, log=lambda m: None)
    (tmp_path / "ft" / "checkpoints" / "2" / INTEGRITY_FILE).unlink()  # committed, never sealed
    logs = []
    res = finetune(pretrained, toy_run["h5ad"], cfg, graph=g, log=logs.append)  # was: "step 2 already exists"
    assert (res.start_step, res.final_step) == (2, 2)
    assert any("step 2 was committed but never sealed" in m for m in logs)
    assert (tmp_path / "ft" / "checkpoints" / "2" / INTEGRITY_FILE).is_file()
