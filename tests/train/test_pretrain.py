"""End to end on tiny prepared shards: exact resume after SIGKILL, SIGTERM saves, NaN guard, run directory.

The reference is one uninterrupted run; the interrupted runs must reproduce
its per-step losses bit for bit from their restore point on.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from grn_jax.config import build_run_config
from grn_jax.train.checkpoint import Checkpointer
from grn_jax.train.loop import FAULT_ENV, NonFiniteLossError, pretrain
from grn_jax.train.metrics import read_metrics
from tests.train.shards import N_BINS, make_shards

REPO = Path(__file__).resolve().parents[2]
STEPS = 10


def _tree(shards, run_dir, **train):
    t = {"run_dir": str(run_dir), "steps": STEPS, "batch_size": 8, "checkpoint_every": 3, "eval_every": 5,
         "eval_batches": 1, "progress": False, "tensorboard": False, "keep_last": 5, "keep_best": 0}
    t.update(train)
    return {"name": "resume-test", "data": {"shards": str(shards)},
            "model": {"preset": "tiny", "n_bins": N_BINS, "d_model": 16, "n_layers": 1, "n_heads": 2,
                      "mlp_dim": 32, "attention": "diffusion"},
            "train": t, "mesh": {"data": 2, "fsdp": 2, "tensor": 2}}


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("shards") / "shards")


@pytest.fixture(scope="module")
def cli(shards, tmp_path_factory):
    """Run `grn-jax pretrain --config <yaml>` in a subprocess; all runs share one XLA compilation cache."""
    cache = tmp_path_factory.mktemp("xla_cache")

    def run(run_dir: Path, fault: str = "", env: dict | None = None):
        cfg_path = run_dir.parent / "run.yaml"
        cfg_path.write_text(yaml.safe_dump(_tree(shards, run_dir)))
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", FAULT_ENV: fault, **(env or {})}
        return subprocess.run([sys.executable, "-m", "grn_jax.cli", "pretrain", "--config", str(cfg_path)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    return run


@pytest.fixture(scope="module")
def reference(cli, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    done = cli(run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"pretrain: {STEPS} steps done (started at 0)" in done.stdout
    losses = _losses(run_dir)
    assert sorted(losses) == list(range(STEPS))
    return run_dir, losses


def test_run_directory_records_everything(reference):
    run_dir, losses = reference
    assert all(np.isfinite(v) for v in losses.values())
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["devices"]["n_devices"] == 8 and prov["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert len(prov["data"]["content_hash"]) == 64 and prov["jax_version"] and prov["git_commit"]
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["model"]["gene_vocab_size"] == 27  # 24 genes + 3 special tokens, from the shards
    val = read_metrics(run_dir, "val")
    assert [v["step"] for v in val] == [5, 10] and all(v["val_masked"] > 0 for v in val)
    ck = Checkpointer(run_dir / "checkpoints", every=3)
    assert ck.all_steps() == [3, 6, 9, 10]
    ck.close()


def test_sigterm_then_sigkill_then_resume_is_bitwise_identical(cli, reference, tmp_path):
    """Same command three times: SIGTERM at step 4 (saves, exits 143), SIGKILL at 7, then to the end."""
    _, ref = reference
    run_dir = tmp_path / "run"
    termed = cli(run_dir, "4:TERM")
    assert termed.returncode == 143, termed.stderr[-3000:]
    assert "SIGTERM: saved checkpoint step 4" in termed.stdout
    ck = Checkpointer(run_dir / "checkpoints", every=3)
    assert ck.latest_valid_step() == 4  # saved and sealed before exit, though 4 is not a multiple of 3
    ck.close()

    killed = cli(run_dir, "7:KILL")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert "resumed from checkpoint step 4" in killed.stdout
    assert sorted(_losses(run_dir)) == list(range(7))  # it really died mid-run, after step index 6

    resumed = cli(run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = [r for r in read_metrics(run_dir, "event") if r["event"] == "resume"][-1]["step"]
    assert start in (4, 6)  # the newest sealed checkpoint before the kill
    after = _losses(run_dir)
    assert sorted(after) == list(range(STEPS))
    for step in range(STEPS):
        assert after[step] == ref[step], f"step {step}: {after[step]!r} != uninterrupted {ref[step]!r}"


@pytest.mark.slow  # two CLI runs (~60 s); the deleted-seal case is fast in test_checkpoint.py
def test_kill_between_the_final_save_and_its_seal_then_rerun_finishes(cli, reference, tmp_path):
    """SIGKILL after orbax committed the last step but before its seal: the rerun used to retrain
    the last steps and fail with "Checkpoint for step 10 already exists"."""
    from grn_jax.inference import load_pretrained
    from grn_jax.train.checkpoint import FAULT_SEAL_ENV, INTEGRITY_FILE

    ref_dir, ref = reference
    run_dir = tmp_path / "run"
    killed = cli(run_dir, env={FAULT_SEAL_ENV: str(STEPS)})
    assert killed.returncode == -9, killed.stderr[-3000:]
    final = run_dir / "checkpoints" / str(STEPS)
    assert final.is_dir() and not (final / INTEGRITY_FILE).exists()
    rerun = cli(run_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"checkpoint step {STEPS} was committed but never sealed" in rerun.stdout
    assert f"pretrain: {STEPS} steps done (started at {STEPS})" in rerun.stdout
    ck = Checkpointer(run_dir / "checkpoints", every=3)
    ck.verify(STEPS)
    ck.close()
    assert _losses(run_dir) == ref
    ours, theirs = load_pretrained(run_dir), load_pretrained(ref_dir)
    assert ours.step == theirs.step == STEPS
    for a, b in zip(jax.tree_util.tree_leaves(ours.params), jax.tree_util.tree_leaves(theirs.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_nan_guard_names_step_and_last_checkpoint(shards, tmp_path):
    tree = _tree(shards, tmp_path / "run", checkpoint_every=1, eval_every=0,
                 optim={"peak_lr": 1e30, "warmup_fraction": 0.0, "clip_norm": None, "weight_decay": 0.0})
    with pytest.raises(NonFiniteLossError, match=r"step (\d+): non-finite .* Last good checkpoint: step \d+ in"):
        pretrain(build_run_config(tree), log=lambda _: None)
    events = read_metrics(tmp_path / "run", "event")
    assert events[-1]["event"] == "non_finite"


def test_fixed_shape_is_the_largest_bucket_pair_any_batch_uses(shards):
    from grn_jax.data.loader import make_loader
    from grn_jax.data.shards import ShardStore
    from grn_jax.train.data import largest_bucket_pair

    store = ShardStore(shards)
    s, e = largest_bucket_pair(store)
    shapes = {(b.tokens.gene_ids.shape[1], b.tokens.graph.senders.shape[1])
              for b in make_loader(store, 1, shuffle=False, num_epochs=1, process_index=0, process_count=1)}
    assert max(x for x, _ in shapes) == s and max(y for _, y in shapes) == e
