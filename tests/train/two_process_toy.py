"""The toy training step on a given 8-device layout, on one process or (run as a module) on each of two.

    python -m tests.train.two_process_toy OUT.json   # with JAX_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID

As a module: `STEPS` steps with train.deterministic_reductions on mesh data 4 x fsdp 2 over both processes'
devices, each process feeding its contiguous half of the global batch; process 0 writes the per-step
metrics. tests/train/test_deterministic_reductions.py compares them with one process on 8 devices.
"""

import json
import sys

import jax
import numpy as np
from jax.sharding import Mesh

from grn_jax.train import distributed
from grn_jax.train import sharding as sh
from grn_jax.train.config import TrainConfig
from grn_jax.train.optim import make_optimizer
from grn_jax.train.state import init_sharded_state
from grn_jax.train.step import jit_eval_step, jit_train_step, make_eval_step, make_train_step
from tests.train import toy

STEPS = 2
N_CELLS = 16
MESH = (4, 2, 1)
METRICS = ("loss", "grad_norm", "accuracy", "n_masked")


def build(shape=MESH, order=None, deterministic: bool = True):
    """(state, global batch, compiled train step, jitted eval step) of the toy model on `shape` over 8 devices.

    `order` permutes the devices before they are laid out; clipping is on, two micro-batches per step.
    """
    cfg = TrainConfig(steps=10, batch_size=N_CELLS, grad_accum=2, deterministic_reductions=deterministic)
    batch = toy.toy_batch(N_CELLS, seq=8)
    devices = np.asarray(jax.devices(), dtype=object)
    mesh = Mesh((devices if order is None else devices[order]).reshape(shape), sh.MESH_AXES)
    model, tx = toy.ToyModel(), make_optimizer(cfg)
    init = init_sharded_state(toy.toy_init(model, batch), tx, mesh, jax.random.key(0))
    n, p = N_CELLS // jax.process_count(), jax.process_index()
    gb = sh.global_batch(jax.tree_util.tree_map(lambda x: np.asarray(x)[p * n:(p + 1) * n], batch), mesh)
    train = jit_train_step(make_train_step(toy.toy_apply(model), toy.toy_mask(), tx, cfg), init.shardings, batch,
                           mesh).lower(init.state, gb).compile()
    evaluate = jit_eval_step(make_eval_step(toy.toy_apply(model), toy.toy_mask(), cfg), init.shardings.params,
                             batch, mesh)
    return init.state, gb, train, evaluate


def train_metrics(state, gb, train, steps: int = STEPS):
    """(final state, [[loss, grad_norm, accuracy, n_masked] per step] as floats)."""
    out = []
    for _ in range(steps):
        state, m = train(state, gb)
        out.append([float(m[k]) for k in METRICS])
    return state, out


if __name__ == "__main__":
    distributed.maybe_initialize()
    _, result = train_metrics(*build()[:3])
    if jax.process_index() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
