"""The run-directory lock: a second concurrent `pretrain` fails at once naming the holder's pid;
a lock left by a killed run is taken over."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from grn_jax.config import build_run_config
from grn_jax.train.loop import pretrain
from grn_jax.train.main import EXIT_ERROR, pretrain_command
from grn_jax.train.run_lock import LOCK_FILE, RunLockedError, hold_run_lock

REPO = Path(__file__).resolve().parents[2]
HOLDER = textwrap.dedent("""
    import sys, time
    from grn_jax.train.run_lock import hold_run_lock
    with hold_run_lock(sys.argv[1], log=print):
        print("held", flush=True)
        time.sleep(120)
""")


def _cfg(run_dir, shards):
    return {"name": "lock", "data": {"shards": str(shards)}, "model": {"preset": "tiny"},
            "train": {"run_dir": str(run_dir), "steps": 1, "batch_size": 8, "progress": False,
                      "tensorboard": False}, "mesh": {"data": -1}}


@pytest.fixture
def holder(tmp_path):
    """Another process (a stand-in for a running `pretrain`) holding the lock of tmp_path/run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield run_dir, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_second_run_fails_at_once_naming_the_holder(holder, tmp_path):
    run_dir, proc = holder
    # the shards do not exist: had the lock not stopped it first, the run would fail on the data instead
    busy = rf"train.run_dir .*run is in use by another pretrain run \(pid {proc.pid} "
    with pytest.raises(RunLockedError, match=busy):
        pretrain(build_run_config(_cfg(run_dir, tmp_path / "no_shards")), log=lambda m: None)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(_cfg(run_dir, tmp_path / "no_shards")))
    assert pretrain_command(str(cfg_path)) == EXIT_ERROR  # the CLI: one line, exit 2
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == proc.pid  # the holder's record is intact


def test_lock_of_a_killed_run_is_taken_over(holder, tmp_path):
    run_dir, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == proc.pid  # left behind by the dead run
    logs = []
    with hold_run_lock(run_dir, log=logs.append):
        assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} "):  # held: even this process cannot re-enter
            with hold_run_lock(run_dir, log=logs.append):
                pass
    assert len(logs) == 1 and f"taking over the stale lock of pid {proc.pid}" in logs[0]
    assert (run_dir / LOCK_FILE).read_text() == ""  # released cleanly: nothing stale for the next run
    with pytest.raises(ValueError, match="data.shards"):  # unlocked: pretrain gets as far as the data
        pretrain(build_run_config(_cfg(run_dir, tmp_path / "no_shards")), log=lambda m: None)
