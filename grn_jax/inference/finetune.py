"""`finetune`: a classification head on a pretrained encoder, trained with pretraining's own machinery.

    grn-jax finetune --checkpoint RUN_DIR --task classify --label-key KEY DATA.h5ad --out FT_DIR

The labelled data are tokenised into shards exactly as pretraining tokenised
(the checkpoint's vocabulary and data config, through `grn_jax.data.prepare`),
labels come from `obs[KEY]` (cells without a label are counted and left out),
and training reuses `grn_jax.train` unchanged: the same mesh and logical
sharding rules, `init_sharded_state`, the compiled `make_train_step` /
`make_eval_step` (accumulation, clipping, NaN guard), AdamW with warm-up +
cosine, and the orbax `Checkpointer` (state + data-iterator state + config +
vocabulary, integrity-sealed, resumable).

The classification objective is expressed in the step's masked-token terms:
the "mask function" puts each cell's class at position 0 (`targets`, with
`loss_mask` only there) and the apply function returns the head's class logits
at every position, so the step's masked cross-entropy is exactly the per-cell
classification cross-entropy, and its "accuracy" the classification accuracy.
With `freeze_encoder`, the encoder runs deterministically under
`stop_gradient` and its optimiser updates are zeroed after AdamW (no weight
decay either): only the head changes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Optional, Union

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import optax

from grn_jax.inference.checkpoint import Pretrained
from grn_jax.inference.export import load_model
from grn_jax.inference.graph_sources import GraphSpec, build_graph_source, check_graph_matches_training
from grn_jax.inference.tokens import TrainingTokenizer

TASKS = ("classify",)
# fields a resumed run must share with the checkpoint (steps, logging and checkpoint cadence may change)
RESUME_MUST_MATCH = ("label_key", "task", "freeze_encoder", "pooling", "head_hidden_dim", "head_dropout",
                     "batch_size", "peak_lr", "weight_decay", "val_fraction", "seed", "mesh")
POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """What a fine-tuning run does; `mesh` None = the pretraining run's mesh."""

    label_key: str
    out_dir: str
    task: str = "classify"
    freeze_encoder: bool = False
    pooling: str = "cls"
    head_hidden_dim: Optional[int] = None
    head_dropout: float = 0.0
    steps: int = 100
    batch_size: int = 16
    peak_lr: float = 1e-3
    weight_decay: float = 0.01
    val_fraction: float = 0.2
    eval_every: int = 20
    eval_batches: int = 8
    checkpoint_every: int = 50
    seed: int = 0
    mesh: Optional[dict] = None
    progress: bool = True

    def __post_init__(self):
        def need(cond, field, msg):
            if not cond:
                raise ValueError(f"finetune.{field}: {msg}")

        need(self.task in TASKS, "task", f"must be one of {list(TASKS)}, got {self.task!r}")
        need(self.pooling in POOLINGS, "pooling", f"must be one of {list(POOLINGS)}, got {self.pooling!r}")
        need(bool(self.label_key), "label_key", "must name an obs column")
        need(bool(self.out_dir), "out_dir", "must be a folder path")
        for name in ("steps", "batch_size", "checkpoint_every", "eval_batches"):
            need(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        need(self.eval_every >= 0, "eval_every", f"must be >= 0 (0 = no validation), got {self.eval_every}")
        need(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        need(self.head_hidden_dim is None or self.head_hidden_dim >= 1, "head_hidden_dim", "must be >= 1 or None")


@dataclasses.dataclass
class FinetuneResult:
    out_dir: str
    classes: list
    start_step: int
    final_step: int
    final_loss: Optional[float]
    val: Optional[dict]
    cells: dict


def _obs(data) -> "anndata.AnnData.obs":
    if isinstance(data, anndata.AnnData):
        return data.obs
    from grn_jax.data.ingest import read_h5ad

    ad = read_h5ad(Path(data), backed="r")
    try:
        return ad.obs.copy()
    finally:
        ad.file.close()


def _labels(obs, key: str, rows: np.ndarray) -> tuple[np.ndarray, list, int]:
    """(class id per prepared cell, -1 = no label; sorted class names; number of unlabelled cells)."""
    if key not in obs.columns:
        raise ValueError(f"--label-key {key!r} is not an obs column; columns: {list(obs.columns)[:20]}")
    col = obs[key].iloc[rows]
    missing = col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy()
    names = col.astype(str).to_numpy()
    classes = sorted(set(names[~missing]))
    if len(classes) < 2:
        raise ValueError(f"obs[{key!r}] has {len(classes)} distinct label(s) {classes} among the kept cells; "
                         "classification needs at least 2")
    ids = np.full(len(rows), -1, np.int32)
    ids[~missing] = np.searchsorted(classes, names[~missing]).astype(np.int32)
    return ids, classes, int(missing.sum())


def _prepare_shards(pre: Pretrained, tok: TrainingTokenizer, data, shards: Path, graph: GraphSpec, log):
    from grn_jax.data import ShardStore, prepare

    if (shards / "manifest.json").is_file():
        store = ShardStore(shards, verify=True)
        if store.vocab != pre.vocab:
            raise ValueError(f"{shards} was prepared with another vocabulary than checkpoint {pre.run_dir}; "
                             "use a new --out")
        log(f"finetune: reusing prepared shards {shards} ({len(store)} cells)")
        return store
    cfg = tok.config
    if graph.cell_type_column:
        cfg = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, cell_type_column=graph.cell_type_column))

    def graph_factory(vocab, src):
        return build_graph_source(graph, vocab, src, cfg.shards.chunk_cells, log=log)[0]

    summary = prepare(data, shards, cfg, vocab=pre.vocab, graph=graph_factory if graph.given else None)
    log(f"finetune: tokenised {summary['cells']['cells_kept']} of {summary['cells']['cells_in']} cells as in "
        f"pretraining ({summary['cells']['cells_filtered']} filtered by the pretraining QC); "
        f"{summary['genes']['genes_not_in_vocab']} genes not in the vocabulary skipped")
    return ShardStore(shards)


