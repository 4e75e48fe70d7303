"""GRNFormer structure adapter (papers/grnformer.txt §3.2, Algorithm 1 lines 9-20).

    h_cell   = GNN(LN(E_gene), G_cell)    (cell-specific graph, `batch.cell_graph`)
    h_type   = GNN(LN(E_gene), G_type)    (cell-type graph, `batch.graph`), same weights
    h_struct = LN(h_cell + h_type)
    h_fusion = CrossAttn(q = norm(h_expr), k = v = h_struct)
    h        = h_expr + fusion_beta * h_fusion

It replaces the backbone's final transformer layer (§4.1 "Architectures").
Node features are the backbone's gene-ID embeddings (shared table; or, with
`adapter.node_features = "token"`, the [gene || visible bin] token embeddings, so
neighbours' expression flows along the edges), normalised
to unit scale inside the GNN; the structure encodings are normalised again
before the key/value projections. Without the two LayerNorms (the gene table is
initialised at std 0.02) the fusion attention is uniform at init (entropy /
log n = 0.99999), the fusion term is ~1 % of the residual and query/key
gradients are ~2e-3 of value/output ones (benchmarks/results/adapter.md). Keys are
the cell's real gene tokens only (CLS and padding are not graph nodes). With a
pre-LN backbone `h_expr` is the un-normalised residual stream, so the queries
see `LayerNorm(h_expr)`; with post-LN it is already normalised and used as is.

In training (`deterministic=False`) with `adapter.perturb_alpha > 0`, both
graphs get edge perturbation from `grn_jax.graphs.coexpression` (pairs from the
dataset's co-expression partner table, `batch.coexpr_graph`, or uniformly random
pairs for the ablation: `adapter.perturb_mode`)
(rng stream 'perturb'), and GraphSAGE draws fresh neighbour samples (rng
stream 'sample'). At inference the sample is a fixed function of the cell's
genes and graph (`adapter.inference_sample_seed`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from grn_jax.models import sampling
from grn_jax.models.attention import MultiHeadAttention
from grn_jax.models.blocks import layer_norm
from grn_jax.models.config import ModelConfig
from grn_jax.models.gnn import GNNEncoder
from grn_jax.types import GraphBatch, TokenBatch


def perturb_graph(key, graph: GraphBatch, batch: TokenBatch, cfg: ModelConfig) -> GraphBatch:
    """Edge perturbation of one graph scale (training-time augmentation, Algorithm 1 lines 3-8).

    Expressed genes are read from the *visible* bins (1..n_bins-1; MASK does not
    count), as Algorithm 1 builds G_co from the masked input x: reading the true
    bins of masked positions would leak the MLM targets into the graph. Co-expression
    pairs come from the batch's dataset partner pairs (`batch.coexpr_graph`); a batch
    without them (shards prepared before the partner table existed) falls back to
    eq. 3, with a warning at trace time.
    """
    import warnings  # noqa: PLC0415

    from grn_jax.graphs.coexpression import perturb_edges  # noqa: PLC0415

    bins_BxS = jnp.asarray(batch.bins)
    s = bins_BxS.shape[1]
    expressed_BxS = (jnp.asarray(batch.token_mask, bool) & (jnp.arange(s) >= 1)[None, :]
                     & (bins_BxS >= 1) & (bins_BxS < cfg.n_bins))
    partners = getattr(batch, "coexpr_graph", None)
    if cfg.adapter.perturb_mode == "coexpression" and partners is None:
        warnings.warn("co-expression edge perturbation: the batch has no dataset co-expression partners "
                      "(coexpr_graph; re-run `grn-jax prepare` to add them), so pairs are any two expressed "
                      "tokens (eq. 3), nearly the random ablation", UserWarning, stacklevel=2)
    return perturb_edges(key, graph, jnp.asarray(batch.token_mask, bool), expressed_BxS,
                         alpha=cfg.adapter.perturb_alpha, mode=cfg.adapter.perturb_mode, partners=partners)


class StructureAdapter(nn.Module):
    """GNN over both graph scales + cross-attention fusion; returns the fused hidden states [B, S, D]."""

    config: ModelConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h_expr_BxSxD, node_feats_BxSxF, batch: TokenBatch):
        """`node_feats_BxSxF`: gene-ID embeddings, or token embeddings (`AdapterConfig.node_features`)."""
        cfg, ad = self.config, self.config.adapter
        b, s = batch.gene_ids.shape
        token_mask_BxS = batch.token_mask.astype(bool)
        node_mask_BxS = token_mask_BxS & (jnp.arange(s) > 0)[None, :]
        graphs = [g for g in (batch.graph, batch.cell_graph) if g is not None]
        if not self.deterministic and ad.perturb_alpha > 0:
            keys = jax.random.split(self.make_rng("perturb"), len(graphs))
            graphs = [perturb_graph(k, g, batch, cfg) for k, g in zip(keys, graphs)]

        encoder = GNNEncoder(ad.gnn, cfg.d_model, ad.gnn_layers, ad.aggregator, ad.fanout, self.dtype,
                             cfg.layer_norm_eps, name="gnn")
        h_struct_BxSxD = jnp.zeros((b, s, cfg.d_model), self.dtype)
        for scale, g in enumerate(graphs):  # two graph scales at most, shared weights
            if self.deterministic or ad.gnn != "sage":
                seeds_LxB = sampling.fixed_seeds((ad.inference_sample_seed + scale) % 2**32, b, ad.gnn_layers)
            else:
                seeds_LxB = sampling.cell_seeds(self.make_rng("sample"), b, ad.gnn_layers)
            h_struct_BxSxD = h_struct_BxSxD + encoder(node_feats_BxSxF, g.senders, g.receivers, g.edge_mask,
                                                      node_mask_BxS, batch.gene_ids, seeds_LxB)

        # unit-scale keys/values: the summed GNN encodings are normalised per node (zero off the nodes)
        h_struct_BxSxD = jnp.where(node_mask_BxS[..., None],
                                   layer_norm(cfg, "ln_struct", self.dtype)(h_struct_BxSxD), 0)
        q_in = layer_norm(cfg, "ln_fusion", self.dtype)(h_expr_BxSxD) if cfg.norm == "pre" else h_expr_BxSxD
        fusion = MultiHeadAttention(ad.fusion_heads, kind="cross", dropout_rate=cfg.attention_dropout_rate,
                                    dtype=self.dtype, name="fusion")
        h_fusion_BxSxD = fusion(q_in, node_mask_BxS, context_BxTxD=h_struct_BxSxD,
                                deterministic=self.deterministic)
        return h_expr_BxSxD + ad.fusion_beta * h_fusion_BxSxD
