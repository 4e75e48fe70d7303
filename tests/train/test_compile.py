"""Compile-only: the sharded step lowers and compiles on abstract inputs and reports memory and FLOPs."""

from pathlib import Path

import pytest

from grn_jax.config import load_run_config
from grn_jax.train.compile import compile_only

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


def _cfg(*extra):
    return load_run_config(CONFIGS / "tiny.yaml", [
        "model.gene_vocab_size=67", "model.d_model=32", "model.n_layers=1", "model.mlp_dim=64",
        "train.batch_size=8", "mesh.data=2", "mesh.fsdp=4", *extra])


def test_compile_only_reports_sharded_memory_and_flops():
    lines = []
    report = compile_only(_cfg(), seq_len=16, num_edges=16, log=lines.append)
    assert report.mesh == {"data": 2, "fsdp": 4, "tensor": 1} and report.n_devices == 8
    assert report.flops is not None and report.flops > 0
    assert report.memory["argument_size_in_bytes"] > 0
    # fsdp=4: every matrix with a d_model axis is split 4 ways, so far less than the full f32 parameter bytes
    assert report.param_bytes_per_device < 0.5 * 4 * report.n_params
    assert "FLOPs per step" in lines[0] and "iB per device" in lines[0]
    # counted from the traced step (all devices), split evenly; XLA's own figure is shown beside it
    assert report.flops == report.flops_global / report.n_devices
    assert report.xla_flops is not None and "counts each loop body once" in lines[0]
    assert report.flops_uncounted == {}


def test_compile_only_needs_a_vocabulary_and_a_fitting_batch():
    with pytest.raises(ValueError, match="model.gene_vocab_size"):
        compile_only(load_run_config(CONFIGS / "tiny.yaml"))
    with pytest.raises(ValueError, match=r"micro-batch 6 .* divisible by mesh data x fsdp = 8"):
        compile_only(_cfg("train.batch_size=6"), seq_len=16, num_edges=16)
