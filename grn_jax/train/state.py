"""Train state and its sharded construction (abstract first, then jit(init, out_shardings)).

Parameters are created by the model with logical-axis annotations (boxed);
the state stores them unboxed. Their shardings come from the annotations via
`grn_jax.train.sharding`, and the optimiser state inherits the sharding of the
parameter it mirrors (`optax.tree_map_params`), so AdamW moments are sharded
exactly like the weights.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding

from grn_jax.train import sharding as sh


@struct.dataclass
class TrainState:
    """Everything that changes per optimiser step and must be checkpointed on device."""

    step: jax.Array  # int32 scalar: number of optimiser steps applied
    params: Any
    opt_state: Any


@struct.dataclass
class ShardedInit:
    """The result of `init_sharded_state`: the state, its shardings and a layout report."""

    state: TrainState
    shardings: TrainState
    n_unfitted: int = struct.field(pytree_node=False, default=0)


def state_shardings(init_params_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                    mesh: Mesh, rng: jax.Array):
    """(abstract state, state shardings, n_unfitted) without allocating anything.

    `init_params_fn(rng)` returns the model's boxed (logically annotated) params.
    """
    abstract_boxed = jax.eval_shape(init_params_fn, rng)
    p_shard, n_unfitted = sh.param_shardings(abstract_boxed, mesh)
    abstract_state = jax.eval_shape(lambda r: _init_state(init_params_fn, tx, r), rng)
    rep = sh.replicated(mesh)
    opt_shard = optax.tree_map_params(
        tx, lambda _, s: s, abstract_state.opt_state, p_shard,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, NamedSharding))
    shardings = TrainState(step=rep, params=p_shard, opt_state=opt_shard)
    return abstract_state, shardings, n_unfitted


def _init_state(init_params_fn, tx, rng) -> TrainState:
    params = nn.unbox(init_params_fn(rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def init_sharded_state(init_params_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                       mesh: Mesh, rng: jax.Array) -> ShardedInit:
    """Initialise the train state directly in its sharded layout (no full copy on one device)."""
    _, shardings, n_unfitted = state_shardings(init_params_fn, tx, mesh, rng)
    init = jax.jit(lambda r: _init_state(init_params_fn, tx, r), out_shardings=shardings)
    return ShardedInit(state=init(rng), shardings=shardings, n_unfitted=n_unfitted)


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings (targets for restore and AOT compilation)."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)
