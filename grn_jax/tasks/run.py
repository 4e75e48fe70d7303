"""`run_eval(task, out_dir, **kwargs)`: one evaluation, its result written as JSON + markdown (`grn-jax eval`)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from grn_jax.tasks.results import TaskResult


def subsample_cells(adata, max_cells: int, seed: int = 0):
    """At most `max_cells` cells of `adata`, drawn without replacement (seeded), kept in file order."""
    if max_cells < 1:
        raise ValueError(f"max_cells must be >= 1, got {max_cells}")
    if adata.n_obs <= max_cells:
        return adata
    pick = np.sort(np.random.default_rng([seed, 2]).choice(adata.n_obs, max_cells, replace=False))
    return adata[pick].copy()


def run_eval(task: str, out_dir, *, log: Callable[[str], None] = print, max_cells: Optional[int] = None,
             **kwargs) -> tuple[TaskResult, dict]:
    """Run `grn_jax.tasks.TASKS[task](**kwargs)` and write `<out_dir>/<task>.json|.md`; (result, paths).

    max_cells: evaluate a seeded random sample of at most this many cells (a task with its own
    `max_cells`, e.g. edge prediction, samples itself); recorded in the result's counts and settings.
    """
    from grn_jax.tasks import TASKS

    if task not in TASKS:
        raise ValueError(f"unknown evaluation task {task!r}; choose one of {sorted(TASKS)}")
    from grn_jax._io import check_out_dir

    check_out_dir(out_dir)  # an existing file at --out fails now, not after the evaluation
    fn = TASKS[task]
    sampled = None
    if max_cells is not None:
        if "max_cells" in inspect.signature(fn).parameters:
            kwargs["max_cells"] = max_cells
        else:
            from grn_jax.tasks.features import read_data

            full = read_data(kwargs["data"])
            kwargs["data"] = subsample_cells(full, max_cells, seed=kwargs.get("seed", 0))
            sampled = {"cells_evaluated": int(kwargs["data"].n_obs), "cells_in_data": int(full.n_obs)}
            log(f"eval {task}: {sampled['cells_evaluated']} of {sampled['cells_in_data']} cells, a random sample "
                f"(--max-cells {max_cells})")
    result = fn(log=log, **kwargs)
    if sampled is not None:
        result.settings["max_cells"] = max_cells
        result.counts["max_cells_sample"] = sampled
    paths = result.write(Path(out_dir))
    log(f"eval {task}: wrote {paths['json']} and {paths['markdown']}")
    return result, paths
