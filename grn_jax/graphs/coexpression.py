"""Co-expression graphs and GRNFormer's edge perturbation, as pure JAX functions.

GRNFormer §3.2, eq. 3: the co-expression graph of a cell links every pair of its
expressed genes, G_co = {(u, v) : x_u > 0 and x_v > 0, u != v}. Our tokens *are* a
cell's expressed genes (plus, optionally, bin-0 network neighbours), so eq. 3 read
literally is "any two unmasked tokens" and differs from the random-edge ablation
("any two tokens") only by the masked positions. Co-expression is therefore given
meaning at the dataset level: `CoexpressionAccumulator` (run by `prepare`) keeps,
for every gene, its `k` most correlated partners across the dataset's cells
(Pearson on log1p CP10k, r >= `min_corr`), and each cell's batch carries the
partner pairs among its own tokens (`TokenBatch.coexpr_graph`, built by `collate`).

During training a fraction alpha (0.2) of each cell's edges is replaced by:
- mode "coexpression" with partners: a pair drawn uniformly from the cell's partner
  pairs whose two ends are both visibly expressed (G_co of eq. 3 intersected with the
  dataset's co-expression table), in a random orientation; without a partner table
  (`partners=None`): eq. 3 itself (ordered pairs of visibly expressed tokens);
- mode "random": a uniformly random ordered pair of the cell's gene tokens, masked
  and bin-0 tokens included -- mostly pairs co-expression never draws (a random
  pair is a partner pair with probability 2|P_b| / (n_b (n_b - 1)), tested).

Conventions (all static shapes; jit/vmap-able; no Python loop over cells):
- Positions index the cell's tokens; position 0 is CLS and is never an endpoint.
- Exactly m_b = floor(alpha * |E_b|) edges of cell b are replaced, |E_b| its real
  (edge_mask) edges, floor taken on the exact decimal value of alpha (0.2 * 15 = 3,
  not 2.9999...); the replaced slots are a uniform random subset of the real ones.
  A cell that cannot form a candidate pair (fewer than two candidate endpoints, or
  no usable partner pair) keeps its edges (m_b = 0); `num_replaced` /
  `num_replaced_pairs` give the exact count per cell.
- A new pair keeps the weight of the slot it replaces (the cell's weight mass is
  unchanged) and may coincide with an existing edge, as in the paper's sampling from G_co.
- Padding slots (edge_mask False) are returned unchanged.
"""

from __future__ import annotations

import fractions
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

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


def usable_partner_pairs(partners: GraphBatch, expressed_BxS: jax.Array) -> jax.Array:
    """bool [B, P]: partner slots whose two (distinct, non-CLS) ends are both visibly expressed."""
    ex_BxS = jnp.asarray(expressed_BxS, bool) & (jnp.arange(expressed_BxS.shape[1]) >= 1)[None, :]
    s_BxP, r_BxP = jnp.asarray(partners.senders), jnp.asarray(partners.receivers)
    return (jnp.asarray(partners.edge_mask, bool) & (s_BxP != r_BxP)
            & jnp.take_along_axis(ex_BxS, s_BxP, axis=1) & jnp.take_along_axis(ex_BxS, r_BxP, axis=1))


def num_replaced_pairs(graph: GraphBatch, usable_BxP: jax.Array, alpha: float = 0.2) -> jax.Array:
    """int32 [B]: edges replaced per cell when the candidates are pair slots (`usable_partner_pairs`)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    table = jnp.asarray(_floor_table(alpha, graph.edge_mask.shape[1]))
    m_B = table[jnp.sum(graph.edge_mask, axis=1)]
    return jnp.where(jnp.any(usable_BxP, axis=1), m_B, 0).astype(jnp.int32)


def _sample_partner_pairs(key, partners: GraphBatch, usable_BxP, num_edges):
    """[B, E] pairs drawn uniformly from each cell's usable partner slots, each in a random orientation."""
    b, p = usable_BxP.shape
    n_B = jnp.sum(usable_BxP, axis=1)
    sorted_slot_BxP = jnp.argsort(~usable_BxP, axis=1, stable=True).astype(jnp.int32)
    k_slot, k_flip = jax.random.split(key)
    rank = jnp.floor(jax.random.uniform(k_slot, (b, num_edges)) * n_B[:, None]).astype(jnp.int32)
    rank = jnp.clip(rank, 0, jnp.maximum(n_B[:, None] - 1, 0))
    slot = jnp.take_along_axis(sorted_slot_BxP, jnp.minimum(rank, p - 1), axis=1)
    s = jnp.take_along_axis(jnp.asarray(partners.senders), slot, axis=1)
    r = jnp.take_along_axis(jnp.asarray(partners.receivers), slot, axis=1)
    flip = jax.random.bernoulli(k_flip, 0.5, (b, num_edges))
    return jnp.where(flip, r, s), jnp.where(flip, s, r)


