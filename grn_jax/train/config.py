"""Typed configs for training and the device mesh (one frozen dataclass per concern).

Loaded from the `train:` and `mesh:` sections of an experiment YAML by
`grn_jax.config.load_run_config`; validated once, at construction, with
messages that name the offending field.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from grn_jax._io import is_url

_DTYPES = ("float32", "bfloat16")


def _check(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{field}: {msg}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device-mesh shape over the axes (data, fsdp, tensor); one entry may be -1 (fills the rest).

    `data`: pure data parallelism (replicated params). `fsdp`: data parallelism
    with parameters and optimiser state sharded. `tensor`: attention heads and
    MLP width split across devices.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = self.as_dict()
        for name, size in sizes.items():
            _check(isinstance(size, int) and (size == -1 or size >= 1), f"mesh.{name}",
                   f"must be a positive integer or -1 (fill), got {size!r}")
        _check(sum(s == -1 for s in sizes.values()) <= 1, "mesh",
               f"at most one axis may be -1 (fill), got {sizes}")

    def as_dict(self) -> dict:
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (papers/gremln.txt A.5) and global-norm clipping."""

    peak_lr: float = 3e-4
    warmup_fraction: float = 0.1       # warm-up lasts this fraction of train.steps
    warmup_start_factor: float = 1e-5  # lr at step 0 = peak_lr * factor
    end_lr_factor: float = 0.0         # lr at the last step = peak_lr * factor
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: Optional[float] = 1.0   # None disables clipping

    def __post_init__(self):
        _check(self.peak_lr > 0, "train.optim.peak_lr", f"must be > 0, got {self.peak_lr}")
        _check(0.0 <= self.warmup_fraction < 1.0, "train.optim.warmup_fraction",
               f"must be in [0, 1), got {self.warmup_fraction}")
        _check(0.0 < self.warmup_start_factor <= 1.0, "train.optim.warmup_start_factor",
               f"must be in (0, 1], got {self.warmup_start_factor}")
        _check(0.0 <= self.end_lr_factor <= 1.0, "train.optim.end_lr_factor",
               f"must be in [0, 1], got {self.end_lr_factor}")
        _check(self.weight_decay >= 0, "train.optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "train.optim.b1/b2",
               f"must be in [0, 1), got b1={self.b1}, b2={self.b2}")
        _check(self.clip_norm is None or self.clip_norm > 0, "train.optim.clip_norm",
               f"must be > 0 or null, got {self.clip_norm}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What a pretraining run does: steps, batch, objective, logging, checkpoints.

    `batch_size` is the GLOBAL number of cells per optimiser step, split into
    `grad_accum` micro-batches that are accumulated inside one compiled step.
    `run_dir` holds everything the run writes (config, provenance, metrics,
    checkpoints); restarting with the same `run_dir` resumes. It must be local
    (metrics, the run lock, logs); `checkpoint_dir` moves the checkpoints
    elsewhere, e.g. to `gs://bucket/run/checkpoints` (through etils.epath / orbax).
    """

    run_dir: str = "runs/default"
    checkpoint_dir: Optional[str] = None  # None: <run_dir>/checkpoints; a local path or a URL (gs://...)
    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    mask_rate: float = 0.3
    # weight of the cell-embedding objective (models.heads.CellExpressionHead): every gene's bin predicted
    # from the pooled cell embedding; 0 = the papers' masked-bin objective alone. 50 is measured for the
    # default value head (squared error of bin / (n_bins - 1), ~30x smaller per gene than the softmax
    # head's cross-entropy): README, "What the default model is and why"
    cell_loss_weight: float = 50.0
    seed: int = 0
    param_dtype: str = "float32"
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    log_every: int = 1
    eval_every: int = 50             # 0 disables periodic validation
    eval_batches: int = 4
    val_fraction: float = 0.1        # held-out cells for validation
    checkpoint_every: int = 50
    keep_last: int = 2
    keep_best: int = 1
    async_checkpoint: bool = True
    tensorboard: bool = True
    progress: bool = True
    # Sum gradients and metrics over the batch shards (data x fsdp) in one fixed order instead of the
    # all-reduce's, so a step is bit-identical on any device layout and process split with the same
    # data x fsdp product (grn_jax.train.step.per_batch_shard says when: tensor <= 2). Cost: during the
    # step every device holds the whole parameters, AdamW moments and gradients (no FSDP saving there)
    # plus the data x fsdp gathered per-shard gradients, and repeats the optimiser update. Measured
    # (benchmarks/results/deterministic.md, 8 CPU devices): tiny GDKA step x1.09 on data2 fsdp2 tensor2,
    # x1.9 on data4 fsdp2, temp memory x1.00 / x1.13; gremln_base (14.7 M parameters) on fsdp 8:
    # temp 11.98 -> 12.29 GiB per device (activations dominate).
    deterministic_reductions: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "eval_batches"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 1, f"train.{name}", f"must be an integer >= 1, got {v!r}")
        _check(isinstance(self.eval_every, int) and self.eval_every >= 0, "train.eval_every",
               f"must be an integer >= 0 (0 disables validation), got {self.eval_every!r}")
        _check(self.batch_size % self.grad_accum == 0, "train.grad_accum",
               f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}; "
               f"pick grad_accum among the divisors of batch_size")
        _check(0.0 < self.mask_rate < 1.0, "train.mask_rate", f"must be in (0, 1), got {self.mask_rate}")
        _check(isinstance(self.cell_loss_weight, (int, float)) and not isinstance(self.cell_loss_weight, bool)
               and self.cell_loss_weight >= 0, "train.cell_loss_weight",
               f"must be a number >= 0 (0 = masked-bin objective only), got {self.cell_loss_weight!r}")
        _check(0.0 <= self.val_fraction < 1.0, "train.val_fraction",
               f"must be in [0, 1), got {self.val_fraction}")
        _check(self.param_dtype == "float32", "train.param_dtype",
               f"parameters and optimiser state are kept in float32 (bfloat16 is a compute dtype: "
               f"set model.dtype), got {self.param_dtype!r}")
        _check(self.keep_last >= 1, "train.keep_last", f"must be >= 1, got {self.keep_last}")
        _check(self.keep_best >= 0, "train.keep_best", f"must be >= 0, got {self.keep_best}")
        _check(isinstance(self.seed, int) and self.seed >= 0, "train.seed", f"must be an integer >= 0, got {self.seed!r}")
        _check(bool(self.run_dir), "train.run_dir", "must be a non-empty path")
        _check(not is_url(str(self.run_dir)), "train.run_dir",
               f"must be a local directory (it holds metrics, the run lock and logs), got {self.run_dir!r}; put "
               f"checkpoints on remote storage with train.checkpoint_dir (e.g. gs://bucket/run/checkpoints)")
        _check(self.checkpoint_dir is None or (isinstance(self.checkpoint_dir, str) and bool(self.checkpoint_dir)),
               "train.checkpoint_dir", f"must be a non-empty path or URL, or null (= <run_dir>/checkpoints), "
               f"got {self.checkpoint_dir!r}")
        _check(isinstance(self.deterministic_reductions, bool), "train.deterministic_reductions",
               f"must be true or false, got {self.deterministic_reductions!r}")

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum

    @property
    def warmup_steps(self) -> int:
        return int(round(self.optim.warmup_fraction * self.steps))
