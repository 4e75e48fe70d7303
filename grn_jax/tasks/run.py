"""`run_eval(task, out_dir, **kwargs)`: one evaluation, its result written as JSON + markdown (`grn-jax eval`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from grn_jax.tasks.results import TaskResult


def run_eval(task: str, out_dir, *, log: Callable[[str], None] = print, **kwargs) -> tuple[TaskResult, dict]:
    """Run `grn_jax.tasks.TASKS[task](**kwargs)` and write `<out_dir>/<task>.json|.md`; (result, paths)."""
    from grn_jax.tasks import TASKS

    if task not in TASKS:
        raise ValueError(f"unknown evaluation task {task!r}; choose one of {sorted(TASKS)}")
    from grn_jax._io import check_out_dir

    check_out_dir(out_dir)  # an existing file at --out fails now, not after the evaluation
    result = TASKS[task](log=log, **kwargs)
    paths = result.write(Path(out_dir))
    log(f"eval {task}: wrote {paths['json']} and {paths['markdown']}")
    return result, paths
