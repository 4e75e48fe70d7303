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
    report = compile_only(_cfg(), seq_len=16, num_edges=16, device_memory="80GiB", log=lines.append)
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
    assert "per-device footprint" in lines[1] and "of 80.00 GiB (--device-memory 80GiB)" in lines[1]


def _report(temp, args):
    from grn_jax.train.compile import CompileReport

    return CompileReport(mesh={"data": 8}, n_devices=8, batch_shape={}, n_params=1, param_bytes_per_device=4,
                         memory={"argument_size_in_bytes": args, "output_size_in_bytes": args,
                                 "temp_size_in_bytes": temp, "alias_size_in_bytes": args}, flops=None, compile_s=0.0)


def test_device_memory_check_names_what_to_change():
    from grn_jax.train.compile import check_device_memory, footprint, parse_bytes

    assert parse_bytes("80GiB") == 80 * 2**30 and parse_bytes("40GB") == 40 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("1e9") == 10**9
    for bad in ("eighty", "80XB", "-1GiB", "0"):
        with pytest.raises(ValueError, match="--device-memory"):
            parse_bytes(bad)
    gib = 2**30
    assert footprint(_report(50 * gib, 10 * gib).memory) == 60 * gib  # donated outputs are not counted twice
    check_device_memory(_report(50 * gib, 10 * gib), 80 * gib, "test")  # fits: no error
    with pytest.raises(ValueError, match=r"needs 100.00 GiB per device .* 80.00 GiB .* model.remat=attention"):
        check_device_memory(_report(90 * gib, 10 * gib), 80 * gib, "test")
    with pytest.raises(ValueError, match=r"parameters and optimiser state dominate: raise mesh.fsdp"):
        check_device_memory(_report(10 * gib, 90 * gib), 80 * gib, "test")


def test_cli_passes_device_memory():
    from grn_jax.cli import build_parser

    args = build_parser().parse_args(["pretrain", "--config", "c.yaml", "--compile-only", "--device-memory", "80GiB"])
    assert args.compile_only and args.device_memory == "80GiB"


def test_compile_only_needs_a_vocabulary_and_a_fitting_batch():
    with pytest.raises(ValueError, match="model.gene_vocab_size"):
        compile_only(load_run_config(CONFIGS / "tiny.yaml"))
    with pytest.raises(ValueError, match=r"micro-batch 6 .* divisible by mesh data x fsdp = 8"):
        compile_only(_cfg("train.batch_size=6"), seq_len=16, num_edges=16)
