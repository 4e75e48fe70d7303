"""`grn-jax profile`: trace parsing, cost figures, CLI wiring; an end-to-end traced run (slow)."""

import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from grn_jax.cli import build_parser
from grn_jax.profiling import OpTime, ProfileReport, hlo_instruction_names, op_times_from_trace


def test_op_times_sum_complete_events_of_known_ops(tmp_path):
    events = [
        {"ph": "X", "name": "fusion.1", "dur": 1500.0, "ts": 0},
        {"ph": "X", "name": "fusion.1", "dur": 500.0, "ts": 10},
        {"ph": "X", "name": "dot.3", "dur": 250.0, "ts": 20},
        {"ph": "X", "name": "PjitFunction(step)", "dur": 9000.0, "ts": 0},  # host event, not an HLO op
        {"ph": "i", "name": "dot.3", "ts": 30},  # instant event: no duration
        {"ph": "M", "name": "thread_name", "args": {"name": "x"}},
    ]
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    ops = op_times_from_trace(str(path), {"fusion.1", "dot.3", "while.2"})
    assert [(o.name, o.total_ms, o.count) for o in ops] == [("fusion.1", 2.0, 2), ("dot.3", 0.25, 1)]


def test_hlo_names_come_from_the_compiled_module():
    compiled = jax.jit(lambda a: jnp.tanh(a @ a).sum()).lower(jnp.ones((8, 8))).compile()
    names = hlo_instruction_names(compiled)
    assert any(n.startswith(("dot", "fusion", "ynn_fusion", "custom-call")) for n in names), sorted(names)[:20]


def test_report_figures_and_table():
    report = ProfileReport(backend="cpu", n_devices=1, batch_shape={"batch_size": 2}, compile_s=1.0,
                           step_s=[0.5, 0.1, 0.2], flops=1e9, bytes_accessed=4e8,
                           ops=[OpTime("while.7", 300.0, 3), OpTime("fusion.2", 150.0, 3), OpTime("dot.1", 50.0, 3)],
                           trace_dir="/tmp/x", perfetto_trace=None)
    assert report.median_step_s == 0.2
    assert report.achieved_flops_per_s == pytest.approx(5e9)
    assert report.achieved_bytes_per_s == pytest.approx(2e9)
    text = report.format()
    assert "5e+09 FLOP/s" in text and "2e+09 B/s" in text
    assert "fusion.2" in text and "75.0%" in text  # share of leaf time: 150 / (150 + 50)
    while_line = next(line for line in text.splitlines() if "while.7" in line)
    assert "*" in while_line and "%" not in while_line  # control flow: no share of leaf time


def test_mfu_against_a_stated_peak():
    from grn_jax.profiling import known_peak

    report = ProfileReport(backend="gpu", n_devices=8, batch_shape={}, compile_s=1.0, step_s=[0.5, 0.5],
                           flops=2e12, bytes_accessed=None, ops=[], trace_dir="/tmp/x", perfetto_trace=None,
                           xla_flops=1.7e11, peak_flops_per_s=8e12, peak_source="as given")
    assert report.mfu == pytest.approx(0.5)  # 2e12 FLOPs in 0.5 s = 4e12 FLOP/s of 8e12
    text = report.format()
    assert "MFU: 50.00% of 8e+12" in text and "counts each loop body once" in text
    assert known_peak("NVIDIA H200")[0] == 989e12 and known_peak("cpu") == (None, "")
    no_peak = ProfileReport(backend="cpu", n_devices=1, batch_shape={}, compile_s=1.0, step_s=[1.0], flops=1e9,
                            bytes_accessed=None, ops=[], trace_dir="/tmp/x", perfetto_trace=None)
    assert no_peak.mfu is None and "no peak known" in no_peak.format()


def test_cli_parses_profile():
    args = build_parser().parse_args(["profile", "--config", "run.yaml", "--steps", "3", "--out", "p",
                                      "--set", "model.attention_impl=pallas"])
    assert (args.config, args.steps, args.out, args.overrides) == ("run.yaml", 3, "p", ["model.attention_impl=pallas"])
    assert args.peak_tflops is None
    assert build_parser().parse_args(["profile", "--config", "r.yaml", "--peak-tflops", "989"]).peak_tflops == 989.0


@pytest.mark.slow
def test_profile_end_to_end(tmp_path):
    from grn_jax.profiling import profile_from_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: {preset: tiny, gene_vocab_size: 64, n_layers: 1}\n"
                   f"train: {{batch_size: 8, run_dir: {tmp_path / 'run'}}}\n")
    lines = []
    report = profile_from_config(str(cfg), steps=2, out_dir=str(tmp_path / "prof"), seq_len=16, num_edges=16,
                                 log=lines.append)
    assert len(report.step_s) == 2 and report.perfetto_trace is not None
    assert report.flops and report.flops > 0 and report.bytes_accessed > 0
    assert report.ops and all(o.count > 0 for o in report.ops)
    assert "per-op time" in lines[0]
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        profile_from_config(str(cfg), steps=0, out_dir=str(tmp_path / "prof2"))
