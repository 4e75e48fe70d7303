"""The run-config loader: YAML + dotted overrides, validated once, errors naming the field."""

from pathlib import Path

import pytest

from grn_jax.config import build_run_config, load_run_config, resolve_vocab_size
from grn_jax.models import ModelConfig
from grn_jax.train.typed import apply_overrides, parse_override

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


@pytest.mark.parametrize("name", ["tiny", "gremln_base", "grnformer_base", "pod_example"])
def test_shipped_configs_validate(name):
    cfg = load_run_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    assert not cfg.model_ready  # vocabulary comes from the data
    done = resolve_vocab_size(cfg, 1003)
    assert isinstance(done.model, ModelConfig) and done.model.gene_vocab_size == 1003


def test_overrides_are_typed_and_applied():
    cfg = load_run_config(CONFIGS / "tiny.yaml", ["train.steps=7", "mesh.fsdp=2", "train.optim.peak_lr=1e-4",
                                                  "model.attention=vanilla", "model.gene_vocab_size=50"])
    assert cfg.train.steps == 7 and cfg.mesh.fsdp == 2 and cfg.train.optim.peak_lr == 1e-4
    assert cfg.model.attention == "vanilla" and cfg.model.gene_vocab_size == 50
    assert cfg.model.d_model == 64  # the YAML's value over the preset's
    assert parse_override("train.optim.clip_norm=null") == (["train", "optim", "clip_norm"], None)
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


@pytest.mark.parametrize("override,match", [
    ("train.stpes=3", r"train: unknown field\(s\) \['stpes'\]"),
    ("train.steps=ten", r"train.steps: expected an integer, got str 'ten'"),
    ("train.steps=0", r"train.steps: must be an integer >= 1"),
    ("mesh.tensor=0", r"mesh.tensor: must be a positive integer or -1"),
    ("model.n_heads=5", r"model: .*d_model=64 must be divisible by n_heads=5"),
    ("model.preset=huge", r"model.preset: unknown preset 'huge'"),
    ("train.optim.b1=2.0", r"train.optim.b1/b2"),
    ("data.prepare.qc.min_genes=-1", r"data.prepare: .*qc.min_genes"),
    ("oops.x=1", r"unknown section\(s\) \['oops'\]"),
    ("train.batch_size=16=", r"train.batch_size: expected an integer"),
])
def test_bad_values_name_the_field(override, match):
    with pytest.raises(ValueError, match=match):
        load_run_config(CONFIGS / "tiny.yaml", [override])


def test_vocab_mismatch_and_missing_file(tmp_path):
    cfg = build_run_config({"model": {"preset": "tiny", "gene_vocab_size": 40}})
    with pytest.raises(ValueError, match="model.gene_vocab_size: config says 40 but the data vocabulary has 41"):
        resolve_vocab_size(cfg, 41)
    with pytest.raises(ValueError, match="does not exist"):
        load_run_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_run_config(bad)
