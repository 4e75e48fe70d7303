"""The inference function shared by `embed` and `export`: token arrays in, embeddings out.

Deterministic (no dropout, no sampling rngs: the GRNFormer adapter then picks
neighbours by its fixed edge hash), float32 outputs. Inputs are the token-batch
arrays as positional arguments (no dataclasses) so the exported artefact can be
called from a process that has none of grn_jax's Python types:

    gene_ids int32 [B, S], bins int32 [B, S], token_mask bool [B, S],
    senders, receivers int32 [B, E], weights float32 [B, E], edge_mask bool [B, E]
    (+ the same four for the cell-specific graph when the model has an adapter
    trained with one)

returning (cls_BxD, mean_BxD, hidden_BxSxD).

Bitwise batch independence, by construction: the function runs the model on one
cell at a time (`jax.lax.map` over the batch, each step a [1, S] program), so a
cell's outputs are computed by the same machine code whatever its batch-mates,
its row in the batch or the batch size — not merely equal to within rounding
(batched float32 matmuls block differently per shape and CPU, and differed by
~1e-6). Callers also pad every call to a multiple of `INFERENCE_CELLS` rows
(`call_rows`), so the loop never has a trip count of 1 (which XLA would inline
and fuse differently) and `--batch-size` only sets how many cells go per call.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from grn_jax.types import GraphBatch, TokenBatch

TOKEN_ARGS = ("gene_ids", "bins", "token_mask")
GRAPH_ARGS = ("senders", "receivers", "weights", "edge_mask")
INFERENCE_CELLS = 8  # every inference call holds a multiple of this many rows (see the module docstring)


def call_rows(batch_size: int) -> int:
    """Rows of the inference call for a requested `batch_size`: rounded up to a multiple of INFERENCE_CELLS."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return -(-batch_size // INFERENCE_CELLS) * INFERENCE_CELLS


def input_names(with_cell_graph: bool) -> tuple[str, ...]:
    """Names of the positional array inputs, in order."""
    names = TOKEN_ARGS + GRAPH_ARGS
    if with_cell_graph:
        names += tuple(f"cell_{n}" for n in GRAPH_ARGS)
    return names


def batch_arrays(tokens: TokenBatch, with_cell_graph: bool) -> tuple:
    """The positional inputs of the inference function taken from a TokenBatch."""
    g = tokens.graph
    out = (tokens.gene_ids, tokens.bins, tokens.token_mask, g.senders, g.receivers, g.weights, g.edge_mask)
    if with_cell_graph:
        c = tokens.cell_graph
        if c is None:
            raise ValueError("the model takes a cell-specific graph but the batch has none (cell_graph is None)")
        out += (c.senders, c.receivers, c.weights, c.edge_mask)
    return out


def make_inference_fn(model, with_cell_graph: bool) -> Callable:
    """fn(params, *arrays) -> (cls_BxD, mean_BxD, hidden_BxSxD), all float32."""

    def one_cell(params, gene_ids, bins, token_mask, senders, receivers, weights, edge_mask, *cell_graph):
        zeros_BxS = jnp.zeros(gene_ids.shape, jnp.int32)
        cg = GraphBatch(*cell_graph) if with_cell_graph else None
        tokens = TokenBatch(gene_ids=gene_ids, bins=bins, targets=zeros_BxS, loss_mask=zeros_BxS.astype(bool),
                            token_mask=token_mask, graph=GraphBatch(senders, receivers, weights, edge_mask),
                            cell_graph=cg)
        out = model.apply({"params": params}, tokens, deterministic=True)
        return (out.cls_embedding.astype(jnp.float32), out.mean_embedding.astype(jnp.float32),
                out.hidden.astype(jnp.float32))

    def fn(params, *arrays):
        def step(cell_arrays):  # one cell: every array [1, ...]
            cls_1xD, mean_1xD, hidden_1xSxD = one_cell(params, *(a[None] for a in cell_arrays))
            return cls_1xD[0], mean_1xD[0], hidden_1xSxD[0]

        return jax.lax.map(step, tuple(arrays))

    return fn


def gene_embedding_table(params) -> jnp.ndarray:
    """The learned gene-ID embedding table [vocab, D/2] (the model's static gene embedding)."""
    try:
        return params["embed"]["gene"]["table"]["embedding"]
    except (KeyError, TypeError) as e:
        raise ValueError("the parameters have no embed/gene/table/embedding entry (the gene-ID embedding); "
                         "they do not come from a grn_jax model") from e


@functools.lru_cache(maxsize=16)
def jitted_inference_fn(model_config, with_cell_graph: bool) -> Callable:
    """`jax.jit(make_inference_fn(build_model(config)))`, cached per (config, graph inputs).

    One jitted object per model config, so repeated `embed` calls in a process reuse
    its compiled executables (one per bucket shape) instead of re-tracing.
    """
    import jax

    from grn_jax.models import build_model
    from grn_jax.train.sharding import with_rules

    # traced under the logical axis rules: the model's activation constraints apply under a caller's mesh
    return jax.jit(with_rules(make_inference_fn(build_model(model_config), with_cell_graph)))
