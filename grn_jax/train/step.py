"""The compiled training and evaluation steps.

One `jax.jit` per step function with explicit in/out shardings and the train
state donated. Inside the step: bin masking from (seed, step), forward and
backward over `grad_accum` micro-batches in a `lax.scan` (sums, so the result
equals the big-batch gradient), clipping + AdamW, and a finiteness guard that
refuses to write a non-finite update into the state. With
train.deterministic_reductions the sums over the batch shards are gathered and
added in shard order instead of all-reduced (`per_batch_shard`), so the step
is bit-identical on any layout and process split of the same data x fsdp.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from grn_jax import _compat
from grn_jax.train import losses
from grn_jax.types import GENE_SPECIAL_TOKENS
from grn_jax.train import sharding as sh
from grn_jax.train.config import TrainConfig
from grn_jax.train.optim import make_schedule
from grn_jax.train.state import TrainState

# apply_fn(params, batch, *, deterministic, rngs) -> bin logits [B, S, n_bins]
ApplyFn = Callable[..., jax.Array]
# mask_fn(key, batch) -> batch with bins masked and targets/loss_mask filled
MaskFn = Callable[[jax.Array, Any], Any]

NUM_SPECIAL = len(GENE_SPECIAL_TOKENS)  # PAD, MASK, CLS: the first gene ids
EVAL_SEED_OFFSET = 1_000_003  # validation masks come from a key stream disjoint from training


def _sums(apply_fn: ApplyFn, params, batch, rng, deterministic: bool, cfg: TrainConfig):
    """(objective sum, sums) of one micro-batch: masked-bin CE (+ the weighted cell-embedding CE).

    `apply_fn` returns the masked-bin logits, or (masked-bin logits, cell-head
    logits). Everything is a sum, so micro-batches and shards add up exactly;
    the caller divides by the masked-token count. The cell term is scaled by
    mask_rate x S / V so that weight 1 gives it about the weight of the
    masked-bin term per cell (it counts every vocabulary gene, V of them; the
    other only the masked tokens, about mask_rate x S).
    """
    k_drop, k_sample, k_perturb = jax.random.split(rng, 3)
    rngs = {"dropout": k_drop, "sample": k_sample, "perturb": k_perturb}
    out = apply_fn(params, batch, deterministic=deterministic, rngs=rngs)
    logits, cell_logits = out if isinstance(out, tuple) else (out, None)
    ce_sum, count = losses.masked_bin_cross_entropy(logits, batch.targets, batch.loss_mask)
    sums = {"ce_sum": ce_sum, "count": count,
            "correct": losses.masked_bin_correct(logits, batch.targets, batch.loss_mask)}
    objective = ce_sum
    if cell_logits is not None and cell_logits.shape[1] > 0:  # an empty array: the model has no cell head
        n_bins = logits.shape[-1]
        tgt, valid = losses.cell_expression_targets(batch.gene_ids, batch.bins, batch.targets, batch.loss_mask,
                                                    batch.token_mask, cell_logits.shape[1], n_bins, NUM_SPECIAL)
        if cell_logits.shape[2] == 1:  # value head (model.cell_head_output="value"): squared error
            cell_sum, cell_count, cell_correct = losses.cell_value_error(cell_logits, tgt, valid, n_bins)
        else:
            cell_sum, cell_count = losses.masked_bin_cross_entropy(cell_logits, tgt, valid)
            cell_correct = losses.masked_bin_correct(cell_logits, tgt, valid)
        sums.update(cell_sum=cell_sum, cell_count=cell_count, cell_correct=cell_correct)
        if cfg.cell_loss_weight > 0:
            # per cell the masked term sums ~mask_rate x S token losses and this one V gene losses: rescale
            scale = cfg.cell_loss_weight * cfg.mask_rate * batch.gene_ids.shape[1] / cell_logits.shape[1]
            objective = objective + scale * cell_sum
    return objective, sums


def _split_micro(batch, n_micro: int):
    """[B, ...] -> [n_micro, B // n_micro, ...] taking cells i::n_micro into micro-batch i.

    Strided so that every device's local cells feed every micro-batch (no
    cross-device traffic for the split under a batch-sharded layout).
    """
    def split(x):
        b = x.shape[0]
        x = x.reshape((b // n_micro, n_micro) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    return jax.tree_util.tree_map(split, batch)


def _sum_in_shard_order(x_G: jax.Array) -> jax.Array:
    """x[0] + x[1] + ... + x[G-1], left to right: one fixed order of float additions (a scan, so the traced
    program does not grow with the number of shards)."""
    total, _ = jax.lax.scan(lambda acc, x: (acc + x, None), x_G[0], x_G[1:])
    return total


def per_batch_shard(local_fn: Callable, finish: Optional[Callable] = None, mesh=None) -> Callable:
    """(x, batch, rng) -> finish(x, total): `total` sums `local_fn` over the batch shards in one fixed order.

    `local_fn(x, local_batch, rng)` runs once per batch shard (the cells on
    one data x fsdp position, B / (data x fsdp) of them) inside a shard_map
    that is manual over the batch axes and automatic over tensor: `x` (the
    train state, or the parameters) enters whole over fsdp (an all-gather,
    exact), gradients are the shard's own (no collective), and shard g draws
    its randomness from fold_in(rng, g). The per-shard results are then
    all-gathered (exact: no arithmetic) and added on every device in shard
    order, x0 + x1 + ... + x_{G-1}; `finish` (the optimiser update: gradient
    norm, clipping, AdamW) runs on that total on every device, still inside,
    so no reduction of it is split over data or fsdp either. The result thus
    depends on the mesh's data x fsdp product and on nothing else of the
    layout: not on which device holds which shard, nor on fsdp, nor on how
    the devices are split across processes (whose all-reduce sums in its
    own order: a cross-process ring in another order than one process).

    Exact as long as the reductions left inside a shard are order-free: the
    tensor axis (attention output projection, MLP down-projection, the
    input-embedding gradient, the norm of tensor-split gradients) reduces
    over `tensor` devices in the collective's order, which is exact for
    tensor <= 2 (a + b == b + a) and otherwise only between layouts that
    place the tensor groups alike. `mesh` defaults to the mesh in context
    (`sharding.with_rules`, as `jit_train_step` traces the step).

    Cost: the whole state and the G gathered per-shard gradients live on
    every device during the step, and the update is computed G times over
    (TrainConfig.deterministic_reductions has the measured figures).
    """
    batch_axes = sh.BATCH_MESH_AXES

    def body(x, batch, rng):
        shard = jax.lax.axis_index(batch_axes)
        with sh.per_shard_rules_in_force():
            out = local_fn(x, batch, jax.random.fold_in(rng, shard))
        gathered = jax.lax.all_gather(out, batch_axes)  # [G, ...] on every device, in shard order
        total = jax.tree_util.tree_map(_sum_in_shard_order, gathered)
        return total if finish is None else finish(x, total)

    def run(x, batch, rng):
        m = mesh if mesh is not None else _compat.get_abstract_mesh()
        if m is None:
            raise ValueError("train.deterministic_reductions: the step needs a mesh in context; "
                             "jit it with grn_jax.train.step.jit_train_step (or trace it in sharding.with_rules)")
        # check_vma=False: gradients of the (replicated) inputs stay the shard's own, with no implicit
        # psum; out_specs P() holds because every device computes the same total and `finish` from it
        return _compat.shard_map(body, mesh=m, in_specs=(P(), P(batch_axes), P()), out_specs=P(),
                                 check_vma=False, axis_names=batch_axes)(x, batch, rng)

    return run


def make_train_step(apply_fn: ApplyFn, mask_fn: MaskFn, tx: optax.GradientTransformation,
                    cfg: TrainConfig) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """The (un-jitted) step: (state, batch) -> (new state, metrics)."""
    schedule_fn = make_schedule(cfg)
    n_micro = cfg.grad_accum

    def local_grads_and_sums(params, batch, rng):
        grad_fn = jax.value_and_grad(lambda p, b, r: _sums(apply_fn, p, b, r, False, cfg), has_aux=True)
        if n_micro == 1:
            (_, sums), g_sum = grad_fn(params, batch, rng)
            return g_sum, sums

        def body(carry, xs):
            g_acc, s_acc = carry
            micro, i = xs
            (_, s), g = grad_fn(params, micro, jax.random.fold_in(rng, i))
            return (jax.tree_util.tree_map(jnp.add, g_acc, g), jax.tree_util.tree_map(jnp.add, s_acc, s)), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        first = jax.tree_util.tree_map(lambda x: x[0], _split_micro(batch, n_micro))
        sum_shapes = jax.eval_shape(lambda: _sums(apply_fn, params, first, rng, False, cfg)[1])
        zero_sums = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), sum_shapes)
        (g_sum, sums), _ = jax.lax.scan(
            body, (zeros, zero_sums), (_split_micro(batch, n_micro), jnp.arange(n_micro)))
        return g_sum, sums

    def update(state: TrainState, g_sum, sums) -> tuple[TrainState, dict]:
        ce_sum, count, correct = sums["ce_sum"], sums["count"], sums["correct"]
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / denom.astype(g.dtype), g_sum)
        loss = losses.safe_mean(ce_sum, count)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state)
        # NaN/inf guard: a non-finite step leaves the state untouched; the loop stops on `finite`.
        new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state)
        metrics = {
            "loss": loss,
            "accuracy": losses.safe_mean(correct, count),
            "grad_norm": grad_norm,
            "lr": schedule_fn(state.step),
            "n_masked": count,
            "finite": finite,
        }
        if "cell_sum" in sums:
            metrics["cell_loss"] = losses.safe_mean(sums["cell_sum"], sums["cell_count"])
            metrics["cell_accuracy"] = losses.safe_mean(sums["cell_correct"], sums["cell_count"])
        return new, metrics

    if cfg.deterministic_reductions:
        grads_then_update = per_batch_shard(lambda state, b, r: local_grads_and_sums(state.params, b, r),
                                            finish=lambda state, total: update(state, *total))
    else:
        def grads_then_update(state, batch, rng):
            return update(state, *local_grads_and_sums(state.params, batch, rng))

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
        mask_key, dropout_key = jax.random.split(key)
        return grads_then_update(state, mask_fn(mask_key, batch), dropout_key)

    return train_step


def make_eval_step(apply_fn: ApplyFn, mask_fn: MaskFn, cfg: TrainConfig) -> Callable:
    """(params, batch, batch_index) -> sums of loss / masked count / correct, deterministic masks."""

    def local_sums(params, batch, key):
        return _sums(apply_fn, params, batch, key, True, cfg)[1]

    sums_fn = per_batch_shard(local_sums) if cfg.deterministic_reductions else local_sums

    def eval_step(params, batch, batch_index):
        key = jax.random.fold_in(jax.random.key(cfg.seed + EVAL_SEED_OFFSET), batch_index)
        batch = mask_fn(key, batch)
        sums = sums_fn(params, batch, key)
        out = {"loss_sum": sums["ce_sum"], "n_masked": sums["count"], "correct": sums["correct"]}
        if "cell_sum" in sums:
            out.update(cell_loss_sum=sums["cell_sum"], n_cell_tokens=sums["cell_count"],
                       cell_correct=sums["cell_correct"])
        return out

    return eval_step


def jit_train_step(step_fn, state_shardings: TrainState, batch_example: Any, mesh: Mesh):
    """jax.jit with explicit shardings: state sharded as initialised, batch over data x fsdp, state donated.

    The step is traced with the logical axis rules and `mesh` in force, so the
    models' activation constraints (batch over data x fsdp, heads / mlp over
    tensor) shard the intermediate values too, not only the inputs.
    """
    return jax.jit(sh.with_rules(step_fn, mesh),
                   in_shardings=(state_shardings, sh.batch_shardings(batch_example, mesh)),
                   out_shardings=(state_shardings, sh.replicated(mesh)),
                   donate_argnums=(0,))


def jit_eval_step(eval_fn, param_shardings: Any, batch_example: Any, mesh: Mesh):
    rep = sh.replicated(mesh)
    return jax.jit(sh.with_rules(eval_fn, mesh),
                   in_shardings=(param_shardings, sh.batch_shardings(batch_example, mesh), rep),
                   out_shardings=rep)
