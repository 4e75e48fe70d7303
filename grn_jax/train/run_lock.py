"""One pretraining run per run directory at a time: an advisory lock on `<run_dir>/run.lock`.

Two runs writing one directory would interleave `metrics.jsonl`, race on checkpoint
steps and leave a run nobody can resume exactly, so the second one fails at once with
the holder's pid and host. The lock is an `flock` on the file: the kernel releases it
when the holder exits, however it exits (SIGKILL included), so a lock left by a dead
run is simply taken over (and reported). The file records who holds it; it is
emptied, not deleted, on release (deleting it would let two runs lock different files).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Callable, Iterator

LOCK_FILE = "run.lock"


class RunLockedError(ValueError):
    """Another live process holds the run directory's lock."""


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        info = json.loads(raw.decode()) if raw.strip() else {}
    except ValueError:
        info = {"pid": "unknown", "note": raw[:80].decode(errors="replace")}
    return info if isinstance(info, dict) else {}


@contextlib.contextmanager
def hold_run_lock(run_dir: str | os.PathLike, *, log: Callable[[str], None] = print,
                  enabled: bool = True) -> Iterator[None]:
    """Hold `run_dir`'s lock for the block; RunLockedError if a live process holds it.

    `enabled=False` (hosts other than process 0 of a multi-host run) does nothing.
    """
    if not enabled:
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = _holder(fd)
            raise RunLockedError(
                f"train.run_dir {Path(run_dir)} is in use by another pretrain run (pid {h.get('pid', 'unknown')} on "
                f"{h.get('host', 'unknown host')}, started {h.get('started', '?')}); wait for it to finish, stop it, "
                f"or use another train.run_dir") from None
        stale = _holder(fd)
        if stale:
            log(f"run directory lock: taking over the stale lock of pid {stale.get('pid')} on {stale.get('host')} "
                f"(started {stale.get('started', '?')}), which exited without releasing it")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released cleanly: nothing stale for the next run to report
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
