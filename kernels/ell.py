"""Padded fixed-degree (ELL) layout of each cell's shifted Laplacian L~ = L - I.

Why: the fused Chebyshev kernel multiplies by L~ K times. A per-row list of
(neighbour, value) pairs of static width R lets a GPU program gather a row
block's neighbours with one indexed load, instead of scattering over an edge
list. Pure `jnp`, jit-able, vmapped over cells; shapes are static.

Semantics (DESIGN.md "Numerical conventions"): the graph is symmetrised
(A_sym = A + A^T, duplicate edges summed, self-loops removed); L = I - D^-1/2
A_sym D^-1/2, so the diagonal of L~ = L - I is zero and only off-diagonal
entries -w_ij / sqrt(d_i d_j) are stored. Isolated and padding nodes have
empty rows (L_ii = 1). Empty slots point at their own row with value 0.

Nothing is dropped silently: edges that cannot be placed (index outside the
cell's real gene tokens, CLS, negative or non-finite weight) are counted in
`num_invalid_edges`; neighbours beyond the width R in `num_dropped`. A concrete
(non-traced) build raises ValueError if either is non-zero; under `jit` the
caller checks them with `check_ell`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class EllLaplacian:
    """L~ = L - I per cell in ELL form, plus which rows are diffused.

    indices_BxSxR: int32 neighbour positions; values_BxSxR: float32 entries of L~.
    node_mask_BxS: real gene tokens (token_mask without the CLS at position 0).
    """

    indices: jax.Array  # int32 [B, S, R]
    values: jax.Array  # float32 [B, S, R]
    node_mask: jax.Array  # bool [B, S]
    num_invalid_edges: jax.Array  # int32 [B]
    num_dropped: jax.Array  # int32 [B]

    @property
    def width(self) -> int:
        return int(self.indices.shape[-1])


def ell_degree_bound(senders, receivers, edge_mask, seq_len: int, *, multiple: int = 8) -> int:
    """Host-side: the ELL width needed for this batch, rounded up to `multiple`.

    Counts distinct neighbours of every node in the symmetrised graph (numpy,
    outside jit) so a caller can choose a static bucket for R.
    """
    s = np.asarray(senders)
    r = np.asarray(receivers)
    m = np.asarray(edge_mask, bool) & (s != r)
    best = 0
    for b in range(s.shape[0]):
        rows = np.concatenate([s[b][m[b]], r[b][m[b]]]).astype(np.int64)
        cols = np.concatenate([r[b][m[b]], s[b][m[b]]]).astype(np.int64)
        if rows.size == 0:
            continue
        keys = np.unique(rows * seq_len + cols)
        best = max(best, int(np.bincount(keys // seq_len).max()))
    return max(multiple, -(-best // multiple) * multiple)


def _ell_one_cell(senders_E, receivers_E, weights_E, edge_mask_E, token_mask_S, width):
    """ELL of one cell (vmapped by `build_ell_laplacian`)."""
    s_len = token_mask_S.shape[0]
    pos_S = jnp.arange(s_len, dtype=jnp.int32)
    node_mask_S = token_mask_S & (pos_S > 0)

    in_range = (senders_E >= 1) & (senders_E < s_len) & (receivers_E >= 1) & (receivers_E < s_len)
    snd = jnp.where(in_range, senders_E, 0)
    rcv = jnp.where(in_range, receivers_E, 0)
    real_ends = node_mask_S[snd] & node_mask_S[rcv]
    good_weight = jnp.isfinite(weights_E) & (weights_E >= 0)
    valid_E = edge_mask_E & in_range & real_ends & good_weight
    num_invalid = jnp.sum(edge_mask_E & ~valid_E).astype(jnp.int32)
    keep_E = valid_E & (snd != rcv)  # self-loops are removed, not invalid

    # Both directions of every edge: A_sym = A + A^T.
    rows_2E = jnp.concatenate([snd, rcv])
    cols_2E = jnp.concatenate([rcv, snd])
    w_2E = jnp.concatenate([weights_E, weights_E]).astype(jnp.float32)
    keep_2E = jnp.concatenate([keep_E, keep_E])
    n2 = rows_2E.shape[0]
    sentinel = s_len * s_len
    key_2E = jnp.where(keep_2E, rows_2E * s_len + cols_2E, sentinel)
    order = jnp.argsort(key_2E)
    key = key_2E[order]
    w = jnp.where(keep_2E, w_2E, 0.0)[order]
    live = key < sentinel
    first = live & jnp.concatenate([jnp.ones((1,), bool), key[1:] != key[:-1]])
    uid = jnp.cumsum(first.astype(jnp.int32)) - 1  # unique-entry id of each sorted slot
    uid = jnp.where(live, uid, n2)  # dead slots to an overflow segment
    w_u = jax.ops.segment_sum(w, uid, num_segments=n2 + 1)[:n2]
    row = jnp.where(live, key // s_len, 0)
    col = jnp.where(live, key % s_len, 0)

    degree_S = jax.ops.segment_sum(jnp.where(live, w, 0.0), row, num_segments=s_len)
    inv_sqrt_S = jnp.where(degree_S > 0, jax.lax.rsqrt(jnp.where(degree_S > 0, degree_S, 1.0)), 0.0)

    # Slot of each unique entry within its row: rank among the row's unique entries.
    big = jnp.iinfo(jnp.int32).max
    row_first_uid = jax.ops.segment_min(jnp.where(first, uid, big), row, num_segments=s_len)
    slot = uid - row_first_uid[row]
    placed = first & (slot < width)
    num_dropped = jnp.sum(first & (slot >= width)).astype(jnp.int32)

    val = -w_u[jnp.minimum(uid, n2 - 1)] * inv_sqrt_S[row] * inv_sqrt_S[col]
    flat = jnp.where(placed, row * width + slot, s_len * width)  # out-of-bounds -> dropped by mode
    indices = jnp.broadcast_to(pos_S[:, None], (s_len, width)).reshape(-1)
    indices = indices.at[flat].set(col.astype(jnp.int32), mode="drop")
    values = jnp.zeros((s_len * width,), jnp.float32).at[flat].set(val, mode="drop")
    return (indices.reshape(s_len, width), values.reshape(s_len, width), node_mask_S,
            num_invalid, num_dropped)


def build_ell_laplacian(senders_BxE, receivers_BxE, weights_BxE, edge_mask_BxE, token_mask_BxS,
                        *, width: int) -> EllLaplacian:
    """Build the ELL form of L~ = L - I for a batch of per-cell graphs.

    `width` (static) is the row width R: at least the largest number of distinct
    neighbours of any node (see `ell_degree_bound`); use a bucketed value so one
    compiled program serves many batches.
    """
    if not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be a positive int (static ELL row width), got {width!r}")
    b, e = np.shape(senders_BxE)
    for name, arr in (("receivers", receivers_BxE), ("weights", weights_BxE), ("edge_mask", edge_mask_BxE)):
        if tuple(np.shape(arr)) != (b, e):
            raise ValueError(f"{name} must have shape [B, E] = {[b, e]} like senders, got {list(np.shape(arr))}")
    if np.ndim(token_mask_BxS) != 2 or np.shape(token_mask_BxS)[0] != b:
        raise ValueError(f"token_mask must have shape [B, S] with B = {b}, got {list(np.shape(token_mask_BxS))}")
    if not jnp.issubdtype(jnp.asarray(senders_BxE).dtype, jnp.integer):
        raise ValueError(f"senders/receivers must be integer token positions, got {jnp.asarray(senders_BxE).dtype}")
    ell = EllLaplacian(*jax.vmap(_ell_one_cell, in_axes=(0, 0, 0, 0, 0, None))(
        jnp.asarray(senders_BxE, jnp.int32), jnp.asarray(receivers_BxE, jnp.int32),
        jnp.asarray(weights_BxE, jnp.float32), jnp.asarray(edge_mask_BxE, bool),
        jnp.asarray(token_mask_BxS, bool), int(width)))
    if not isinstance(ell.num_dropped, jax.core.Tracer):
        check_ell(ell)
    return ell


def check_ell(ell: EllLaplacian) -> None:
    """Raise ValueError naming the first cell with invalid edges or neighbours beyond the ELL width."""
    invalid = np.asarray(ell.num_invalid_edges)
    dropped = np.asarray(ell.num_dropped)
    for b in range(invalid.shape[0]):
        if invalid[b]:
            raise ValueError(
                f"cell {b}: {int(invalid[b])} masked-in edge(s) are invalid (an endpoint outside the cell's "
                "gene tokens 1..S-1 / on padding, or a negative/non-finite weight); fix the graph batch")
        if dropped[b]:
            raise ValueError(
                f"cell {b}: {int(dropped[b])} neighbour entries exceed the ELL width {ell.width}; "
                "raise `width` (see ell_degree_bound)")
