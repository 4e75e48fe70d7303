"""Controls every cell-level evaluation carries, and the rules that keep it honest.

- `random_init_model(pre)`: the same architecture, vocabulary and tokenisation as
  the checkpoint with its parameters exactly at initialisation — the model's init
  re-run with the run's `train.seed` as pretraining runs it (`grn_jax.train.model_fns`
  under `jax.jit`). Scored beside `grn_jax` as the `random_init` row: what the
  architecture and tokenisation give before any training.
- `pretraining_cells(pre)`: the names of the cells the run trained on (the prepared
  shards' `cells.csv` and the run's seeded train/validation split, the same
  `grn_jax.train.data.split_cells` pretraining used), so evaluations score only cells
  pretraining never saw (`unseen_mask`).
- `check_label_free_graph(graph, where)`: a cell's graph must not be chosen by its
  label: cell-type networks only through GREmLN's kNN graph integration
  (`GraphSpec.reference`), or one pooled network for every cell.
- `trivial_predictions`: the `majority` (always the most common training class) and
  `chance` (a uniform random guess over the training classes) rows of a classification table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Optional

import numpy as np

from grn_jax.inference.checkpoint import Pretrained
from grn_jax.inference.graph_sources import GraphSpec

RANDOM_INIT = "random_init"
TRIVIAL = ("majority", "chance")


def run_seed(pre: Pretrained) -> int:
    """The `train.seed` the checkpoint's run initialised its parameters with."""
    seed = (pre.run_config.get("train") or {}).get("seed")
    if not isinstance(seed, int):
        raise ValueError(f"checkpoint {pre.run_dir}: its saved run config has no integer train.seed ({seed!r}); "
                         "the random_init control cannot repeat the run's initialisation")
    return seed


@functools.lru_cache(maxsize=8)
def _jitted_init(model_config):
    import flax.linen as nn
    import jax

    from grn_jax.train.model_fns import model_fns

    init_params = model_fns(model_config).init_params
    return jax.jit(lambda r: nn.unbox(init_params(r)))  # one compile per model config, any seed


def random_init_params(pre: Pretrained):
    """The parameters the run of `pre` started from: its model's init under jit with key(train.seed)."""
    import jax

    seed = run_seed(pre)
    try:
        init = _jitted_init(pre.model_config)
    except TypeError:  # a config holding an unhashable value: compile without the cache
        init = _jitted_init.__wrapped__(pre.model_config)
    return jax.device_get(init(jax.random.key(seed)))


def random_init_model(pre: Pretrained) -> Pretrained:
    """`pre` with its parameters replaced by the run's initialisation (step 0): the `random_init` control."""
    seed = run_seed(pre)
    return dataclasses.replace(pre, params=random_init_params(pre), step=0, metrics=None,
                               checkpoint_hash=f"random_init(seed={seed}) of {pre.checkpoint_hash}")


@dataclasses.dataclass(frozen=True)
class PretrainingCells:
    """Names of the cells a run trained on (`train`) and validated on (`val`), and where they came from."""

    train: np.ndarray
    val: np.ndarray
    shards: str


