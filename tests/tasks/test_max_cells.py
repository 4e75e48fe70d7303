"""`grn-jax eval ... --max-cells N`: a seeded random sample of cells, recorded in the result."""

import anndata
import numpy as np
import pandas as pd
import pytest

from grn_jax.cli import build_parser
from grn_jax.tasks import TASKS
from grn_jax.tasks.results import TaskResult
from grn_jax.tasks.run import run_eval, subsample_cells


def _adata(n=50):
    return anndata.AnnData(np.arange(n * 3, dtype=np.float32).reshape(n, 3),
                           obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))


def test_subsample_is_seeded_ordered_and_bounded():
    a = _adata()
    s1, s2, s3 = subsample_cells(a, 10, seed=0), subsample_cells(a, 10, seed=0), subsample_cells(a, 10, seed=1)
    assert s1.n_obs == 10 and list(s1.obs_names) == list(s2.obs_names) != list(s3.obs_names)
    rows = [int(n[1:]) for n in s1.obs_names]
    assert rows == sorted(rows) and len(set(rows)) == 10
    np.testing.assert_array_equal(s1.X, a.X[rows])
    assert subsample_cells(a, 500).n_obs == 50
    with pytest.raises(ValueError, match="max_cells"):
        subsample_cells(a, 0)


def test_run_eval_samples_for_tasks_without_their_own_max_cells(tmp_path, monkeypatch):
    seen = {}

    def fake(*, data, seed=0, log=print):
        seen["n"] = data.n_obs
        return TaskResult("fake", {}, {}, {"seed": seed})

    def own(*, data, max_cells=None, log=print):
        seen["own"] = (data.n_obs, max_cells)
        return TaskResult("own", {}, {}, {})

    monkeypatch.setitem(TASKS, "fake", fake)
    monkeypatch.setitem(TASKS, "own", own)
    result, _ = run_eval("fake", tmp_path, data=_adata(), seed=3, max_cells=7, log=lambda m: None)
    assert seen["n"] == 7 and result.settings["max_cells"] == 7
    assert result.counts["max_cells_sample"] == {"cells_evaluated": 7, "cells_in_data": 50}
    run_eval("own", tmp_path, data=_adata(), max_cells=7, log=lambda m: None)
    assert seen["own"] == (50, 7)  # a task that samples itself gets the bound, not a sampled AnnData
    run_eval("fake", tmp_path, data=_adata(), log=lambda m: None)
    assert seen["n"] == 50


@pytest.mark.parametrize("task", ["annotation", "probe", "reverse_perturbation", "perturbation_response",
                                  "attention", "edge_prediction"])
def test_every_eval_task_takes_max_cells(task):
    extra = ["--label-key", "y"] if task == "annotation" else []
    args = build_parser().parse_args(["eval", task, "x.h5ad", "--checkpoint", "c", "--out", "o", "--max-cells", "9",
                                      *extra])
    assert args.max_cells == 9