def _zero_encoder_updates(updates, params):
    """Updates with the encoder part zeroed (after AdamW: no step and no weight decay on frozen weights)."""
    del params
    return {"encoder": jax.tree_util.tree_map(jnp.zeros_like, updates["encoder"]), "head": updates["head"]}


def finetune(checkpoint: Union[str, Path, Pretrained], data, cfg: FinetuneConfig, *, graph: GraphSpec = GraphSpec(),
             step: Optional[int] = None, log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune a classification head (see the module docstring); resumable from `cfg.out_dir`."""
    from grn_jax.models import ClassificationHead, build_model
    from grn_jax.train import distributed
    from grn_jax.train import sharding as sh
    from grn_jax.train.checkpoint import Checkpointer
    from grn_jax.train.config import MeshConfig, OptimConfig, TrainConfig
    from grn_jax.train.data import TrainData, split_cells
    from grn_jax.train.loop import _evaluate, check_batch_layout
    from grn_jax.train.metrics import MetricsWriter, truncate_after
    from grn_jax.train.optim import make_optimizer
    from grn_jax.train.state import abstract_with_shardings, init_sharded_state, state_shardings
    from grn_jax.train.step import jit_eval_step, jit_train_step, make_eval_step, make_train_step
    from grn_jax._io import check_out_dir
    from grn_jax.train.typed import build, to_dict

    check_out_dir(cfg.out_dir)  # before loading anything
    pre = checkpoint if isinstance(checkpoint, Pretrained) else load_model(checkpoint, step=step)
    tok = TrainingTokenizer.from_record(pre.tokenization, pre.vocab)
    check_graph_matches_training(graph, pre.tokenization.get("graph"), f"checkpoint {pre.run_dir}")
    out = Path(cfg.out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    store = _prepare_shards(pre, tok, data, out / "shards", graph, log)
    rows = store.cells_table()["dataset_row"].to_numpy()
    label_ids, classes, n_unlabelled = _labels(_obs(data), cfg.label_key, rows)
    labelled = np.flatnonzero(label_ids >= 0)
    tr, va = split_cells(len(labelled), cfg.val_fraction)
    train_idx, val_idx = labelled[tr], labelled[va]
    cells = {"prepared": len(store), "unlabelled": n_unlabelled, "train": int(len(train_idx)),
             "val": int(len(val_idx)), "classes": {c: int((label_ids == i).sum()) for i, c in enumerate(classes)}}
    log(f"finetune: {len(classes)} classes over {len(labelled)} labelled cells ({n_unlabelled} without a label, "
        f"left out): {len(train_idx)} train, {len(val_idx)} validation")
    if len(train_idx) < cfg.batch_size:
        raise ValueError(f"finetune.batch_size: {len(train_idx)} training cells cannot fill a batch of "
                         f"{cfg.batch_size}; lower --batch-size")
    eval_every = cfg.eval_every if len(val_idx) else 0

    tcfg = TrainConfig(run_dir=str(out), steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed,
                       optim=OptimConfig(peak_lr=cfg.peak_lr, weight_decay=cfg.weight_decay),
                       eval_every=eval_every, eval_batches=cfg.eval_batches, val_fraction=cfg.val_fraction,
                       checkpoint_every=cfg.checkpoint_every, keep_best=1 if eval_every else 0,
                       tensorboard=False, progress=cfg.progress)
    mesh_cfg = build(MeshConfig, cfg.mesh if cfg.mesh is not None else pre.run_config.get("mesh", {}), "mesh")
    mesh = sh.make_mesh(mesh_cfg)
    check_batch_layout(_RunLike(tcfg), mesh)

    model = build_model(pre.model_config)
    head = ClassificationHead(len(classes), hidden_dim=cfg.head_hidden_dim, dropout_rate=cfg.head_dropout)
    d = pre.model_config.d_model
    from grn_jax.models import example_batch

    init_batch = example_batch(pre.model_config, batch_size=1, seq_len=8, num_edges=8)

    def init_params(rng):
        k1, k2 = jax.random.split(rng)
        return {"encoder": model.init({"params": k1}, init_batch, deterministic=True)["params"],
                "head": head.init({"params": k2}, jnp.zeros((1, d), jnp.float32))["params"]}

    def apply_fn(params, batch, *, deterministic, rngs):
        enc = params["encoder"]
        if cfg.freeze_encoder:
            enc = jax.lax.stop_gradient(enc)
        out_ = model.apply({"params": enc}, batch, deterministic=deterministic or cfg.freeze_encoder, rngs=rngs)
        emb_BxD = (out_.cls_embedding if cfg.pooling == "cls" else out_.mean_embedding).astype(jnp.float32)
        logits_BxC = head.apply({"params": params["head"]}, emb_BxD, deterministic=deterministic, rngs=rngs)
        b, s = batch.gene_ids.shape
        return jnp.broadcast_to(logits_BxC[:, None, :], (b, s, logits_BxC.shape[-1]))

    labels_N = jnp.asarray(label_ids)

    def mask_fn(key, batch):
        """The cell's class as the target at position 0 (no bin masking: inputs stay as in inference)."""
        cell_BxS = batch.tokens.gene_ids
        idx_B = jnp.maximum(batch.cell_index, 0)
        y_B = labels_N[idx_B]
        ok_B = batch.cell_mask & (batch.cell_index >= 0) & (y_B >= 0)
        first_S = jnp.arange(cell_BxS.shape[1]) == 0
        targets = jnp.where(first_S[None, :] & ok_B[:, None], y_B[:, None], 0).astype(jnp.int32)
        return batch.tokens.replace(targets=targets, loss_mask=first_S[None, :] & ok_B[:, None])

    tx = make_optimizer(tcfg)
    if cfg.freeze_encoder:
        tx = optax.chain(tx, optax.stateless(_zero_encoder_updates))
    rng = jax.random.key(cfg.seed)
    data_ = TrainData(store=store, train_idx=train_idx, val_idx=val_idx, mask_fn=mask_fn, shuffle=True,
                      process_index=jax.process_index(), process_count=jax.process_count())
    saved_config = {"finetune": dataclasses.asdict(cfg), "classes": classes, "model": to_dict(pre.model_config),
                    "train": to_dict(tcfg), "mesh": to_dict(mesh_cfg), "pretrained": pre.provenance,
                    "tokenization": pre.tokenization, "cells": cells}
    ckpt = Checkpointer(out / "checkpoints", every=cfg.checkpoint_every, keep_last=2,
                        keep_best=1 if eval_every else 0, async_save=True)
    train_iter = data_.train_iterator(batch_size=cfg.batch_size // jax.process_count(), seed=cfg.seed)
    restored = None
    if ckpt.all_steps():  # an unsealed newest step is restored and sealed, or deleted (Checkpointer.restore_latest)
        abstract, shardings, _ = state_shardings(init_params, tx, mesh, rng)
        restored = ckpt.restore_latest(abstract_with_shardings(abstract, shardings), report=log)
    if restored is None:
        init = init_sharded_state(init_params, tx, mesh, rng)
        shardings = init.shardings
        # from a host copy: the step donates the state, which must never own the caller's arrays
        encoder = jax.device_put(jax.device_get(pre.params), shardings.params["encoder"])
        state = init.state.replace(params={"encoder": encoder, "head": init.state.params["head"]})
        start = 0
    else:
        start = restored.step
        for key in ("classes", "model"):
            if _canon(restored.config.get(key)) != _canon(saved_config[key]):
                raise ValueError(f"{out} holds a fine-tuning checkpoint (step {start}) with different {key}; "
                                 "use a new --out to start over")
        old_ft = restored.config.get("finetune", {})
        for key in RESUME_MUST_MATCH:
            if _canon(old_ft.get(key)) != _canon(getattr(cfg, key)):
                raise ValueError(f"finetune.{key}: the checkpoint in {out} (step {start}) was made with "
                                 f"{old_ft.get(key)!r}, now {getattr(cfg, key)!r}; resuming needs the same value "
                                 "(or use a new --out)")
        state = restored.state
        train_iter.set_state(distributed.own_process_state(restored.data_state))
        truncate_after(out, start)
        log(f"finetune: resumed from step {start}")

    train_fn = jit_train_step(make_train_step(apply_fn, mask_fn, tx, tcfg), shardings, data_.example_batch, mesh)
    eval_fn = jit_eval_step(make_eval_step(apply_fn, mask_fn, tcfg), shardings.params, data_.example_batch, mesh)
    val_batches = data_.val_batches(cfg.batch_size // jax.process_count(), cfg.eval_batches) if eval_every else []
    writer = MetricsWriter(out, total_steps=cfg.steps, start_step=start, tensorboard=False, progress=cfg.progress,
                           log=log)
    last_loss, val, step_ = None, None, start
    t0 = time.perf_counter()
    try:
        while step_ < cfg.steps:
            state, m = train_fn(state, sh.global_batch(next(train_iter), mesh))
            m = jax.device_get(m)
            if not bool(m["finite"]):
                raise FloatingPointError(f"finetune step {step_}: non-finite loss {float(m['loss'])}; lower "
                                         "--lr (nothing was applied or saved)")
            last_loss = float(m["loss"])
            writer.write({"kind": "train", "step": step_, "loss": last_loss, "accuracy": float(m["accuracy"]),
                          "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"])})
            writer.progress(1, {"loss": f"{last_loss:.4f}"})
            step_ += 1
            metrics = None
            if eval_every and (step_ % eval_every == 0 or step_ == cfg.steps):
                val = _evaluate(eval_fn, state.params, val_batches, mesh)
                val = {"val_loss": val["val_loss"], "val_accuracy": val["val_accuracy"], "val_cells": val["val_masked"]}
                writer.write({"kind": "val", "step": step_, **val})
                metrics = {"val_loss": val["val_loss"]}
            due = step_ % ckpt.every == 0 or step_ == cfg.steps  # gather every host's state only for a save
            ckpt.save(step_, state, data_state=distributed.gather_process_states(train_iter.get_state()) if due
                      else {"per_process": [train_iter.get_state()]}, config=saved_config,
                      vocab=pre.vocab.to_dict(), metrics=metrics, force=step_ == cfg.steps)
        ckpt.wait()
    finally:
        writer.close()
        ckpt.close()
    log(f"finetune: {step_ - start} steps in {time.perf_counter() - t0:.1f} s; final loss {last_loss}"
        + ("" if val is None else f", validation accuracy {val['val_accuracy']:.3f} over {val['val_cells']} cells"))
    return FinetuneResult(out_dir=str(out), classes=classes, start_step=start, final_step=step_,
                          final_loss=last_loss, val=val, cells=cells)


def _canon(obj) -> str:
    return json.dumps(json.loads(json.dumps(obj, default=str)), sort_keys=True)


@dataclasses.dataclass
class _RunLike:
    """The slice of a RunConfig that `check_batch_layout` reads (`.train`)."""

    train: object
