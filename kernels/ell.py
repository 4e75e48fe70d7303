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

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class EllLaplacian:
    """L~ = L - I per cell in ELL form, plus which rows are diffused.

    indices_BxSxR: int32 neighbour positions; values_BxSxR: float32 entries of L~,
    filled slots first in every row (row_degree of them), so a kernel may skip the rest.
    node_mask_BxS: graph nodes (gene tokens: token_mask without the CLS);
    passthrough_mask_BxS: rows returned unchanged by diffusion (the CLS).
    """

    indices: jax.Array  # int32 [B, S, R]
    values: jax.Array  # float32 [B, S, R]
    node_mask: jax.Array  # bool [B, S]
    passthrough_mask: jax.Array  # bool [B, S]
    num_invalid_edges: jax.Array  # int32 [B]
    num_dropped: jax.Array  # int32 [B]
    row_degree: jax.Array  # int32 [B, S]: filled slots per row (the kernel skips empty degree tiles)

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


def _place(rows_N, cols_N, vals_N, live_N, s_len: int, width: int):
    """Coalesce (row, col, value) entries (duplicates add) into ELL rows of `width` slots.

    Returns indices [S, R], values [S, R] and the number of distinct entries that
    did not fit. Empty slots point at their own row with value 0.
    """
    n = rows_N.shape[0]
    sentinel = s_len * s_len
    key_N = jnp.where(live_N, rows_N * s_len + cols_N, sentinel)
    order = jnp.argsort(key_N)
    key = key_N[order]
    v = jnp.where(live_N, vals_N, 0.0)[order]
    live = key < sentinel
    first = live & jnp.concatenate([jnp.ones((1,), bool), key[1:] != key[:-1]])
    uid = jnp.where(live, jnp.cumsum(first.astype(jnp.int32)) - 1, n)  # dead slots -> extra segment
    v_u = jax.ops.segment_sum(v, uid, num_segments=n + 1)[:n]
    row = jnp.where(live, key // s_len, 0)
    col = jnp.where(live, key % s_len, 0)
    big = jnp.iinfo(jnp.int32).max
    row_first_uid = jax.ops.segment_min(jnp.where(first, uid, big), row, num_segments=s_len)
    slot = uid - row_first_uid[row]
    placed = first & (slot < width)
    num_dropped = jnp.sum(first & (slot >= width)).astype(jnp.int32)
    row_degree = jax.ops.segment_sum(placed.astype(jnp.int32), row, num_segments=s_len)
    flat = jnp.where(placed, row * width + slot, s_len * width)  # out of bounds -> not written
    pos_S = jnp.arange(s_len, dtype=jnp.int32)
    indices = jnp.broadcast_to(pos_S[:, None], (s_len, width)).reshape(-1)
    indices = indices.at[flat].set(col.astype(jnp.int32), mode="drop")
    values = jnp.zeros((s_len * width,), jnp.float32).at[flat].set(
        v_u[jnp.minimum(uid, n - 1)].astype(jnp.float32), mode="drop")
    return indices.reshape(s_len, width), values.reshape(s_len, width), num_dropped, row_degree


def _ell_one_cell(senders_E, receivers_E, weights_E, edge_mask_E, token_mask_S, width):
    """ELL of one cell from its edge list (vmapped by `build_ell_laplacian`)."""
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
    keep_E = valid_E & (snd != rcv) & (weights_E > 0)  # self-loops removed; zero weights add nothing
    w_E = jnp.where(keep_E, weights_E, 0.0).astype(jnp.float32)

    # A_sym = W + W^T: degrees count both directions of every edge.
    degree_S = (jax.ops.segment_sum(w_E, snd, num_segments=s_len)
                + jax.ops.segment_sum(w_E, rcv, num_segments=s_len))
    inv_sqrt_S = jnp.where(degree_S > 0, jax.lax.rsqrt(jnp.where(degree_S > 0, degree_S, 1.0)), 0.0)
    val_E = -w_E * inv_sqrt_S[snd] * inv_sqrt_S[rcv]
    indices, values, num_dropped, row_degree = _place(
        jnp.concatenate([snd, rcv]), jnp.concatenate([rcv, snd]), jnp.concatenate([val_E, val_E]),
        jnp.concatenate([keep_E, keep_E]), s_len, width)
    return indices, values, node_mask_S, pos_S == 0, num_invalid, num_dropped, row_degree


def _from_bcoo_one(data_N, idx_Nx2, graph_S, width):
    s_len = graph_S.shape[0]
    rows, cols = idx_Nx2[:, 0].astype(jnp.int32), idx_Nx2[:, 1].astype(jnp.int32)
    in_range = (rows >= 0) & (rows < s_len) & (cols >= 0) & (cols < s_len)
    live = (rows != cols) & (data_N != 0)
    on_graph = graph_S[jnp.clip(rows, 0, s_len - 1)] & graph_S[jnp.clip(cols, 0, s_len - 1)]
    num_invalid = jnp.sum(live & ~(in_range & on_graph)).astype(jnp.int32)
    # Entries touching CLS/padding are kept (counted as invalid): the operator then equals the BCOO
    # one exactly, as `grn_jax.graphs.diffuse` applies it. Out-of-range entries cannot be gathered.
    ind, val, dropped, degree = _place(rows, cols, data_N.astype(jnp.float32), live & in_range, s_len, width)
    return ind, val, num_invalid, dropped, degree


@functools.partial(jax.jit, static_argnames=("width",))
def _from_bcoo_batch(data_BxN, idx_BxNx2, graph_BxS, *, width):
    return jax.vmap(_from_bcoo_one, in_axes=(0, 0, 0, None))(data_BxN, idx_BxNx2, graph_BxS, width)


def ell_from_laplacian(laplacian, node_mask_BxS, passthrough_mask_BxS, *, width: int) -> EllLaplacian:
    """ELL of L~ = L - I from a batched BCOO Laplacian [B, S, S] (`grn_jax.graphs.normalized_laplacian`).

    Diagonal entries are dropped (L has a unit diagonal, so L~ has none) and
    duplicate entries add, as BCOO semantics say. Entries touching a non-graph
    position are kept, so the operator is exactly the BCOO one, and counted in
    `num_invalid_edges` (a concrete call raises on them; under jit check them
    with `check_ell`). `node_mask_BxS` marks graph
    nodes (genes, CLS excluded); `passthrough_mask_BxS` the rows diffusion
    returns unchanged (CLS). A safe static width is min(S - 1, number of stored
    entries) rounded up; `num_dropped` reports entries that did not fit.
    """
    data_BxN, idx_BxNx2 = laplacian.data, laplacian.indices
    if idx_BxNx2.ndim != 3 or idx_BxNx2.shape[-1] != 2 or data_BxN.ndim != 2:
        raise ValueError(f"laplacian must be a BCOO [B, S, S] with one batch dimension, got data "
                         f"{data_BxN.shape} / indices {idx_BxNx2.shape}")
    b, s_len, _ = laplacian.shape
    node_mask_BxS = jnp.asarray(node_mask_BxS, bool)
    passthrough_mask_BxS = jnp.asarray(passthrough_mask_BxS, bool)
    if node_mask_BxS.shape != (b, s_len) or passthrough_mask_BxS.shape != (b, s_len):
        raise ValueError(f"node_mask/passthrough_mask must be [{b}, {s_len}], got {node_mask_BxS.shape}/"
                         f"{passthrough_mask_BxS.shape}")

    graph_BxS = node_mask_BxS & ~passthrough_mask_BxS
    ind, val, invalid, dropped, degree = _from_bcoo_batch(data_BxN, idx_BxNx2, graph_BxS, width=int(width))
    ell = EllLaplacian(ind, val, graph_BxS, passthrough_mask_BxS, invalid, dropped, degree)
    if not isinstance(dropped, jax.core.Tracer):
        check_ell(ell)
    return ell


def safe_width(seq_len: int, num_entries: int, *, multiple: int = 8) -> int:
    """An ELL width that can never overflow: min(S - 1, entries), rounded up to `multiple`."""
    need = max(1, min(seq_len - 1, num_entries))
    return -(-need // multiple) * multiple


@functools.partial(jax.jit, static_argnames=("width",))
def _build_batch(senders, receivers, weights, edge_mask, token_mask, *, width):
    return jax.vmap(_ell_one_cell, in_axes=(0, 0, 0, 0, 0, None))(
        senders, receivers, weights, edge_mask, token_mask, width)


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
    ell = EllLaplacian(*_build_batch(
        jnp.asarray(senders_BxE, jnp.int32), jnp.asarray(receivers_BxE, jnp.int32),
        jnp.asarray(weights_BxE, jnp.float32), jnp.asarray(edge_mask_BxE, bool),
        jnp.asarray(token_mask_BxS, bool), width=int(width)))
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
