"""End to end through the CLI on a really pretrained run (slow: compiles a training step)."""

import json

import anndata
import numpy as np
import pytest

from grn_jax.cli import main
from grn_jax.inference import CLS_KEY, UNS_KEY, load_export, load_pretrained
from tests.inference._run import make_run


@pytest.mark.slow
def test_pretrain_then_embed_and_export_via_cli(tmp_path):
    run = make_run(tmp_path, pretrain_steps=2)
    pre = load_pretrained(run["run"])
    assert pre.step == 2 and pre.tokenization["content_hash"]  # the record pretraining itself saved
    out = tmp_path / "embedded.h5ad"
    assert main(["embed", str(run["h5ad"]), "--checkpoint", str(run["run"]), "--out", str(out),
                 "--network", str(run["network"]), "--batch-size", "4", "--no-progress"]) == 0
    ad = anndata.read_h5ad(out)
    assert ad.obsm[CLS_KEY].shape == (run["adata"].n_obs, pre.model_config.d_model)
    assert np.isfinite(ad.obsm[CLS_KEY]).all()
    assert json.loads(ad.uns[UNS_KEY]["checkpoint"])["step"] == 2
    assert main(["export", "--checkpoint", str(run["run"]), "--out", str(tmp_path / "exp")]) == 0
    served = load_export(tmp_path / "exp", expect_checkpoint_sha256=pre.checkpoint_hash)
    assert served.manifest["platforms"] == ["cpu", "cuda"]
    card = (tmp_path / "exp" / "model_card.md").read_text()
    assert "optimiser steps: 2" in card and "last training loss:" in card
    # embedding from the export folder gives the same cells' embeddings
    out2 = tmp_path / "embedded2.h5ad"
    assert main(["embed", str(run["h5ad"]), "--checkpoint", str(tmp_path / "exp"), "--out", str(out2),
                 "--network", str(run["network"]), "--batch-size", "4", "--no-progress"]) == 0
    np.testing.assert_array_equal(anndata.read_h5ad(out2).obsm[CLS_KEY], ad.obsm[CLS_KEY])
