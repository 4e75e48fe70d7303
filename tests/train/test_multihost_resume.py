"""Multi-host exact resume: every process's data-iterator state is checkpointed and restored.

Fast: the gather / pick-own round trip and its refusals. Slow: 2 processes x 4 CPU devices on
127.0.0.1 (jax.distributed), both killed mid-run, rerun to resume. The resumed steps repeat the
killed run's bit for bit, and with train.deterministic_reductions every loss equals one process's on 8
devices bit for bit (without it the cross-process all-reduce sums in another order than the in-process
one: 2.3564477 vs 2.3564475 at step 2). The same mechanism on one process, fast:
tests/train/test_deterministic_reductions.py.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import pytest
import yaml

from grn_jax.train import distributed
from grn_jax.train.loop import FAULT_ENV
from grn_jax.train.metrics import read_metrics
from tests.train.shards import N_BINS, make_shards

REPO = Path(__file__).resolve().parents[2]
STEPS = 7


def test_process_states_round_trip_and_refusals(monkeypatch):
    state = {"grain": {"next_index": 12}, "signature": {"process_index": 0, "process_count": 1}}
    saved = distributed.gather_process_states(state)
    assert saved == {"per_process": [state]}
    assert distributed.own_process_state(saved) == state
    assert distributed.own_process_state(state) == state  # a checkpoint from before states were gathered

    two = {"per_process": [{"host": 0}, {"host": 1}]}
    with pytest.raises(ValueError, match="states of 2 process.* this run has 1; resume with 2 processes"):
        distributed.own_process_state(two)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert distributed.own_process_state(two) == {"host": 1}  # each host takes its own position
    with pytest.raises(ValueError, match="one data-iterator state .* resume it with one process"):
        distributed.own_process_state(state)


def _config(shards, run_dir) -> Path:
    tree = {"name": "multihost", "data": {"shards": str(shards)},
            "model": {"preset": "tiny", "n_bins": N_BINS, "d_model": 16, "n_layers": 1, "n_heads": 2,
                      "mlp_dim": 32, "attention": "vanilla"},
            "train": {"run_dir": str(run_dir), "steps": STEPS, "batch_size": 8, "checkpoint_every": 3,
                      "eval_every": 0, "progress": False, "tensorboard": False, "keep_last": 3, "keep_best": 0,
                      "async_checkpoint": False,  # step 3 is on disk before the kill at step 5
                      "deterministic_reductions": True},  # the batch-shard sum in one order on any host split
            "mesh": {"data": 2, "fsdp": 2, "tensor": 2}}
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
    return env


def _pretrain(config: Path, env: dict):
    return subprocess.Popen([sys.executable, "-m", "grn_jax.cli", "pretrain", "--config", str(config)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_hosts(config: Path, fault: str = "") -> list:
    port = _free_port()
    procs = [_pretrain(config, _env(4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                    JAX_PROCESS_ID=str(i), **({FAULT_ENV: fault} if fault else {})))
             for i in range(2)]
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=600)
        out.append((p.returncode, text))
    return out


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r.get("kind") == "train"}


@pytest.mark.slow
def test_two_hosts_killed_and_resumed_match_one_host(tmp_path):
    shards = make_shards(tmp_path / "shards")
    one = tmp_path / "one"
    ref = _pretrain(_config(shards, one), _env(8))
    text, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, text[-3000:]
    want = _losses(one)
    assert sorted(want) == list(range(STEPS))

    two = tmp_path / "two"
    config = _config(shards, two)
    killed = _two_hosts(config, fault="5:KILL")  # both die after step 5; the newest checkpoint is step 3
    assert all(rc == -9 for rc, _ in killed), [t[-2000:] for _, t in killed]
    before = _losses(two)
    assert sorted(before) == list(range(5))
    resumed = _two_hosts(config)
    assert all(rc == 0 for rc, _ in resumed), [t[-3000:] for _, t in resumed]
    assert all("resumed from checkpoint step 3" in text for _, text in resumed)  # both hosts, own data state
    got = _losses(two)
    assert sorted(got) == list(range(STEPS))
    # exact resume: steps 3 and 4 retrained from the checkpoint repeat the killed run bit for bit
    assert [got[s] for s in (3, 4)] == [before[s] for s in (3, 4)]
    # the same global batches as one process reads (contiguous host slices), the gradients and metrics
    # summed over the batch shards in shard order whatever the host split: bit for bit
    assert [got[s] for s in range(STEPS)] == [want[s] for s in range(STEPS)], (got, want)
