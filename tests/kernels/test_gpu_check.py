"""benchmarks/gpu_check.{sh,py} without a GPU: the shell parses, and every program the GPU stages would
compile lowers for CUDA here (`--lower-only`: everything up to `.compile()`, Triton calls included)."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_script_parses_and_documents_itself():
    script = BENCH / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run(["bash", str(script), "--help"], check=True, capture_output=True, text=True).stdout
    assert "--fetch-wheels" in out and "--lower-only" in out
    bad = subprocess.run(["bash", str(script), "--nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


@pytest.mark.parametrize("stage,n_rows,pallas_rows", [("kernels", 6, 5), ("speed", 8, 3), ("step", 5, 1)])
def test_every_gpu_program_lowers_for_cuda(tmp_path, stage, n_rows, pallas_rows):
    assert _gpu_check().main([stage, "--lower-only", "--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / f"gpu_{stage}.json").read_text())["rows"]
    assert len(rows) == n_rows and not [r for r in rows if "error" in r]
    lowered = [r for r in rows if "lowered_s" in r]
    assert len(lowered) == n_rows - (stage == "kernels")  # the native CPU kernel is not a CUDA program
    assert sum(r["triton_calls"] > 0 for r in lowered) == pallas_rows  # the Pallas programs hold Triton calls
    assert (tmp_path / f"gpu_{stage}.md").read_text().startswith(f"# GPU check: {stage}")
