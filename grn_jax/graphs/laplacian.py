"""Symmetric normalised Laplacians of per-cell gene graphs, as batched sparse BCOO matrices.

Convention (DESIGN.md, "Numerical conventions"):

* The input is a directed, weighted edge list per cell (e.g. ARACNe regulator -> target).
  The adjacency used is the symmetrisation `A = W + W^T`, where `W[s, r]` is the SUM of the
  weights of all unmasked edges s -> r. So a one-way edge of weight w gives `A_sr = A_rs = w`;
  a reciprocal pair (w one way, v back) gives `w + v`; duplicates add up.
* Self-loops (s == r) are dropped (they would shift L's diagonal off 1); `graph_report`
  counts them. Masked edge slots contribute nothing.
* Degrees come from the symmetrised graph, `d_i = sum_j A_ij`, so a node that only ever
  appears as a target has its true degree (the public GREmLN code's source-only degrees
  give such nodes a scale of 1e4).
* `L = I - D^-1/2 A D^-1/2`; an isolated (or padding) node has `L_ii = 1`. With no
  self-loops the diagonal is exactly 1 everywhere, and the spectrum lies in [0, 2].

Storage: `BCOO` of shape [B, S, S] with one batch dimension and a static number of stored
entries `nse = 2 E + S` per cell: entries `[0, E)` are (s, r) for edge slot e, entries
`[E, 2E)` the mirrored (r, s), entries `[2E, 2E + S)` the diagonal (i, i) in node order.
Masked edges and self-loops keep their slot with value 0 (indices left in range), so the
layout depends only on (E, S) and one compiled program serves every batch. Duplicate
indices add, as BCOO semantics say. Values are float32 (float64 when x64 is enabled and
float64 weights are given).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from grn_jax.types import GraphBatch


def _compute_dtype(dtype) -> jnp.dtype:
    """float32, or float64 if the input is float64 (only possible with x64 enabled)."""
    return jnp.promote_types(jnp.dtype(dtype), jnp.float32) if jnp.issubdtype(dtype, jnp.floating) \
        else jnp.dtype(jnp.float32)


def normalized_laplacian(senders, receivers=None, weights=None, edge_mask=None, num_nodes: Optional[int] = None
                         ) -> sparse.BCOO:
    """Batched symmetric normalised Laplacian `L = I - D^-1/2 (W + W^T) D^-1/2`.

    Args:
      senders, receivers: int [B, E] node indices in [0, num_nodes) of each cell's edges;
        or pass a `grn_jax.types.GraphBatch` as the first argument (and `num_nodes=`).
      weights: float [B, E] non-negative edge weights (masked slots are ignored).
      edge_mask: bool [B, E], True for real edges.
      num_nodes: S, the number of node (token) positions per cell; static.

    Returns:
      `jax.experimental.sparse.BCOO` [B, S, S], n_batch=1, nse = 2E + S (layout in the
      module docstring). Pure, jit- and vmap-friendly. Differentiable w.r.t. `weights`.
      Validate inputs host-side with `graph_report` (indices out of range cannot raise
      under jit; negative weights would break the [0, 2] spectrum).
    """
    if isinstance(senders, GraphBatch):
        if receivers is not None or weights is not None or edge_mask is not None:
            raise ValueError("pass either a GraphBatch or (senders, receivers, weights, edge_mask), not both")
        g = senders
        senders, receivers, weights, edge_mask = g.senders, g.receivers, g.weights, g.edge_mask
    if num_nodes is None:
        raise ValueError("num_nodes (S, node positions per cell) is required")
    if receivers is None or weights is None or edge_mask is None:
        raise ValueError("senders, receivers, weights and edge_mask are all required")
    num_nodes = int(num_nodes)
    senders = jnp.asarray(senders)
    receivers = jnp.asarray(receivers)
    weights = jnp.asarray(weights)
    edge_mask = jnp.asarray(edge_mask)
    shape = senders.shape
    for name, arr in (("receivers", receivers), ("weights", weights), ("edge_mask", edge_mask)):
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape}, senders has {shape}; all edge arrays must be [B, E]")
    if len(shape) != 2:
        raise ValueError(f"edge arrays must be [B, E] (batch, edge slots), got shape {shape}")
    if not jnp.issubdtype(senders.dtype, jnp.integer) or not jnp.issubdtype(receivers.dtype, jnp.integer):
        raise ValueError(f"senders/receivers must be integer node indices, got {senders.dtype}/{receivers.dtype}")
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    dtype = _compute_dtype(weights.dtype)
    senders = senders.astype(jnp.int32)
    receivers = receivers.astype(jnp.int32)
    keep = edge_mask.astype(bool) & (senders != receivers)
    w_BxE = jnp.where(keep, weights.astype(dtype), 0)
    data, indices = jax.vmap(_one_cell, in_axes=(0, 0, 0, None))(senders, receivers, w_BxE, num_nodes)
    return sparse.BCOO((data, indices), shape=(shape[0], num_nodes, num_nodes),
                       indices_sorted=False, unique_indices=False)


def _one_cell(s_E, r_E, w_E, num_nodes: int):
    """(data [2E+S], indices [2E+S, 2]) of one cell's Laplacian; w_E already masked."""
    deg_S = (jax.ops.segment_sum(w_E, s_E, num_segments=num_nodes)
             + jax.ops.segment_sum(w_E, r_E, num_segments=num_nodes))
    inv_sqrt_S = jnp.where(deg_S > 0, jax.lax.rsqrt(jnp.where(deg_S > 0, deg_S, 1)), 0)
    off_E = -w_E * inv_sqrt_S[s_E] * inv_sqrt_S[r_E]
    nodes = jnp.arange(num_nodes, dtype=jnp.int32)
    rows = jnp.concatenate([s_E, r_E, nodes])
    cols = jnp.concatenate([r_E, s_E, nodes])
    data = jnp.concatenate([off_E, off_E, jnp.ones((num_nodes,), w_E.dtype)])
    return data, jnp.stack([rows, cols], axis=-1)


