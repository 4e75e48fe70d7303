"""Orbax checkpoints holding everything needed to resume exactly.

Each checkpoint step holds four items: the train state (sharded arrays), the
data-iterator state, the resolved run config and the vocabulary (all JSON; no
pickle anywhere). Saves are asynchronous; the last `keep_last` steps and the
`keep_best` steps with the lowest validation loss are kept.

Integrity: once a save has finalised, a background thread writes
`grn_jax_integrity.json` (SHA-256 of every file) into the step directory.
Restoring verifies it: a checkpoint whose files changed is refused with
`CheckpointError`; one without the record (the process died before the save
completed) is reported and skipped by `latest_valid_step`; `restore_latest`
(what a resuming run uses) restores and seals the newest such step, or deletes
it when it cannot be restored. Arrays are restored
directly into the shardings of the *current* mesh, which may differ from the
mesh that saved them.

`directory` may be a URL (`gs://bucket/run/checkpoints`, any scheme `etils.epath`
knows): every file operation then goes through `etils.epath` (which orbax uses
too), never `pathlib`; local paths keep `pathlib` and `os.replace`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from grn_jax._io import is_url

INTEGRITY_FILE = "grn_jax_integrity.json"
# Fault injection for tests: the step whose seal is never written (SIGKILL right after orbax commits it).
FAULT_SEAL_ENV = "GRN_JAX_FAULT_BEFORE_SEAL"


class _NoMetricsWarning(logging.Filter):
    """Orbax warns on every save without metrics; most of ours have none by design (no validation that step)."""

    def filter(self, record):
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMetricsWarning())
ITEMS = ("state", "data", "config", "vocab")


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, partial or incompatible; the message says which step and why."""


@dataclasses.dataclass
class Restored:
    step: int
    state: Any
    data_state: dict
    config: dict
    vocab: Any


def checkpoint_path(directory: str | os.PathLike):
    """A local path as an absolute `pathlib.Path`; a URL as an `etils.epath.Path` (no pathlib string handling)."""
    if not is_url(directory):
        return Path(directory).absolute()
    from etils import epath

    url = os.fspath(directory)
    try:
        path = epath.Path(url)
    except KeyError:  # epath has no path class registered for this scheme
        raise ValueError(f"train.checkpoint_dir {url!r}: etils.epath has no backend for "
                         f"{url.split('://')[0]}:// (it ships gs://, s3://, az://, hf://); use one of those or a "
                         f"local path") from None
    _check_orbax_can_write_arrays(url)
    return path


def _check_orbax_can_write_arrays(url: str) -> None:
    """Fail at start, not at the first save, where orbax's tensorstore layer has no driver for the URL.

    orbax 0.12 maps gs:// to tensorstore's GCS driver and anything else to its file driver, which
    refuses a URL (s3:// included). The check uses orbax's own spec builder; if a later orbax moves
    it, the check is skipped and orbax reports the problem at the first save.
    """
    try:
        from orbax.checkpoint._src.serialization.tensorstore_utils import _build_ocdbt_kvstore_tspec
    except ImportError:
        return
    try:
        _build_ocdbt_kvstore_tspec(url, "probe")
    except ValueError as e:
        raise ValueError(f"train.checkpoint_dir {url!r}: orbax {ocp.__version__} cannot write arrays there "
                         f"({e}); use gs://, or a local or mounted path") from None


def _all_files(directory) -> list:
    """Every file under `directory` (pathlib or epath) by listing each folder (epath refuses `**` globs on
    object stores)."""
    files = []
    for child in directory.iterdir():
        if child.is_dir():
            files.extend(_all_files(child))
        else:
            files.append(child)
    return files


def _hash_files(step_dir) -> dict:
    digests = {}
    for path in sorted(p for p in _all_files(step_dir) if p.name != INTEGRITY_FILE):
        h, n = hashlib.sha256(), 0
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                n += len(chunk)
        digests[str(path.relative_to(step_dir))] = {"sha256": h.hexdigest(), "bytes": n}  # the bytes hashed
    return digests


