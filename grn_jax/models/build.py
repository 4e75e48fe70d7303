"""Model construction: `build_model(config)`, an example batch, and variable initialisation.

`build_model` is the single entry the training and inference code use; it
returns a Flax module with pure `init`/`apply`. `example_batch` makes a valid,
padding-free dummy `TokenBatch` of a given bucket shape for `init` and
`jax.eval_shape` (no real data needed to build parameters).
"""

from __future__ import annotations

import jax
import numpy as np

from grn_jax.models.config import ModelConfig
from grn_jax.models.gremln import GREmLN
from grn_jax.types import GENE_CLS, GraphBatch, TokenBatch


def build_model(config: ModelConfig) -> GREmLN:
    """The model for `config`: GREmLN, with the GRNFormer adapter as last layer when `config.adapter` is set."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"build_model expects a ModelConfig, got {type(config).__name__}")
    if config.adapter is not None:
        from grn_jax.models.grnformer import GRNFormer  # noqa: PLC0415

        return GRNFormer(config)
    return GREmLN(config)


def example_batch(config: ModelConfig, batch_size: int = 2, seq_len: int = 16, num_edges: int = 16,
                  *, with_cell_graph: bool | None = None) -> TokenBatch:
    """A dummy TokenBatch of the given bucket shape (a chain graph over the gene positions).

    `with_cell_graph` defaults to True when the config has a GRNFormer adapter.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (CLS + at least one gene), got {seq_len}")
    if with_cell_graph is None:
        with_cell_graph = config.adapter is not None
    b, s, e = batch_size, seq_len, num_edges
    genes = 3 + (np.arange(s - 1) % (config.gene_vocab_size - 3))
    gene_ids = np.concatenate([np.full((b, 1), GENE_CLS), np.broadcast_to(genes, (b, s - 1))], axis=1)
    bins = np.concatenate([np.full((b, 1), config.bin_spec.cls_id), np.ones((b, s - 1), np.int64)], axis=1)
    slot = np.arange(e)
    snd = 1 + slot % max(s - 2, 1)
    rcv = np.minimum(snd + 1, s - 1)
    graph = GraphBatch(senders=np.broadcast_to(snd, (b, e)).astype(np.int32),
                       receivers=np.broadcast_to(rcv, (b, e)).astype(np.int32),
                       weights=np.ones((b, e), np.float32),
                       edge_mask=np.broadcast_to(slot < s - 2, (b, e)).copy())
    return TokenBatch(gene_ids=gene_ids.astype(np.int32), bins=bins.astype(np.int32),
                      targets=np.zeros((b, s), np.int32), loss_mask=np.zeros((b, s), bool),
                      token_mask=np.ones((b, s), bool), graph=graph,
                      cell_graph=graph if with_cell_graph else None)


def init_variables(model: GREmLN, key: jax.Array, batch: TokenBatch):
    """Jitted `model.init` on `batch` (deterministic, so no dropout/sample/perturb rngs are needed).

    Only the batch's shapes matter; jit makes this one compiled program instead
    of hundreds of eagerly dispatched ops.
    """
    return jax.jit(lambda k, b: model.init({"params": k}, b, deterministic=True))(key, batch)


def abstract_variables(model: GREmLN, batch: TokenBatch):
    """Shapes/dtypes of the variables without allocating them (`jax.eval_shape`)."""
    return jax.eval_shape(lambda k: init_variables(model, k, batch), jax.random.key(0))