def dense_laplacian(laplacian: sparse.BCOO) -> jax.Array:
    """The dense [B, S, S] form of a Laplacian (tests and exact references only)."""
    return laplacian.todense()


def graph_report(senders, receivers=None, weights=None, edge_mask=None, num_nodes: Optional[int] = None, *,
                 node_mask=None) -> dict:
    """Validate a batch of edge lists host-side and count what the Laplacian will drop/merge.

    Raises ValueError (naming the cell, edge slot and field) for: indices outside
    [0, num_nodes), non-finite or negative weights on real edges, and — when `node_mask`
    [B, S] (True at graph-eligible positions, i.e. genes, not CLS or padding) is given —
    real edges touching a position outside the mask.
    Returns counts: `edges` (real slots), `masked_slots`, `self_loops` (dropped),
    `zero_weight` (real edges of weight 0: no effect), `duplicate_edges` (same s->r again:
    weights add), `reciprocal_pairs` (s->r and r->s both present: weights add), and
    `isolated_nodes` per batch (within `node_mask` when given).
    """
    if isinstance(senders, GraphBatch):
        g = senders
        senders, receivers, weights, edge_mask = g.senders, g.receivers, g.weights, g.edge_mask
    s = np.asarray(senders)
    r = np.asarray(receivers)
    w = np.asarray(weights)
    m = np.asarray(edge_mask).astype(bool)
    if num_nodes is None:
        raise ValueError("num_nodes is required")
    if s.ndim != 2 or any(a.shape != s.shape for a in (r, w, m)):
        raise ValueError(f"senders/receivers/weights/edge_mask must share one [B, E] shape, got "
                         f"{s.shape}/{r.shape}/{w.shape}/{m.shape}")
    for name, idx in (("senders", s), ("receivers", r)):
        bad = m & ((idx < 0) | (idx >= num_nodes))
        if bad.any():
            b, e = np.argwhere(bad)[0]
            raise ValueError(f"{name}[cell {b}, edge {e}] = {idx[b, e]} is outside [0, {num_nodes}); "
                             f"fix the edge list or mask the slot")
    bad = m & ~np.isfinite(w)
    if bad.any():
        b, e = np.argwhere(bad)[0]
        raise ValueError(f"weights[cell {b}, edge {e}] = {w[b, e]} is not finite; drop or mask that edge")
    bad = m & (w < 0)
    if bad.any():
        b, e = np.argwhere(bad)[0]
        raise ValueError(f"weights[cell {b}, edge {e}] = {w[b, e]} is negative; the normalised Laplacian "
                         f"needs non-negative weights (use |w| or mask the edge)")
    if node_mask is not None:
        nm = np.asarray(node_mask).astype(bool)
        if nm.shape != (s.shape[0], num_nodes):
            raise ValueError(f"node_mask must be [{s.shape[0]}, {num_nodes}], got {nm.shape}")
        for name, idx in (("senders", s), ("receivers", r)):
            bad = m & ~np.take_along_axis(nm, np.clip(idx, 0, num_nodes - 1), axis=1)
            if bad.any():
                b, e = np.argwhere(bad)[0]
                raise ValueError(f"{name}[cell {b}, edge {e}] = {idx[b, e]} points at a position outside the "
                                 f"cell's graph nodes (CLS or padding); remove or mask that edge")
    report = {"edges": int(m.sum()), "masked_slots": int((~m).sum()),
              "self_loops": int((m & (s == r)).sum()), "zero_weight": int((m & (w == 0)).sum()),
              "duplicate_edges": 0, "reciprocal_pairs": 0, "isolated_nodes": []}
    for b in range(s.shape[0]):
        keep = m[b] & (s[b] != r[b])
        pairs = s[b][keep].astype(np.int64) * num_nodes + r[b][keep]
        uniq = np.unique(pairs)
        report["duplicate_edges"] += int(pairs.size - uniq.size)
        rev = (uniq % num_nodes) * num_nodes + uniq // num_nodes
        report["reciprocal_pairs"] += int(np.isin(rev, uniq).sum() // 2)
        touched = np.zeros(num_nodes, bool)
        touched[s[b][keep & (w[b] > 0)]] = True
        touched[r[b][keep & (w[b] > 0)]] = True
        eligible = np.asarray(node_mask[b]).astype(bool) if node_mask is not None else np.ones(num_nodes, bool)
        report["isolated_nodes"].append(int((eligible & ~touched).sum()))
    return report
