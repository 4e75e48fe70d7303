"""The pure functions training needs from a model config: init and the bin-logit apply.

One place for what pretraining, compile-only and profiling all build the same way.
"""

from __future__ import annotations

from typing import Callable, NamedTuple


class ModelFns(NamedTuple):
    model: object  # the flax module (grn_jax.models.build_model)
    init_params: Callable  # rng -> params
    apply_fn: Callable  # (params, batch, *, deterministic, rngs) -> (bin logits [B, S, n_bins], cell-head logits [B, V, n_bins])


def model_fns(model_cfg) -> ModelFns:
    """Build the model of `model_cfg` and its init/apply closures (params only; no other collections)."""
    from grn_jax.models import build_model, example_batch

    model = build_model(model_cfg)
    init_batch = example_batch(model_cfg, batch_size=1, seq_len=8, num_edges=8)

    def init_params(rng):
        return model.init({"params": rng}, init_batch, deterministic=True)["params"]

    def apply_fn(params, batch, *, deterministic, rngs):
        out = model.apply({"params": params}, batch, deterministic=deterministic, rngs=rngs)
        return out.bin_logits, out.cell_gene_logits

    return ModelFns(model, init_params, apply_fn)
