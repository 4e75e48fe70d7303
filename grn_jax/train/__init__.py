"""grn_jax.train: sharded pretraining — mesh + logical sharding rules, optimiser, state, step, checkpoints, loop.

Entry points: `pretrain(run_config)` (resumable; `grn-jax pretrain`), `compile_only(run_config)`
(`grn-jax pretrain --compile-only`). Building blocks: `make_mesh` + `LOGICAL_AXIS_RULES`,
`make_optimizer`/`make_schedule`, `init_sharded_state`, `make_train_step` + `jit_train_step`,
`Checkpointer`. Run configs come from `grn_jax.config.load_run_config`.
"""

from grn_jax.train.checkpoint import CheckpointError, Checkpointer, Restored
from grn_jax.train.compile import CompileReport, compile_only
from grn_jax.train.config import MeshConfig, OptimConfig, TrainConfig
from grn_jax.train.loop import NonFiniteLossError, PretrainResult, check_batch_layout, pretrain
from grn_jax.train.losses import masked_bin_correct, masked_bin_cross_entropy, safe_mean
from grn_jax.train.metrics import read_metrics
from grn_jax.train.optim import make_optimizer, make_schedule
from grn_jax.train.sharding import (LOGICAL_AXIS_RULES, MESH_AXES, batch_sharding, global_batch, logical_to_sharding,
                                    make_mesh, param_shardings, resolve_mesh_shape)
from grn_jax.train.state import (ShardedInit, TrainState, abstract_with_shardings, init_sharded_state,
                                 state_shardings)
from grn_jax.train.step import jit_eval_step, jit_train_step, make_eval_step, make_train_step

__all__ = [
    "CheckpointError", "Checkpointer", "CompileReport", "LOGICAL_AXIS_RULES", "MESH_AXES", "MeshConfig",
    "NonFiniteLossError", "OptimConfig", "PretrainResult", "Restored", "ShardedInit", "TrainConfig", "TrainState",
    "abstract_with_shardings", "batch_sharding", "check_batch_layout", "compile_only", "global_batch",
    "init_sharded_state", "jit_eval_step", "jit_train_step", "logical_to_sharding", "make_eval_step", "make_mesh",
    "make_optimizer", "make_schedule", "make_train_step", "masked_bin_correct", "masked_bin_cross_entropy",
    "param_shardings", "pretrain", "read_metrics", "resolve_mesh_shape", "safe_mean", "state_shardings",
]