class Checkpointer:
    """Save/restore train state + data-iterator state + config + vocabulary under `directory` (a path or URL)."""

    def __init__(self, directory: str | os.PathLike, *, every: int, keep_last: int = 2, keep_best: int = 1,
                 async_save: bool = True):
        self.directory = checkpoint_path(directory)
        self.every = every
        policies = [ocp.checkpoint_managers.LatestN(n=keep_last)]
        if keep_best > 0:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m["val_loss"], reverse=True, n=keep_best,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=lambda m: m["val_loss"],  # makes orbax record metrics; ranking is the policy above
            best_mode="min",
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # half-written saves of a killed run are removed at restart
            create=True,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self._integrity_threads: list[threading.Thread] = []
        self._write_missing_integrity_for = set()

    # ----------------------------------------------------------------- save
    def save(self, step: int, state: Any, *, data_state: dict, config: dict, vocab: Any,
             metrics: Optional[dict] = None, force: bool = False) -> bool:
        """Start an asynchronous save of `step` (if due, or `force`); True if a save started."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config),
            vocab=ocp.args.JsonSave({"vocab": vocab}),
        )
        started = self._mngr.save(step, args=args, metrics=metrics, force=force)
        if started:
            t = threading.Thread(target=self._seal, args=(step,), name=f"ckpt-integrity-{step}", daemon=True)
            t.start()
            self._integrity_threads.append(t)
        return started

    def _seal(self, step: int) -> None:
        self._mngr.wait_until_finished()
        if os.environ.get(FAULT_SEAL_ENV) == str(step):  # tests: die after orbax committed, before the seal
            os.kill(os.getpid(), signal.SIGKILL)
        self._write_seal(step)

    def _write_seal(self, step: int) -> None:
        if jax.process_index() != 0:
            return
        step_dir = self.directory / str(step)
        if not step_dir.is_dir():  # already garbage-collected by the preservation policy
            return
        record = {"step": step, "files": _hash_files(step_dir)}
        tmp = step_dir / (INTEGRITY_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        # pathlib's replace is os.replace (atomic); epath's on GCS is copy + delete (never a half-written object)
        tmp.replace(step_dir / INTEGRITY_FILE)

    def wait(self) -> None:
        """Block until every started save is finalised and sealed."""
        self._mngr.wait_until_finished()
        for t in self._integrity_threads:
            t.join()
        self._integrity_threads = [t for t in self._integrity_threads if t.is_alive()]

    def close(self) -> None:
        self.wait()
        self._mngr.close()

    # -------------------------------------------------------------- inspect
    def all_steps(self) -> list[int]:
        self._mngr.reload()
        return sorted(self._mngr.all_steps())

    def best_step(self) -> Optional[int]:
        """The kept step with the lowest validation loss (None if none has one)."""
        best = None
        for step in self.all_steps():
            m = self.metrics(step)
            if m and "val_loss" in m and (best is None or m["val_loss"] < best[1]):
                best = (step, m["val_loss"])
        return None if best is None else best[0]

    def metrics(self, step: int) -> Optional[dict]:
        """The metrics saved with `step` (e.g. {"val_loss": ...}), or None."""
        return self._mngr.metrics(step) or None

    def verify(self, step: int) -> None:
        """Raise CheckpointError unless step `step` is complete and byte-identical to what was saved."""
        step_dir = self.directory / str(step)
        record_path = step_dir / INTEGRITY_FILE
        if not step_dir.is_dir():
            raise CheckpointError(f"checkpoint step {step}: no directory {step_dir}")
        if not record_path.is_file():
            raise CheckpointError(
                f"checkpoint step {step} at {step_dir} is partial: it has no {INTEGRITY_FILE} (the process "
                f"stopped before the save completed); it will not be loaded")
        try:
            recorded = json.loads(record_path.read_text())["files"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint step {step}: unreadable {record_path} ({e})") from e
        actual = _hash_files(step_dir)
        missing = sorted(set(recorded) - set(actual))
        changed = sorted(k for k in recorded if k in actual and actual[k] != recorded[k])
        extra = sorted(set(actual) - set(recorded))
        if missing or changed or extra:
            raise CheckpointError(
                f"checkpoint step {step} at {step_dir} is corrupt: {len(missing)} file(s) missing "
                f"{missing[:3]}, {len(changed)} changed {changed[:3]}, {len(extra)} unexpected {extra[:3]}; "
                f"refusing to load it. Delete {step_dir} to resume from an earlier checkpoint.")

    def latest_valid_step(self, report=print) -> Optional[int]:
        """The newest complete checkpoint; partial ones are reported and skipped, corrupt ones raise."""
        for step in reversed(self.all_steps()):
            if not (self.directory / str(step) / INTEGRITY_FILE).is_file():
                report(f"checkpoint step {step} is partial (no {INTEGRITY_FILE}: the run stopped before the "
                       f"save completed); skipping it")
                continue
            self.verify(step)
            return step
        return None

    def restore_latest(self, abstract_state: Any, report=print) -> Optional[Restored]:
        """Restore the newest checkpoint to resume from (None if there is none).

        A sealed step is verified (corrupt ones raise). A step orbax committed but
        that has no seal (the process died between the two) is restored without the
        check -- orbax renames a step into place only once all its files are written
        -- and sealed once that restore succeeds; if it cannot be restored it is
        deleted (the rerun trains and saves it again) and the next older step is tried.
        Without this, the rerun would retrain that step and find it already saved.
        """
        for step in reversed(self.all_steps()):
            if (self.directory / str(step) / INTEGRITY_FILE).is_file():
                return self.restore(step, abstract_state)
            try:
                restored = self._restore_items(step, abstract_state)
            except CheckpointError as e:
                report(f"checkpoint step {step} was committed but never sealed and cannot be restored ({e}); "
                       f"deleting it so the run can save that step again")
                self._mngr.delete(step)
                continue
            self._write_seal(step)
            report(f"checkpoint step {step} was committed but never sealed (the run stopped in between); it "
                   f"restored completely, so it is now sealed")
            return restored
        return None

    # -------------------------------------------------------------- restore
    def restore(self, step: int, abstract_state: Any) -> Restored:
        """Restore `step` into the layout of `abstract_state` (ShapeDtypeStructs with shardings)."""
        self.verify(step)
        return self._restore_items(step, abstract_state)

    def _restore_items(self, step: int, abstract_state: Any) -> Restored:
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
            vocab=ocp.args.JsonRestore(),
        )
        try:
            out = self._mngr.restore(step, args=args)
        except Exception as e:  # orbax raises many types; name the step and keep the cause
            raise CheckpointError(f"checkpoint step {step} at {self.directory / str(step)} could not be "
                                  f"restored into the current state layout: {type(e).__name__}: {e}") from e
        return Restored(step=step, state=out["state"], data_state=out["data"], config=out["config"],
                        vocab=out["vocab"]["vocab"])
