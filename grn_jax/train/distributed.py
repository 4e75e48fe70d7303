"""Multi-host start-up: `jax.distributed.initialize()` when a cluster environment is present.

JAX auto-detects SLURM, Open MPI, Cloud TPU and Kubernetes (JobSet) clusters;
for a hand-rolled launch set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID. With none of these, the run is single-process and nothing is
initialised.
"""

from __future__ import annotations

import json
import os

import jax

_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_CLUSTER_HINTS = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "JOBSET_NAME")

_initialised = False


def cluster_detected(environ=os.environ) -> bool:
    """True when the environment describes a multi-process launch."""
    if all(k in environ for k in _EXPLICIT):
        return True
    if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return False  # an interactive one-task SLURM allocation is a single process
    return any(k in environ for k in _CLUSTER_HINTS)


def maybe_initialize(environ=os.environ) -> bool:
    """Initialise jax.distributed once if a cluster is detected; returns whether it did."""
    global _initialised
    if _initialised or not cluster_detected(environ):
        return _initialised
    if all(k in environ for k in _EXPLICIT):
        jax.distributed.initialize(coordinator_address=environ["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
    _initialised = True
    return True


def gather_process_states(state: dict) -> dict:
    """Every process's JSON-able data-iterator state, on every process: {"per_process": [state_0, ...]}.

    Each host reads its own shard of the cells, so an exact multi-host resume
    needs every host's position, not only the primary's (orbax writes JSON
    items from process 0 alone). A collective: all processes call it together.
    """
    if jax.process_count() == 1:
        return {"per_process": [state]}
    import numpy as np
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(state, sort_keys=True).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(raw.size))).reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[: raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)
    return {"per_process": [json.loads(bytes(rows[i, : int(n)]).decode()) for i, n in enumerate(sizes)]}


def own_process_state(saved: dict) -> dict:
    """This process's entry of `gather_process_states` output (a plain single-host state passes through)."""
    if "per_process" not in saved:  # saved by one process (or before states were gathered)
        if jax.process_count() > 1:
            raise ValueError(f"the checkpoint holds one data-iterator state (saved by a single process) but this "
                             f"run has {jax.process_count()} processes; resume it with one process")
        return saved
    states = saved["per_process"]
    if len(states) != jax.process_count():
        raise ValueError(f"the checkpoint holds the data-iterator states of {len(states)} process(es) but this "
                         f"run has {jax.process_count()}; resume with {len(states)} processes (each host's data "
                         f"shard depends on the process count)")
    return states[jax.process_index()]