def perturb_edges(key: jax.Array, graph: GraphBatch, token_mask_BxS: jax.Array, expressed_BxS: jax.Array,
                  alpha: float = 0.2, mode: str = "coexpression", partners: Optional[GraphBatch] = None) -> GraphBatch:
    """Replace floor(alpha * |E_b|) real edges of every cell b by new pairs (module docstring).

    mode="coexpression": with `partners` (the cell's dataset co-expression partner
    pairs over its token positions, `TokenBatch.coexpr_graph`), pairs of those whose
    ends are both in `expressed_BxS`; without, pairs of expressed genes (eq. 3);
    mode="random": pairs of any of the cell's gene tokens (`token_mask_BxS` minus
    CLS) -- the random-edge ablation. `alpha` and `mode` are static. Each cell's
    result depends only on its own row and its slice of `key`'s draws; padding
    slots are untouched.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    b, e = graph.edge_mask.shape
    pos = jnp.arange(token_mask_BxS.shape[1])
    k_pick, k_pair = jax.random.split(key)
    if mode == "coexpression" and partners is not None:
        usable_BxP = usable_partner_pairs(partners, expressed_BxS & token_mask_BxS)
        m_B = num_replaced_pairs(graph, usable_BxP, alpha)
        u_BxE, v_BxE = _sample_partner_pairs(k_pair, partners, usable_BxP, e)
    else:
        base_BxS = expressed_BxS & token_mask_BxS if mode == "coexpression" else token_mask_BxS
        cand_BxS = base_BxS & (pos >= 1)[None, :]
        m_B = num_replaced(graph, cand_BxS, alpha)
        u_BxE, v_BxE = _sample_pairs(k_pair, cand_BxS, e)
    # A uniform random subset of m_b real edges: the m_b smallest of iid uniforms over real slots.
    score_BxE = jnp.where(graph.edge_mask, jax.random.uniform(k_pick, (b, e)), 2.0)
    order_BxE = jnp.argsort(score_BxE, axis=1)  # stable: ties in the float draws cannot change the count
    chosen_sorted_BxE = jnp.arange(e)[None, :] < m_B[:, None]
    replace_BxE = jnp.zeros((b, e), bool).at[jnp.arange(b)[:, None], order_BxE].set(chosen_sorted_BxE)
    replace_BxE = replace_BxE & graph.edge_mask
    return GraphBatch(
        senders=jnp.where(replace_BxE, u_BxE, graph.senders).astype(jnp.int32),
        receivers=jnp.where(replace_BxE, v_BxE, graph.receivers).astype(jnp.int32),
        weights=graph.weights,
        edge_mask=graph.edge_mask,
    )


# --- the dataset-level co-expression partner table (host side, numpy; built by `prepare`) ---

PARTNERS_FILE = "coexpression_partners.npz"


class CoexpressionAccumulator:
    """Streams CSR count blocks (columns = vocabulary ids) and yields each gene's top-k co-expressed partners.

    Pearson correlation of log1p(CP10k) over all added cells, from running sums and a
    dense Gram matrix over at most `max_genes` genes (the `genes` given: e.g. the most
    often detected), so memory is max_genes^2 float64 whatever the cell count.
    """

    def __init__(self, genes: np.ndarray, num_columns: int):
        self.genes = np.asarray(genes, np.int64)
        self._col = np.full(num_columns, -1, np.int64)
        self._col[self.genes] = np.arange(len(self.genes))
        g = len(self.genes)
        self.n = 0
        self.sum_G = np.zeros(g)
        self.gram_GxG = np.zeros((g, g))

    def add(self, counts_CxV: sp.csr_matrix, totals_C: np.ndarray) -> None:
        x = sp.csr_matrix(counts_CxV, dtype=np.float64)
        scale = 1e4 / np.maximum(np.asarray(totals_C, np.float64), 1e-12)
        x = sp.csr_matrix(sp.diags(scale) @ x)
        x.data = np.log1p(x.data)
        x = x[:, self.genes]  # column subset (dense Gram only over the tracked genes)
        self.n += x.shape[0]
        self.sum_G += np.asarray(x.sum(axis=0)).ravel()
        self.gram_GxG += (x.T @ x).toarray()

    def partners(self, k: int, min_corr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(src, dst, r): unordered partner pairs (vocabulary ids, src < dst) where either end has the other
        among its k highest correlations and r >= min_corr."""
        if k < 1 or self.n < 3:
            return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
        mu = self.sum_G / self.n
        cov = self.gram_GxG / self.n - np.outer(mu, mu)
        sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / np.outer(sd, sd)
        r[~np.isfinite(r)] = -np.inf  # constant genes have no partners
        np.fill_diagonal(r, -np.inf)
        kk = min(k, max(len(self.genes) - 1, 1))
        top = np.argpartition(-r, kk - 1, axis=1)[:, :kk]
        rows = np.repeat(np.arange(len(self.genes)), kk)
        cols = top.ravel()
        keep = r[rows, cols] >= min_corr
        a, b = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
        pair = np.unique(a * len(self.genes) + b)
        a, b = pair // len(self.genes), pair % len(self.genes)
        return (self.genes[a].astype(np.int32), self.genes[b].astype(np.int32), r[a, b].astype(np.float32))


