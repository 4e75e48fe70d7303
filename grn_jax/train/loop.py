"""`pretrain(config)`: the whole pretraining run, resumable, on any mesh.

Order of business: multi-host init -> the run directory's lock -> data (this host's shard) -> mesh ->
model + sharded state (restored from the newest complete checkpoint in the run
directory if there is one) -> compiled step -> loop. The loop logs every step
to metrics.jsonl, validates periodically, checkpoints every N steps, stops
with `NonFiniteLossError` (naming the step and the last good checkpoint) on a
non-finite loss or gradient, and on SIGTERM saves a checkpoint and returns.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import jax
import numpy as np

from grn_jax.train import distributed
from grn_jax.train import sharding as sh
from grn_jax.train.checkpoint import Checkpointer
from grn_jax.train.metrics import MetricsWriter, truncate_after
from grn_jax.train.optim import make_optimizer
from grn_jax.train.provenance import provenance
from grn_jax.train.run_lock import hold_run_lock
from grn_jax.train.state import abstract_with_shardings, init_sharded_state, state_shardings
from grn_jax.train.step import jit_eval_step, jit_train_step, make_eval_step, make_train_step
from grn_jax.train.trivial import trivial_val_metrics, with_controls

# Fault injection for tests: "STEP" or "STEP:SIGNAL" (KILL, TERM) sends the signal to this process right
# after optimiser step STEP has been applied (and its checkpoint, if due, started).
FAULT_ENV = "GRN_JAX_FAULT_AT_STEP"


def _fault_injection(environ=os.environ) -> tuple[int, int]:
    raw = environ.get(FAULT_ENV, "")
    if not raw:
        return -1, 0
    step, _, name = raw.partition(":")
    try:
        return int(step), int(getattr(signal, "SIG" + (name or "KILL").upper()))
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{FAULT_ENV}={raw!r}: expected STEP or STEP:KILL / STEP:TERM") from e


if TYPE_CHECKING:
    from grn_jax.config import RunConfig


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient; the state was not updated."""


@dataclasses.dataclass
class PretrainResult:
    run_dir: str
    start_step: int          # step the run started (or resumed) from
    final_step: int          # optimiser steps applied when the run stopped
    stopped: str             # "completed" | "sigterm"
    last_checkpoint: Optional[int]
    final_loss: Optional[float]
    val: Optional[dict]


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks after each step (the save happens in the loop)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


def check_batch_layout(cfg: RunConfig, mesh) -> None:
    """The global micro-batch must split evenly over the batch-sharded mesh axes and the hosts."""
    t = cfg.train
    shards = sh.n_batch_shards(mesh)
    if t.micro_batch_size % shards:
        raise ValueError(
            f"train.batch_size: micro-batch {t.micro_batch_size} (= batch_size {t.batch_size} / grad_accum "
            f"{t.grad_accum}) must be divisible by mesh data x fsdp = {shards}; change train.batch_size, "
            f"train.grad_accum or the mesh")
    if t.batch_size % jax.process_count():
        raise ValueError(f"train.batch_size {t.batch_size} must be divisible by the {jax.process_count()} hosts")


def _evaluate(eval_fn, params, val_batches, mesh) -> dict:
    totals = {"loss_sum": 0.0, "n_masked": 0.0, "correct": 0.0}
    for i, local in enumerate(val_batches):
        out = jax.device_get(eval_fn(params, sh.global_batch(local, mesh), np.int32(i)))
        for k in out:
            totals[k] = totals.get(k, 0.0) + float(out[k])
    n = max(totals["n_masked"], 1.0)
    res = {"val_loss": totals["loss_sum"] / n, "val_accuracy": totals["correct"] / n,
           "val_masked": int(totals["n_masked"])}
    if "n_cell_tokens" in totals:  # the cell-embedding objective (every gene's bin from the pooled embedding)
        m = max(totals["n_cell_tokens"], 1.0)
        res.update(val_cell_loss=totals["cell_loss_sum"] / m, val_cell_accuracy=totals["cell_correct"] / m)
    return res


def _write_json(path: Path, obj) -> None:
    if jax.process_index() == 0:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.replace(tmp, path)


