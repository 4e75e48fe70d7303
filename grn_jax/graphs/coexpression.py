"""Co-expression graphs and GRNFormer's edge perturbation, as pure JAX functions.

GRNFormer §3.2, eq. 3: the co-expression graph of a cell links every pair of its
expressed genes, G_co = {(u, v) : x_u > 0 and x_v > 0, u != v}. During training a
fraction alpha (0.2) of each cell's edges is replaced by pairs drawn from G_co, so
genes without regulatory annotation still get message passing; the ablation
replaces them by uniformly random pairs of the cell's gene tokens instead.

Conventions (all static shapes; jit/vmap-able; no Python loop over cells):
- Positions index the cell's tokens; position 0 is CLS and is never an endpoint.
- Exactly m_b = floor(alpha * |E_b|) edges of cell b are replaced, |E_b| its real
  (edge_mask) edges, floor taken on the exact decimal value of alpha (0.2 * 15 = 3,
  not 2.9999...); the replaced slots are a uniform random subset of the real ones.
  A cell with fewer than two candidate endpoints cannot form a pair and keeps its
  edges (m_b = 0); `num_replaced` gives the exact count per cell.
- A new pair (u, v) is uniform over ordered pairs of distinct candidates; it keeps
  the weight of the slot it replaces (the cell's weight mass is unchanged) and may
  coincide with an existing edge, as in the paper's sampling from G_co.
- Padding slots (edge_mask False) are returned unchanged.
"""

from __future__ import annotations

import fractions
import math

import jax
import jax.numpy as jnp
import numpy as np

from grn_jax.types import BinSpec, GraphBatch, TokenBatch

MODES = ("coexpression", "random")


def expressed_positions(batch: TokenBatch, bin_spec: BinSpec) -> jax.Array:
    """bool [B, S]: positions whose *visible* bin is an expressed bin (1..n_bins-1).

    Masked positions (MASK id) do not count: G_co is built from the masked input, as
    GRNFormer's Algorithm 1 does; reading their true bins from `targets` would leak
    the MLM targets into the graph.
    """
    pos = jnp.arange(batch.gene_ids.shape[1])[None, :]
    bins = jnp.asarray(batch.bins)
    return jnp.asarray(batch.token_mask, bool) & (pos >= 1) & (bins >= 1) & (bins < bin_spec.n_bins)


def coexpression_adjacency(expressed_BxS: jax.Array) -> jax.Array:
    """bool [B, S, S]: eq. 3 as a dense adjacency, (u, v) with both expressed, u != v, CLS excluded."""
    pos = jnp.arange(expressed_BxS.shape[1])
    ok_BxS = expressed_BxS & (pos >= 1)[None, :]
    eye_SxS = pos[:, None] == pos[None, :]
    return ok_BxS[:, :, None] & ok_BxS[:, None, :] & ~eye_SxS[None]


def _floor_table(alpha: float, max_edges: int) -> np.ndarray:
    """floor(alpha * n) for n = 0..max_edges, exact in decimal (static alpha)."""
    a = fractions.Fraction(repr(float(alpha)))
    return np.array([math.floor(a * n) for n in range(max_edges + 1)], np.int32)


def num_replaced(graph: GraphBatch, candidates_BxS: jax.Array, alpha: float = 0.2) -> jax.Array:
    """int32 [B]: how many edges `perturb_edges` replaces in each cell."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    n_edges_B = jnp.sum(graph.edge_mask, axis=1)
    table = jnp.asarray(_floor_table(alpha, graph.edge_mask.shape[1]))
    pos = jnp.arange(candidates_BxS.shape[1])
    n_cand_B = jnp.sum(candidates_BxS & (pos >= 1)[None, :], axis=1)
    return jnp.where(n_cand_B >= 2, table[n_edges_B], 0).astype(jnp.int32)


def _sample_pairs(key, candidates_BxS, num_edges):
    """Uniform ordered pairs (u, v), u != v, of candidate positions; [B, E] each (garbage if < 2)."""
    b, s = candidates_BxS.shape
    n_B = jnp.sum(candidates_BxS, axis=1)
    # Candidate positions first, in order: sorted_pos[b, j] is the j-th candidate of cell b.
    sorted_pos_BxS = jnp.argsort(~candidates_BxS, axis=1, stable=True).astype(jnp.int32)
    k_u, k_v = jax.random.split(key)
    u_rank = jnp.floor(jax.random.uniform(k_u, (b, num_edges)) * n_B[:, None]).astype(jnp.int32)
    v_rank = jnp.floor(jax.random.uniform(k_v, (b, num_edges)) * (n_B[:, None] - 1)).astype(jnp.int32)
    u_rank = jnp.clip(u_rank, 0, jnp.maximum(n_B[:, None] - 1, 0))
    v_rank = jnp.clip(v_rank, 0, jnp.maximum(n_B[:, None] - 2, 0))
    v_rank = jnp.where(v_rank >= u_rank, v_rank + 1, v_rank)  # skip u: uniform over the others
    v_rank = jnp.minimum(v_rank, s - 1)
    u = jnp.take_along_axis(sorted_pos_BxS, u_rank, axis=1)
    v = jnp.take_along_axis(sorted_pos_BxS, v_rank, axis=1)
    return u, v


def perturb_edges(key: jax.Array, graph: GraphBatch, token_mask_BxS: jax.Array, expressed_BxS: jax.Array,
                  alpha: float = 0.2, mode: str = "coexpression") -> GraphBatch:
    """Replace floor(alpha * |E_b|) real edges of every cell b by new pairs (module docstring).

    mode="coexpression": pairs of expressed genes (eq. 3) -- `expressed_BxS`, e.g.
    from `expressed_positions`; mode="random": pairs of any of the cell's gene tokens
    (`token_mask_BxS` minus CLS) -- the random-edge ablation. `alpha` and `mode` are
    static. Each cell's result depends only on its own row and its slice of `key`'s
    draws; padding slots are untouched.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    b, e = graph.edge_mask.shape
    pos = jnp.arange(token_mask_BxS.shape[1])
    base_BxS = expressed_BxS & token_mask_BxS if mode == "coexpression" else token_mask_BxS
    cand_BxS = base_BxS & (pos >= 1)[None, :]
    m_B = num_replaced(graph, cand_BxS, alpha)
    k_pick, k_pair = jax.random.split(key)
    # A uniform random subset of m_b real edges: the m_b smallest of iid uniforms over real slots.
    score_BxE = jnp.where(graph.edge_mask, jax.random.uniform(k_pick, (b, e)), 2.0)
    order_BxE = jnp.argsort(score_BxE, axis=1)  # stable: ties in the float draws cannot change the count
    chosen_sorted_BxE = jnp.arange(e)[None, :] < m_B[:, None]
    replace_BxE = jnp.zeros((b, e), bool).at[jnp.arange(b)[:, None], order_BxE].set(chosen_sorted_BxE)
    replace_BxE = replace_BxE & graph.edge_mask
    u_BxE, v_BxE = _sample_pairs(k_pair, cand_BxS, e)
    return GraphBatch(
        senders=jnp.where(replace_BxE, u_BxE, graph.senders).astype(jnp.int32),
        receivers=jnp.where(replace_BxE, v_BxE, graph.receivers).astype(jnp.int32),
        weights=graph.weights,
        edge_mask=graph.edge_mask,
    )
