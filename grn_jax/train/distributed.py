"""Multi-host start-up: `jax.distributed.initialize()` when a cluster environment is present.

JAX auto-detects SLURM, Open MPI, Cloud TPU and Kubernetes (JobSet) clusters;
for a hand-rolled launch set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID. With none of these, the run is single-process and nothing is
initialised.
"""

from __future__ import annotations

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
