"""Fixed-size uniform neighbour sampling for GraphSAGE, in JAX with static shapes.

GRNFormer (papers/grnformer.txt §3.2) samples a fixed number of neighbours per
node so that hub TFs (degree ~81) and sparsely regulated genes (degree ~1)
aggregate over comparable sets. Here each cell's edge list [E] is first made
undirected and de-duplicated ([2E] directed slots), then every node keeps a
uniform random subset of min(degree, fanout) distinct neighbours, without
replacement.

Randomness comes from a per-cell uint32 `seed` hashed with the *gene ids* of
the edge's endpoints: the sample depends on which genes are connected, not on
the edge's slot, the gene's token position, the bucket size or the cell's
batch-mates. So relabelling positions permutes the sample accordingly and a
fixed seed (inference) gives every cell the same neighbours alone or in any
batch. Training draws fresh per-cell seeds from a PRNG key.

Edges with `edge_mask` False, self-loops and edges touching a position that
is not a graph node (`node_mask` False: CLS or padding) are never sampled;
the last two break the graph contract and are reported host-side by
`grn_jax.graphs.graph_report`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_GOLDEN = 0x9E3779B9
_M1 = 0x85EBCA6B
_M2 = 0xC2B2AE35


def _fmix32(h):
    """MurmurHash3 finaliser: a bijective avalanche mix of uint32."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(_M1)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(_M2)
    return h ^ (h >> 16)


def edge_priority(seed, a, b):
    """uint32 pseudo-random priority of the pair (a, b) under `seed` (all uint32-castable)."""
    a = jnp.asarray(a).astype(jnp.uint32)
    b = jnp.asarray(b).astype(jnp.uint32)
    seed = jnp.asarray(seed).astype(jnp.uint32)
    h = _fmix32(seed + a * jnp.uint32(_GOLDEN))
    return _fmix32(h ^ (b * jnp.uint32(_M1) + jnp.uint32(0x27D4EB2F)))


def undirected_edges(senders_BxE, receivers_BxE, edge_mask_BxE, node_mask_BxS):
    """Symmetrised, de-duplicated directed edge slots -> (senders, receivers, mask), each [B, 2E].

    Every undirected pair {u, v} with at least one valid edge appears exactly
    once as u->v and once as v->u; slots are sorted by (receiver, sender) with
    the invalid ones last.
    """
    s = node_mask_BxS.shape[1]

    def one(snd_E, rcv_E, m_E, node_S):
        snd = jnp.concatenate([snd_E, rcv_E]).astype(jnp.int32)
        rcv = jnp.concatenate([rcv_E, snd_E]).astype(jnp.int32)
        ok = jnp.concatenate([m_E, m_E]).astype(bool) & (snd != rcv)
        ok = ok & node_S[jnp.clip(snd, 0, s - 1)] & node_S[jnp.clip(rcv, 0, s - 1)]
        ok = ok & (snd >= 0) & (snd < s) & (rcv >= 0) & (rcv < s)
        key = jnp.where(ok, rcv * s + snd, s * s)
        order = jnp.argsort(key, stable=True)
        key = key[order]
        first = jnp.concatenate([jnp.ones((1,), bool), key[1:] != key[:-1]])
        valid = (key < s * s) & first
        return snd[order], rcv[order], valid

    return jax.vmap(one)(senders_BxE, receivers_BxE, edge_mask_BxE, node_mask_BxS.astype(bool))


def sample_neighbors(senders_BxN, receivers_BxN, valid_BxN, gene_ids_BxS, seed_B, fanout: int):
    """Uniformly sample up to `fanout` distinct in-neighbours of every position.

    Takes the output of `undirected_edges` (distinct valid slots). Returns
    (neighbours int32 [B, S, fanout], mask bool [B, S, fanout]); a node of
    degree d gets min(d, fanout) valid entries first, the rest masked (index 0).
    """
    s = gene_ids_BxS.shape[1]
    fanout = int(fanout)

    def one(snd_N, rcv_N, ok_N, genes_S, seed):
        n = snd_N.shape[0]
        prio = edge_priority(seed, genes_S[snd_N], genes_S[rcv_N])
        group = jnp.where(ok_N, rcv_N, s)  # invalid slots sort after every real receiver
        order = jnp.lexsort((prio, group))
        snd_N, rcv_N, ok_N, group = snd_N[order], rcv_N[order], ok_N[order], group[order]
        degree_S = jax.ops.segment_sum(ok_N.astype(jnp.int32), group, num_segments=s + 1)[:s]
        start_S = jnp.cumsum(degree_S) - degree_S
        rank_N = jnp.arange(n, dtype=jnp.int32) - start_S[jnp.clip(group, 0, s - 1)]
        keep = ok_N & (rank_N < fanout)
        flat = jnp.where(keep, rcv_N * fanout + rank_N, s * fanout)  # out of range -> dropped
        nbr = jnp.zeros((s * fanout,), jnp.int32).at[flat].set(snd_N, mode="drop")
        msk = jnp.zeros((s * fanout,), bool).at[flat].set(True, mode="drop")
        return nbr.reshape(s, fanout), msk.reshape(s, fanout)

    return jax.vmap(one)(senders_BxN, receivers_BxN, valid_BxN, gene_ids_BxS, seed_B)


def cell_seeds(key, batch_size: int, layers: int):
    """Fresh per-layer, per-cell uint32 seeds [layers, B] from a PRNG key (training)."""
    return jax.random.bits(key, (layers, batch_size), jnp.uint32)


def fixed_seeds(seed: int, batch_size: int, layers: int):
    """Deterministic seeds [layers, B]: the same for every cell, one per layer (inference)."""
    per_layer = _fmix32(jnp.uint32(seed) + jnp.arange(layers, dtype=jnp.uint32) * jnp.uint32(_GOLDEN))
    return jnp.broadcast_to(per_layer[:, None], (layers, batch_size))
