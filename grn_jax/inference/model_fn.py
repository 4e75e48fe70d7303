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
"""

from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp

from grn_jax.types import GraphBatch, TokenBatch

TOKEN_ARGS = ("gene_ids", "bins", "token_mask")
GRAPH_ARGS = ("senders", "receivers", "weights", "edge_mask")


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

    def fn(params, gene_ids, bins, token_mask, senders, receivers, weights, edge_mask, *cell_graph):
        zeros_BxS = jnp.zeros(gene_ids.shape, jnp.int32)
        cg = GraphBatch(*cell_graph) if with_cell_graph else None
        tokens = TokenBatch(gene_ids=gene_ids, bins=bins, targets=zeros_BxS, loss_mask=zeros_BxS.astype(bool),
                            token_mask=token_mask, graph=GraphBatch(senders, receivers, weights, edge_mask),
                            cell_graph=cg)
        out = model.apply({"params": params}, tokens, deterministic=True)
        return (out.cls_embedding.astype(jnp.float32), out.mean_embedding.astype(jnp.float32),
                out.hidden.astype(jnp.float32))

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

    return jax.jit(make_inference_fn(build_model(model_config), with_cell_graph))
