"""Attention analysis: the TF enrichment ratio rho with a permutation null (papers/grnformer.txt §4.6).

The read-out is pure: it re-runs the checkpoint's own modules deterministically
with the 'intermediates' collection mutable, where `MultiHeadAttention` sows its
attention probabilities, and reads one layer's weights a_ij^(h):
- a GRNFormer model (config.adapter set): the fusion cross-attention (the paper's
  choice: queries from the expression stream, keys from the GNN encoder);
- otherwise the last encoder layer's self-attention (GDKA or vanilla).
Per cell, phi_j = 1/(H N) sum_h sum_i a_ij over its N real gene queries i
(CLS excluded as query; phi is read at gene keys j only). Then

    rho      = mean phi over TF gene tokens / mean over non-TF gene tokens (pooled over cells)
    rho_gene = the same over genes, each gene's phi averaged over the cells it is a token of

and the null of rho_gene: TF labels permuted among the genes present
(`metrics.permutation_null`), one-sided p-value.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import anndata
import jax
import jax.numpy as jnp
import numpy as np

from grn_jax.inference.checkpoint import Pretrained
from grn_jax.inference.graph_sources import GraphSpec
from grn_jax.tasks.features import load_checkpoint, read_data
from grn_jax.tasks.metrics import enrichment_ratio, permutation_null
from grn_jax.tasks.results import TaskResult


def read_attention(intermediates, has_adapter: bool):
    """The analysed layer's attention weights [B, H, S(query), T(key)] from the sown intermediates."""
    if has_adapter:
        (w,) = intermediates["adapter"]["fusion"]["weights"]
        return w
    enc = intermediates["encoder"]
    last = max(enc, key=lambda k: int(k.split("_")[-1]))  # runs layers_0, layers_1, ... in depth order
    (w_LxBxHxSxT,) = enc[last]["attention"]["weights"]  # scanned: leading layer axis
    return w_LxBxHxSxT[-1]


def importance(w_BxHxSxT, token_mask_BxS) -> jax.Array:
    """phi [B, S]: mean over heads and real gene queries of the attention each key receives; 0 off genes."""
    from grn_jax.models import gene_token_mask

    genes_BxS = gene_token_mask(token_mask_BxS.astype(bool))
    n_B = jnp.maximum(genes_BxS.sum(axis=1), 1).astype(jnp.float32)
    summed_BxT = jnp.einsum("bhst,bs->bt", w_BxHxSxT.astype(jnp.float32), genes_BxS.astype(jnp.float32))
    return jnp.where(genes_BxS, summed_BxT / (w_BxHxSxT.shape[1] * n_B[:, None]), 0.0)


@functools.lru_cache(maxsize=8)
def importance_fn(model_config) -> Callable:
    """jit(fn(params, *inference arrays) -> phi [B, S]) for this config (one compile per bucket shape)."""
    from grn_jax.models import build_model
    from grn_jax.types import GraphBatch, TokenBatch

    model = build_model(model_config)
    has_adapter = model_config.adapter is not None
    if model_config.attention_impl != "xla":
        raise ValueError("attention analysis needs materialised weights; use attention_impl='xla' "
                         f"(the checkpoint uses {model_config.attention_impl!r})")

    def fn(params, gene_ids, bins, token_mask, senders, receivers, weights, edge_mask, *cell_graph):
        zeros = jnp.zeros(gene_ids.shape, jnp.int32)  # cell_graph: the 4 cell-graph arrays of a hybrid model
        tokens = TokenBatch(gene_ids=gene_ids, bins=bins, targets=zeros, loss_mask=zeros.astype(bool),
                            token_mask=token_mask, graph=GraphBatch(senders, receivers, weights, edge_mask),
                            cell_graph=GraphBatch(*cell_graph) if cell_graph else None)
        _, state = model.apply({"params": params}, tokens, deterministic=True, mutable=["intermediates"])
        return importance(read_attention(state["intermediates"], has_adapter), token_mask)

    return jax.jit(fn)


