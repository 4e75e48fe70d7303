"""GNN structure encoders on jraph: GraphSAGE (with neighbour sampling), GCN and GIN.

GRNFormer's structure encoder (papers/grnformer.txt §3.2, eq. 2; Table 5 for
the GCN/GIN ablation). A batch of per-cell graphs over token positions becomes
one flat `jraph.GraphsTuple` of B*S nodes plus one sink node that absorbs every
masked edge slot, so segment reductions never see padding and all shapes are
static. Graphs are treated as undirected (each GRN edge lets information flow
both ways, matching the symmetrised Laplacian of GDKA).

  sage: h_v' = relu(W [h_v || AGG_{u in N_s(v)} h_u]), N_s = a fixed-size
        uniform sample of v's neighbours (resampled per layer), AGG = mean | max
  gcn:  h' = relu(D^-1/2 (A + I) D^-1/2 h W)           (Kipf & Welling)
  gin:  h_v' = relu(MLP((1 + eps) h_v + sum_{u in N(v)} h_u)), eps learnt

Input features (gene-ID embeddings, initialised at std 0.02) are layer-normalised
to unit scale and projected to d_model, then the layers run under `nn.scan`:
without the normalisation every layer sees ~0.02-scale inputs and the encoding
carries almost nothing to the fusion attention. Outputs are zero at positions
that are not graph nodes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from grn_jax import axes
from grn_jax._compat import jraph
from grn_jax.models import sampling
from grn_jax.models.blocks import dense


def flat_graph(nodes_BxSxF, senders_BxN, receivers_BxN, mask_BxN) -> "jraph.GraphsTuple":
    """B per-cell graphs -> one GraphsTuple with B*S nodes + 1 sink node for masked slots.

    `n_node` = [S]*B + [1]; `n_edge` counts real edges per cell (masked slots are
    attributed to the sink graph). Node b*S + i is position i of cell b.
    """
    b, s, f = nodes_BxSxF.shape
    sink = b * s
    offset_Bx1 = (jnp.arange(b, dtype=jnp.int32) * s)[:, None]
    snd = jnp.where(mask_BxN, senders_BxN + offset_Bx1, sink).reshape(-1)
    rcv = jnp.where(mask_BxN, receivers_BxN + offset_Bx1, sink).reshape(-1)
    nodes = jnp.concatenate([nodes_BxSxF.reshape(b * s, f), jnp.zeros((1, f), nodes_BxSxF.dtype)], axis=0)
    real_B = mask_BxN.sum(axis=1).astype(jnp.int32)
    n_edge = jnp.concatenate([real_B, (mask_BxN.size - real_B.sum())[None].astype(jnp.int32)])
    n_node = jnp.concatenate([jnp.full((b,), s, jnp.int32), jnp.ones((1,), jnp.int32)])
    return jraph.GraphsTuple(nodes=nodes, edges=None, senders=snd, receivers=rcv, globals=None,
                             n_node=n_node, n_edge=n_edge)


def unflatten_nodes(graph, b: int, s: int):
    """Drop the sink node and restore [B, S, F]."""
    return graph.nodes[: b * s].reshape(b, s, -1)


def sampled_graph(nodes_BxSxF, nbr_BxSxK, nbr_mask_BxSxK):
    """Edges neighbour -> node from a [B, S, K] neighbour table, as a flat GraphsTuple."""
    b, s, k = nbr_BxSxK.shape
    rcv_BxSxK = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32)[None, :, None], (b, s, k))
    return flat_graph(nodes_BxSxF, nbr_BxSxK.reshape(b, s * k), rcv_BxSxK.reshape(b, s * k),
                      nbr_mask_BxSxK.reshape(b, s * k))


class GNNLayer(nn.Module):
    """One message-passing layer (`kind` = sage | gcn | gin); scannable `(h, edges, seed_B) -> (h, None)`."""

    kind: str
    features: int
    aggregator: str = "mean"
    fanout: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_BxSxF, edges, seed_B):
        snd_BxN, rcv_BxN, valid_BxN, gene_ids_BxS = edges
        b, s, _ = h_BxSxF.shape
        names = (axes.EMBED, axes.MLP)
        if self.kind == "sage":
            nbr, nbr_mask = sampling.sample_neighbors(snd_BxN, rcv_BxN, valid_BxN, gene_ids_BxS, seed_B,
                                                      self.fanout)
            g = sampled_graph(h_BxSxF, nbr, nbr_mask)
            n = g.nodes.shape[0]
            msgs = g.nodes[g.senders]
            if self.aggregator == "mean":
                agg = jraph.segment_mean(msgs, g.receivers, n)
            else:
                agg = jraph.segment_max_or_constant(msgs, g.receivers, n, constant=0.0)
            agg_BxSxF = agg[: b * s].reshape(b, s, -1)
            out = dense(self.features, names, "w", self.dtype)(jnp.concatenate([h_BxSxF, agg_BxSxF], axis=-1))
        elif self.kind == "gcn":
            g = flat_graph(h_BxSxF, snd_BxN, rcv_BxN, valid_BxN)
            conv = jraph.GraphConvolution(update_node_fn=dense(self.features, names, "w", self.dtype),
                                          add_self_edges=True, symmetric_normalization=True)
            out = unflatten_nodes(conv(g), b, s)
        elif self.kind == "gin":
            g = flat_graph(h_BxSxF, snd_BxN, rcv_BxN, valid_BxN)
            n = g.nodes.shape[0]
            agg_BxSxF = jraph.segment_sum(g.nodes[g.senders], g.receivers, n)[: b * s].reshape(b, s, -1)
            eps = self.param("eps", nn.with_logical_partitioning(nn.initializers.zeros, ()), ())
            z = (1.0 + eps) * h_BxSxF + agg_BxSxF
            z = nn.relu(dense(self.features, names, "mlp_in", self.dtype)(z))
            out = dense(self.features, (axes.MLP, axes.EMBED), "mlp_out", self.dtype)(z)
        else:
            raise ValueError(f"GNN kind must be sage | gcn | gin, got {self.kind!r}")
        return nn.relu(out).astype(self.dtype), None


class GNNEncoder(nn.Module):
    """Encode per-cell graphs: node features [B, S, F] -> [B, S, features], zero off the graph nodes."""

    kind: str = "sage"
    features: int = 64
    layers: int = 2
    aggregator: str = "mean"
    fanout: int = 10
    dtype: Any = jnp.float32
    layer_norm_eps: float = 1e-5

    @nn.compact
    def __call__(self, feats_BxSxF, senders_BxE, receivers_BxE, edge_mask_BxE, node_mask_BxS, gene_ids_BxS,
                 seeds_LxB):
        """`seeds_LxB` (uint32, one row per layer) drive GraphSAGE sampling; ignored by gcn/gin."""
        if seeds_LxB.shape[0] != self.layers:
            raise ValueError(f"seeds_LxB must have one row per GNN layer ({self.layers}), got {seeds_LxB.shape}")
        edges = (*sampling.undirected_edges(senders_BxE, receivers_BxE, edge_mask_BxE, node_mask_BxS),
                 gene_ids_BxS)
        feats_BxSxF = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="ln_input",
                                   scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
                                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)))(
            feats_BxSxF)
        h = dense(self.features, (axes.EMBED, axes.MLP), "input", self.dtype)(feats_BxSxF)
        stack = nn.scan(GNNLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast, 0), length=self.layers, metadata_params={nn.PARTITION_NAME: None})
        h, _ = stack(self.kind, self.features, self.aggregator, self.fanout, self.dtype, name="layers")(
            h, edges, seeds_LxB)
        return jnp.where(node_mask_BxS[..., None], h, 0)
