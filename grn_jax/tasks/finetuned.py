"""Predictions of a fine-tuned classifier for the reverse-perturbation task.

`finetune_and_predict` trains `grn_jax.inference.finetune` (classification head,
encoder trained, mean pooling, no validation split: the caller's test cells are
never seen) on the training cells only, restores the final parameters and scores
the test cells: the fine-tuned encoder embeds them through the same `embed` path
as frozen evaluation, and the head maps the pooled embedding to class scores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import anndata
import jax
import numpy as np

from grn_jax.inference.checkpoint import Pretrained
from grn_jax.inference.graph_sources import GraphSpec
from grn_jax.tasks.features import cell_embeddings

LABEL_COLUMN = "_grn_jax_eval_label"


def restore_params(out_dir: Path, step: int):
    """The {"encoder", "head"} parameters of fine-tuning step `step` in `out_dir` (host arrays)."""
    import orbax.checkpoint as ocp

    path = (Path(out_dir) / "checkpoints" / str(step) / "state").absolute()
    if not path.is_dir():
        raise ValueError(f"fine-tuning left no checkpoint at {path}")
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = getattr(meta, "item_metadata", meta)
        cpu = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), tree)
        state = ckptr.restore(path, target)
    params = state["params"]
    return params["encoder"], params["head"]


def finetune_and_predict(pre: Pretrained, adata: anndata.AnnData, labels: np.ndarray, train_idx: np.ndarray,
                         test_idx: np.ndarray, *, graph: GraphSpec, out_dir: Path, steps: int, batch_size: int,
                         seed: int, log: Callable[[str], None] = print):
    """(predicted labels, class scores [test, C], classes) of a classifier fine-tuned on `train_idx` only."""
    from grn_jax.inference.finetune import FinetuneConfig, finetune
    from grn_jax.models import ClassificationHead

    if np.intersect1d(train_idx, test_idx).size:
        raise ValueError("finetune_and_predict: train and test cells overlap")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        # finetune resumes from (and reuses the shards of) an existing folder, whose training cells may be
        # another split's test cells: refuse rather than leak
        raise ValueError(f"fine-tuning folder {out_dir} is not empty; pass a new --finetune-dir (each evaluation "
                         "fine-tunes from scratch on its own training cells)")
    train = adata[np.asarray(train_idx)].copy()
    train.obs[LABEL_COLUMN] = np.asarray(labels)[train_idx]
    cfg = FinetuneConfig(label_key=LABEL_COLUMN, out_dir=str(out_dir), pooling="mean", steps=steps,
                         batch_size=min(batch_size, len(train_idx)), val_fraction=0.0, eval_every=0,
                         checkpoint_every=steps, seed=seed, progress=False)
    res = finetune(pre, train, cfg, graph=graph, log=log)
    encoder, head_params = restore_params(Path(res.out_dir), res.final_step)
    tuned = dataclasses.replace(pre, params=encoder)
    emb, ok = cell_embeddings(tuned, adata[np.asarray(test_idx)].copy(), graph=graph, pooling="mean")
    if not ok.all():
        raise ValueError(f"finetune_and_predict: {int((~ok).sum())} test cells have no embedding; filter them first")
    head = ClassificationHead(len(res.classes))
    logits = np.asarray(head.apply({"params": head_params}, emb, deterministic=True), np.float64)
    scores = np.exp(logits - logits.max(1, keepdims=True))
    scores /= scores.sum(1, keepdims=True)
    classes = np.asarray(res.classes)
    return classes[scores.argmax(1)], scores, classes
