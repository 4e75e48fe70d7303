"""Provenance of a run: code version, JAX, devices, mesh and data identity, written to the run directory."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

import jax

from grn_jax.machine import cpu_model


def git_commit() -> str:
    """The git commit of the grn_jax source tree, or 'unknown (<reason>)'."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({type(e).__name__})"
    if out.returncode != 0:
        return "unknown (not a git checkout)"
    commit = out.stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return commit + ("+dirty" if dirty else "")




def describe_devices() -> dict:
    devs = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devs[0].device_kind,
        "n_devices": len(devs),
        "n_local_devices": jax.local_device_count(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
    }


def provenance(mesh_shape: dict, data_identity: dict, n_params: int) -> dict:
    import flax
    import optax
    import orbax.checkpoint as ocp

    import grn_jax

    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "grn_jax_version": grn_jax.__version__,
        "git_commit": git_commit(),
        "jax_version": jax.__version__,
        "flax_version": flax.__version__,
        "optax_version": optax.__version__,
        "orbax_version": getattr(ocp, "__version__", "unknown"),
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "devices": describe_devices(),
        "mesh": mesh_shape,
        "data": data_identity,
        "n_params": int(n_params),
    }