def _check_resume_config(saved: dict, current: dict, step: int, log=print) -> None:
    """Refuse to resume a checkpoint made by a different model/objective (the run would not be the same)."""
    for section in ("model",):
        if saved.get(section) != current.get(section):
            raise ValueError(
                f"train.run_dir holds a checkpoint (step {step}) made with a different {section} config:\n"
                f"  checkpoint: {saved.get(section)}\n  now:        {current.get(section)}\n"
                f"use a new train.run_dir, or restore the original config")
    for key in ("batch_size", "grad_accum", "seed", "mask_rate"):
        a, b = saved.get("train", {}).get(key), current.get("train", {}).get(key)
        if a != b:
            raise ValueError(f"train.{key}: the checkpoint in train.run_dir (step {step}) was made with {a}, "
                             f"now {b}; exact resume needs the same value (or use a new train.run_dir)")
    for key in ("steps", "optim"):
        a, b = saved.get("train", {}).get(key), current.get("train", {}).get(key)
        if a != b:
            log(f"note: train.{key} changed since checkpoint step {step} ({a} -> {b}); the learning-rate "
                f"schedule from here on differs from the original run's")
    a, b = (c.get("train", {}).get("deterministic_reductions", False) for c in (saved, current))
    if a != b:
        log(f"note: train.deterministic_reductions changed since checkpoint step {step} ({a} -> {b}); the "
            f"resumed steps sum gradients in another order and will not repeat the original run bit for bit")