class PartnerTable:
    """The partner pairs over vocabulary ids as a symmetric sparse matrix; `cell_pairs` maps them to positions."""

    def __init__(self, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, num_genes: int):
        self.src, self.dst, self.weight = (np.asarray(src, np.int32), np.asarray(dst, np.int32),
                                           np.asarray(weight, np.float32))
        self.num_genes = int(num_genes)
        self.upper = sp.csr_matrix((self.weight, (self.src, self.dst)), shape=(num_genes, num_genes))

    @staticmethod
    def load(path) -> "PartnerTable":
        with np.load(path) as z:
            return PartnerTable(z["src"], z["dst"], z["weight"], int(z["num_genes"]))

    def save(self, path) -> None:
        from grn_jax._io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, src=self.src, dst=self.dst, weight=self.weight, num_genes=np.int64(self.num_genes))

    def contains(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """bool: whether the unordered vocabulary-id pairs (a, b) are partners."""
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        return np.asarray(self.upper[lo, hi]).ravel() != 0

    def cell_pairs(self, gene_ids: np.ndarray, max_pairs: Optional[int] = None):
        """(src, dst, weight) partner pairs among one cell's tokens, as 1-based token positions, each pair
        once, strongest first (ties by position); at most `max_pairs` (the batch's edge budget).

        Runs per cell in the data loader, so it walks each token gene's stored partners (O(tokens x
        partners)) and looks the partner's position up in a vocabulary-sized array, instead of slicing a
        tokens x tokens submatrix out of the sparse table (~20x slower per batch; benchmarks/bench_loader.py).
        """
        ids = np.asarray(gene_ids, np.int64)
        ok = (ids >= 0) & (ids < self.num_genes)
        pos = np.flatnonzero(ok)
        rows = ids[ok]
        where = np.full(self.num_genes, -1, np.int64)  # vocabulary id -> its token position in this cell
        where[rows] = pos
        indptr, indices, data = self.upper.indptr, self.upper.indices, self.upper.data
        start, count = indptr[rows], indptr[rows + 1] - indptr[rows]
        # the flat index of every stored partner of every token's gene (ranges start[k] .. start[k] + count[k])
        flat = np.repeat(start - (np.cumsum(count) - count), count) + np.arange(int(count.sum()))
        a, b = np.repeat(pos, count), where[indices[flat]]
        keep = b >= 0  # the partner is among the cell's tokens
        a, b, w = a[keep], b[keep], data[flat][keep]
        order = np.lexsort((b, a, -w))
        if max_pairs is not None:
            order = order[:max_pairs]
        return ((a[order] + 1).astype(np.int32), (b[order] + 1).astype(np.int32), w[order].astype(np.float32))