def pretraining_cells(pre: Pretrained) -> PretrainingCells:
    """Which cells `pre`'s run trained on: its shards' cells.csv, split as `pretrain` split them.

    Raises ValueError when that cannot be known (the shards moved, were re-prepared,
    or were made before cells.csv existed): then evaluations cannot prove that
    they score only unseen cells.
    """
    from grn_jax.data.shards import MANIFEST
    from grn_jax.train.data import split_cells

    data, train = pre.run_config.get("data") or {}, pre.run_config.get("train") or {}
    folder = Path(str(data.get("shards") or ""))
    fix = ("restore the run's shards at that path, or pass pretraining_cells=[names] listing the cells it "
           "trained on")
    if not (folder / MANIFEST).is_file() or not (folder / "cells.csv").is_file():
        raise ValueError(f"checkpoint {pre.run_dir}: its training shards {str(folder)!r} (manifest.json, "
                         f"cells.csv) are not there, so the cells pretraining saw are unknown; {fix}")
    manifest = json.loads((folder / MANIFEST).read_text())
    want = pre.tokenization.get("content_hash")
    if want is not None and manifest.get("content_hash") != want:
        raise ValueError(f"checkpoint {pre.run_dir}: the shards at {folder} have content hash "
                         f"{str(manifest.get('content_hash'))[:12]}..., the run trained on {str(want)[:12]}...; "
                         f"they were re-prepared since; {fix}")
    import pandas as pd

    table = pd.read_csv(folder / "cells.csv", keep_default_na=False, dtype={"cell_name": str})
    names = table["cell_name"].to_numpy().astype(str)
    rows = np.concatenate([np.load(folder / s["name"] / "cell_index.npy", mmap_mode="r")
                           for s in manifest["shards"]] or [np.zeros(0, np.int64)])
    if len(rows) != len(names) or not np.array_equal(rows, table["dataset_row"].to_numpy()):
        raise ValueError(f"checkpoint {pre.run_dir}: {folder}/cells.csv ({len(names)} cells) does not list the "
                         f"shards' cells ({len(rows)}) in order; {fix}")
    tr, va = split_cells(len(names), float(train.get("val_fraction", 0.0)))
    return PretrainingCells(train=names[tr], val=names[va], shards=str(folder))


def unseen_mask(pre: Pretrained, cell_names, pretraining: Optional[object] = None) -> tuple[np.ndarray, dict]:
    """(bool mask of `cell_names` pretraining never trained on, report).

    `pretraining`: the names of the cells it trained on, if known to the caller
    (e.g. the run's shards are gone); default: read them with `pretraining_cells`.
    Cells are matched by name (obs_names), so a name the run trained on is left out
    even if the evaluation data is another file.
    """
    if pretraining is None:
        seen = pretraining_cells(pre)
        train, source = seen.train, f"{seen.shards}/cells.csv (train split, {len(seen.val)} validation cells)"
    else:
        train, source = np.asarray(list(pretraining), str), "given by the caller"
    keep = ~np.isin(np.asarray(cell_names).astype(str), train)
    report = {"pretraining_cells": int(len(train)), "cells_seen_in_pretraining": int((~keep).sum()),
              "source": source}
    return keep, report


def check_label_free_graph(graph: GraphSpec, where: str) -> None:
    """Refuse a graph that is chosen per cell by an obs column (the evaluated cell's label)."""
    if graph.cell_type_column:
        raise ValueError(f"{where}: graph.cell_type_column={graph.cell_type_column!r} picks each evaluated cell's "
                         "network by its label (a leak); pass the networks folder with reference=<the training "
                         ".h5ad> (GREmLN kNN graph integration, --reference) or one pooled network (--network)")


def check_reference_disjoint(graph: GraphSpec, cell_names, where: str) -> None:
    """With kNN graph integration, no evaluated cell may be a reference cell (its own label would vote)."""
    if not graph.reference:
        return
    import anndata

    ref = anndata.read_h5ad(graph.reference, backed="r")
    try:
        both = np.intersect1d(np.asarray(ref.obs_names).astype(str), np.asarray(cell_names).astype(str))
    finally:
        ref.file.close()
    if both.size:
        raise ValueError(f"{where}: {both.size} evaluated cells (e.g. {both[:3].tolist()}) are also cells of the "
                         f"graph reference {graph.reference!r}; their own labels would choose their graphs. Pass "
                         "as reference only the pretraining cells, and evaluate the others")


def trivial_predictions(y_train, n_test: int, seed: int) -> dict:
    """{"majority": [n_test], "chance": [n_test]} predictions of the trivial classifiers (sklearn Dummy*)."""
    from sklearn.dummy import DummyClassifier

    x_tr, x_te = np.zeros((len(y_train), 1)), np.zeros((n_test, 1))
    majority = DummyClassifier(strategy="most_frequent").fit(x_tr, y_train).predict(x_te)
    chance = DummyClassifier(strategy="uniform", random_state=seed).fit(x_tr, y_train).predict(x_te)
    return {"majority": majority, "chance": chance}