def pretrain(cfg: RunConfig, *, log: Callable[[str], None] = print) -> PretrainResult:
    """Run (or resume) pretraining as configured; see the module docstring.

    Holds the run directory's lock (`grn_jax.train.run_lock`) throughout: a second
    run on the same directory fails at once with `RunLockedError` naming this one's pid.
    """
    distributed.maybe_initialize()
    run_dir = Path(cfg.train.run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    with hold_run_lock(run_dir, log=log, enabled=jax.process_index() == 0):
        return _pretrain(cfg, run_dir, log)


def _pretrain(cfg: RunConfig, run_dir: Path, log: Callable[[str], None]) -> PretrainResult:
    from grn_jax.config import dump_run_config, resolve_vocab_size
    from grn_jax.train.model_fns import model_fns
    from grn_jax.models.summary import count_params
    from grn_jax.train.data import open_train_data
    from grn_jax.train.graph_check import check_graphs

    t = cfg.train
    data = open_train_data(cfg, process_index=jax.process_index(), process_count=jax.process_count(), log=log)
    cfg = resolve_vocab_size(cfg, data.vocab_size)
    if cfg.model.n_bins != data.n_bins:
        raise ValueError(f"model.n_bins is {cfg.model.n_bins} but the shards were binned with "
                         f"{data.n_bins} bins; set model.n_bins={data.n_bins}")
    cfg, graph_report = check_graphs(cfg, data, log=log)  # diagnostics; resolves diffusion_beta: auto
    mesh = sh.make_mesh(cfg.mesh)
    check_batch_layout(cfg, mesh)
    model, init_params, apply_fn = model_fns(cfg.model)
    tx = make_optimizer(t)

    rng = jax.random.key(t.seed)
    ckpt = Checkpointer(t.checkpoint_dir or run_dir / "checkpoints", every=t.checkpoint_every,
                        keep_last=t.keep_last, keep_best=t.keep_best, async_save=t.async_checkpoint)
    if t.checkpoint_dir is not None:  # recorded absolute (or as the URL) so inference finds it from run_dir
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, checkpoint_dir=str(ckpt.directory)))
    resolved = {**cfg.to_dict(), "tokenization": data.tokenization}  # read back by grn_jax.inference
    restored = None
    if ckpt.all_steps():
        abstract, shardings, n_unfitted = state_shardings(init_params, tx, mesh, rng)
        restored = ckpt.restore_latest(abstract_with_shardings(abstract, shardings), report=log)
    train_iter = data.train_iterator(batch_size=t.batch_size // jax.process_count(), seed=t.seed)
    if restored is None:
        init = init_sharded_state(init_params, tx, mesh, rng)
        state, shardings, n_unfitted = init.state, init.shardings, init.n_unfitted
        start = 0
    else:
        start = restored.step
        _check_resume_config(restored.config, resolved, start, log)
        if restored.vocab != data.vocab:
            raise ValueError(f"data.shards: the vocabulary of {cfg.data.shards} differs from the one saved in "
                             f"checkpoint step {start}; resume with the data the run was started on")
        state = restored.state
        train_iter.set_state(distributed.own_process_state(restored.data_state))  # this host's position
        dropped = truncate_after(run_dir, start)
        log(f"resumed from checkpoint step {start} in {ckpt.directory} "
            f"({dropped} metric records after it dropped)")
    n_params = count_params(state.params)
    if n_unfitted:
        log(f"sharding: {n_unfitted} parameter dimension(s) not divisible by their mesh axis are replicated")

    if jax.process_index() == 0:
        (run_dir / "config.yaml").write_text(dump_run_config(cfg))
    _write_json(run_dir / "provenance.json",
                provenance(dict(mesh.shape), data.identity, n_params))
    _write_json(run_dir / "graph_diagnostics.json", graph_report)

    train_fn = jit_train_step(make_train_step(apply_fn, data.mask_fn, tx, t), shardings,
                              data.example_batch, mesh)
    eval_fn = jit_eval_step(make_eval_step(apply_fn, data.mask_fn, t), shardings.params, data.example_batch, mesh)
    # validation covers every held-out cell, beside the trivial predictors on the very same masked tokens
    val_batches = data.val_batches(batch_size=t.batch_size // jax.process_count(), n_batches=len(data.val_idx)) \
        if t.eval_every else []
    trivial = trivial_val_metrics(data, val_batches, data.mask_fn, t.seed) if val_batches else {}
    if trivial:
        log(f"validation: {len(data.val_idx)} held-out cells, {trivial['val_trivial_masked']} masked tokens; "
            f"trivial predictors: each gene's most common bin {trivial['val_gene_mode_accuracy']:.4f}, "
            f"majority bin {trivial['val_majority_bin_accuracy']:.4f}")

    writer = MetricsWriter(run_dir, total_steps=t.steps, start_step=start, tensorboard=t.tensorboard,
                           progress=t.progress, log=log)
    writer.write({"kind": "event", "event": "start" if start == 0 else "resume", "step": start,
                  "mesh": dict(mesh.shape), "n_params": n_params, "devices": jax.device_count()})
    fault_step, fault_signal = _fault_injection()

    saved = {"last": start if start else None}

    def save(step, metrics=None, force=False):
        local = train_iter.get_state()  # every host's iterator state, gathered only when a save is due
        due = force or step % t.checkpoint_every == 0
        started = ckpt.save(step, state, data_state=distributed.gather_process_states(local) if due else
                            {"per_process": [local]}, config=resolved,
                            vocab=data.vocab, metrics=metrics, force=force)
        if started:
            saved["last"] = step
        return started

    last_loss, val, stopped, step = None, None, "completed", start
    t_last, cells, tokens, n_since = time.perf_counter(), 0, 0, 0
    try:
        with _SigtermFlag() as sigterm:
            while step < t.steps:
                local = data.agree_on_shape(next(train_iter))
                state, m = train_fn(state, sh.global_batch(local, mesh))
                m = jax.device_get(m)
                if not bool(m["finite"]):
                    ckpt.wait()  # let in-flight saves seal so the message names the true last good one
                    good = ckpt.latest_valid_step(report=log)
                    where = f"step {good} in {ckpt.directory}" if good is not None else "none (no checkpoint yet)"
                    writer.write({"kind": "event", "event": "non_finite", "step": step,
                                  "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"])})
                    raise NonFiniteLossError(
                        f"step {step}: non-finite training signal (loss={float(m['loss'])}, "
                        f"grad_norm={float(m['grad_norm'])}); the update was not applied and nothing was saved. "
                        f"Last good checkpoint: {where}. Lower train.optim.peak_lr or check the data, then "
                        f"rerun to resume from it.")
                last_loss = float(m["loss"])
                rec = {"kind": "train", "step": step, "loss": last_loss, "accuracy": float(m["accuracy"]),
                       "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"]), "n_masked": int(m["n_masked"])}
                if "cell_loss" in m:  # the cell-embedding objective's own terms
                    rec.update(cell_loss=float(m["cell_loss"]), cell_accuracy=float(m["cell_accuracy"]))
                step += 1
                n_cells, n_tokens = data.batch_stats(local)
                cells += n_cells * jax.process_count()
                tokens += n_tokens * jax.process_count()
                n_since += 1
                if step % t.log_every == 0 or step == t.steps:
                    dt = max(time.perf_counter() - t_last, 1e-9)
                    rec.update(cells_per_s=cells / dt, tokens_per_s=tokens / dt)
                    writer.progress(n_since, {"loss": f"{last_loss:.4f}", "cells/s": f"{cells / dt:.0f}",
                                              "tokens/s": f"{tokens / dt:.0f}"})
                    t_last, cells, tokens, n_since = time.perf_counter(), 0, 0, 0
                writer.write(rec)
                metrics = None
                if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
                    val = with_controls(_evaluate(eval_fn, state.params, val_batches, mesh), trivial)
                    writer.write({"kind": "val", "step": step, **val})
                    metrics = {"val_loss": val["val_loss"]}
                if save(step, metrics):
                    writer.write({"kind": "event", "event": "checkpoint", "step": step})
                if step == fault_step:
                    os.kill(os.getpid(), fault_signal)
                if sigterm.raised:
                    stopped = "sigterm"
                    break
            if stopped == "sigterm" or step == t.steps:
                if saved["last"] != step:
                    save(step, force=True)
                ckpt.wait()
                writer.write({"kind": "event", "event": stopped, "step": step})
                if stopped == "sigterm":
                    log(f"SIGTERM: saved checkpoint step {step} in {ckpt.directory}; rerun the same command "
                        f"to resume")
    finally:
        writer.close()
        ckpt.close()
    return PretrainResult(run_dir=str(run_dir), start_step=start, final_step=step, stopped=stopped,
                          last_checkpoint=saved["last"], final_loss=last_loss, val=val)