def gene_importance(pre: Pretrained, adata: anndata.AnnData, *, graph: GraphSpec,
                    batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(phi sum, token count, degree sum) per vocabulary id, and counts, over every cell of `adata`.

    A token's degree is its number of edge endpoints in the cell's graph (GRNFormer Fig. 5B).
    """
    from grn_jax.data.ingest import open_counts
    from grn_jax.inference.graph_sources import build_graph_source, check_graph_matches_training
    from grn_jax.inference.model_fn import batch_arrays
    from grn_jax.inference.tokens import TrainingTokenizer

    tok = TrainingTokenizer.from_record(pre.tokenization, pre.vocab)
    check_graph_matches_training(graph, pre.tokenization.get("graph"), f"checkpoint {pre.run_dir}")
    fn = importance_fn(pre.model_config)
    ingest = tok.ingest_config(backed=False, cell_type_column=None)
    src = open_counts(adata, ingest)
    col_ids, _ = tok.column_map(src)
    gsrc, _ = build_graph_source(graph, pre.vocab, src, 4096, log=lambda m: None)
    csrc = None
    if tok.with_cell_graph:  # hybrid checkpoint: training's thresholds, type chosen without the label
        from grn_jax.inference.graph_sources import build_cell_graph_source

        csrc, _ = build_cell_graph_source(graph, pre.tokenization.get("cell_graph"), pre.vocab, src, 4096, gsrc,
                                          log=lambda m: None)
    v = len(pre.vocab)
    phi_sum, n_tok, deg_sum = np.zeros(v), np.zeros(v, np.int64), np.zeros(v)
    empty = 0
    for start, block in src.chunks(4096):
        t = tok.tokenize(block, start, col_ids, src, ingest=ingest, graph_source=gsrc, cell_graph_source=csrc)
        empty += int((t.lengths == 0).sum())
        for batch, pos in tok.batches(t, batch_size):
            phi = np.asarray(jax.device_get(fn(pre.params, *batch_arrays(batch.tokens, tok.with_cell_graph))), np.float64)
            k = len(pos)
            ids, mask = np.asarray(batch.tokens.gene_ids[:k]), np.asarray(batch.tokens.token_mask[:k]).copy()
            mask[:, 0] = False
            np.add.at(phi_sum, ids[mask], phi[:k][mask])
            np.add.at(n_tok, ids[mask], 1)
            g = batch.tokens.graph
            deg_BxS = np.zeros(ids.shape)
            rows_BxE = np.broadcast_to(np.arange(k)[:, None], g.senders[:k].shape)
            valid = np.asarray(g.edge_mask[:k])
            np.add.at(deg_BxS, (rows_BxE[valid], np.asarray(g.senders[:k])[valid]), 1)
            np.add.at(deg_BxS, (rows_BxE[valid], np.asarray(g.receivers[:k])[valid]), 1)
            np.add.at(deg_sum, ids[mask], deg_BxS[mask])
    src.close()
    return phi_sum, n_tok, deg_sum, {"cells": int(src.n_cells), "cells_without_tokens": empty}


def evaluate_attention(checkpoint: Union[str, Path, Pretrained], data: Union[str, Path, anndata.AnnData], *,
                       graph: GraphSpec = GraphSpec(), tfs: Optional[Sequence[str]] = None,
                       tf_column: Optional[str] = None, n_perm: int = 1000, batch_size: int = 32, seed: int = 0,
                       log: Callable[[str], None] = print) -> TaskResult:
    """TF enrichment of attention (module docstring). TFs: `tfs` names, a bool var column `tf_column`, or
    (neither) the bundled human TF list. Returns a `TaskResult` named "attention"."""
    from grn_jax.resources import human_tfs

    adata = read_data(data)
    pre = load_checkpoint(checkpoint)
    if tfs is not None and tf_column is not None:
        raise ValueError("attention: give either tfs (names) or tf_column (a var column), not both")
    if tf_column is not None:
        if tf_column not in adata.var.columns:
            raise ValueError(f"attention: var has no column {tf_column!r}; columns: {list(adata.var.columns)[:20]}")
        tf_names = adata.var_names[np.asarray(adata.var[tf_column]).astype(bool)].tolist()
        source = f"var[{tf_column!r}]"
    else:
        tf_names = list(tfs) if tfs is not None else human_tfs()
        source = "given list" if tfs is not None else "bundled human TF list (grnndata TF.txt)"
    ids = pre.vocab.lookup(tf_names)
    is_tf_vocab = np.zeros(len(pre.vocab), bool)
    is_tf_vocab[ids[ids >= 0]] = True
    phi_sum, n_tok, deg_sum, counts = gene_importance(pre, adata, graph=graph, batch_size=batch_size)
    present = n_tok > 0
    counts.update({"tf_names_given": len(tf_names), "tf_names_not_in_vocab": int((ids < 0).sum()),
                   "genes_seen": int(present.sum()), "tf_genes_seen": int((present & is_tf_vocab).sum()),
                   "gene_tokens": int(n_tok.sum())})
    if not (present & is_tf_vocab).any() or not (present & ~is_tf_vocab).any():
        raise ValueError(f"attention: need TF and non-TF genes among the tokens; counts: {counts}. Pass the TFs "
                         "of your organism (tfs= / --tf-column)")
    gene_phi = phi_sum[present] / n_tok[present]
    gene_tf = is_tf_vocab[present]
    token_rho = float((phi_sum[is_tf_vocab].sum() / n_tok[is_tf_vocab].sum())
                      / (phi_sum[~is_tf_vocab].sum() / n_tok[~is_tf_vocab].sum()))
    null = permutation_null(gene_phi, gene_tf, n_perm=n_perm, seed=seed)
    layer = "fusion cross-attention" if pre.model_config.adapter is not None else "last encoder self-attention"
    metrics = {"tf_enrichment": {"grn_jax": {"rho": token_rho, "rho_gene": enrichment_ratio(gene_phi, gene_tf),
                                             "null_mean": null["null_mean"], "null_sd": null["null_sd"],
                                             "p_value": null["p_value"]}}}
    tokens = np.asarray(pre.vocab.tokens)[np.flatnonzero(present)]
    details = {"genes": tokens.tolist(), "phi": gene_phi.tolist(), "is_tf": gene_tf.tolist(),
               "tokens_per_gene": n_tok[present].tolist(),
               "mean_degree": (deg_sum[present] / n_tok[present]).tolist()}
    settings = {"checkpoint": pre.run_dir, "layer": layer, "tf_source": source, "n_perm": n_perm, "seed": seed,
                "rho": "token-pooled mean phi of TF / non-TF gene tokens", "rho_gene": "over genes (phi averaged "
                "over cells); its null permutes TF labels among the genes seen"}
    return TaskResult("attention", metrics, counts, settings, details)
