"""Gather-only (ELL) packing of a cell's shifted Laplacian `L - I` for fast products on CPU.

Why: XLA's scatter-add (the `segment_sum` over a COO edge list) materialises the gathered
[nnz, D] rows and then scatters them; on CPU that costs ~3x a fused gather, and a scatter
fused after a gather degrades badly. Here each row's off-diagonal entries are packed into
fixed-width slots so `(L - I) t` is ONE fused loop of gathers and multiply-adds:

* primary slots [S, R]: the first R off-diagonal entries of every row;
* heavy slots [H, W]: rows with more than R entries ("hub" TFs, degree ~80) continue on
  one of H heavy rows of W further slots (its own fused loop); each heavy row's sum is
  added back to its owner by a gather (no scatter anywhere);
* the diagonal (exactly 1 for `normalized_laplacian`, anything for other BCOOs) is kept as
  a dense vector and applied elementwise.

Shapes are static (R, H, W from `EllLayout` and S); empty slots point at their own row
with value 0. A graph that does not fit (more than H heavy rows, or a row with more than
R + W entries) sets `overflow`; `diffuse` then takes the exact COO path for that
batch (`lax.cond`), so a too-small layout costs speed, never correctness.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct


@dataclasses.dataclass(frozen=True)
class EllLayout:
    """Static slot budget: `width` R slots per row; `heavy_rows` H rows (default
    max(8, S // 64)) with `heavy_width` W further slots each (rounded up to a multiple of R;
    the default fits degree 128)."""

    width: int = 8
    heavy_rows: Optional[int] = None
    heavy_width: int = 120

    def __post_init__(self):
        if self.width < 1 or self.heavy_width < 1 or (self.heavy_rows is not None and self.heavy_rows < 1):
            raise ValueError(f"EllLayout needs width >= 1, heavy_width >= 1, heavy_rows >= 1; got {self}")

    def resolve(self, num_nodes: int) -> tuple[int, int, int]:
        """(R, H, W) for S = num_nodes (none larger than S)."""
        h = max(8, num_nodes // 64) if self.heavy_rows is None else self.heavy_rows
        r = min(self.width, num_nodes)
        w = -(-min(self.heavy_width, num_nodes) // r) * r  # whole chunks of R slots
        return r, min(h, num_nodes), w


@struct.dataclass
class PackedShifted:
    """`L - I` of one cell (or a batch, with a leading axis) in ELL slots."""

    idx: jax.Array  # int32 [S, R] primary slots
    val: jax.Array  # float [S, R]
    heavy_idx: jax.Array  # int32 [H, W] continuation slots of heavy rows
    heavy_val: jax.Array  # float [H, W]
    heavy_chunk_used: jax.Array  # float [H, W // R]: 1 where a chunk of R heavy slots holds entries
    heavy_of_row: jax.Array  # int32 [S]: the row's heavy id, or H (none)
    diag_shift: jax.Array  # float [S]: L_ii - 1
    overflow: jax.Array  # bool []: the graph did not fit the layout


def pack_shifted(data_N, rows_N, cols_N, num_nodes: int, layout: EllLayout) -> PackedShifted:
    """Pack one cell's stored Laplacian entries (BCOO data/indices) into ELL slots."""
    r_w, h_rows, h_w = layout.resolve(num_nodes)
    s = num_nodes
    n = data_N.shape[0]
    off = rows_N != cols_N
    diag_S = jax.ops.segment_sum(jnp.where(off, 0, data_N), rows_N, num_segments=s)
    key = jnp.where(off, rows_N, s)  # diagonal entries sort to the end and are skipped
    order = jnp.argsort(key, stable=True)
    row_k, col_k, val_k = key[order], cols_N[order], data_N[order]
    valid = row_k < s
    row_c = jnp.minimum(row_k, s - 1)
    deg_S = jax.ops.segment_sum(off.astype(jnp.int32), rows_N, num_segments=s)
    start_S = jnp.cumsum(deg_S) - deg_S
    rank = jnp.arange(n, dtype=jnp.int32) - start_S[row_c]
    heavy_S = deg_S > r_w
    heavy_id_S = jnp.where(heavy_S, jnp.cumsum(heavy_S.astype(jnp.int32)) - 1, h_rows)
    primary = valid & (rank < r_w)
    hrow = heavy_id_S[row_c]
    hslot = rank - r_w
    heavy_ok = valid & ~primary & (hrow < h_rows) & (hslot < h_w)
    overflow = jnp.any(valid & ~primary & ~heavy_ok)
    self_S = jnp.arange(s, dtype=jnp.int32)
    p_row = jnp.where(primary, row_c, s)  # row s is out of range: the slot is not written here
    idx = jnp.broadcast_to(self_S[:, None], (s, r_w)).at[p_row, rank].set(col_k, mode="drop")
    val = jnp.zeros((s, r_w), data_N.dtype).at[p_row, rank].set(val_k, mode="drop")
    h_row = jnp.where(heavy_ok, hrow, h_rows)
    owner_H = jnp.zeros((h_rows,), jnp.int32).at[jnp.where(heavy_S, heavy_id_S, h_rows)].set(self_S, mode="drop")
    heavy_idx = jnp.broadcast_to(owner_H[:, None], (h_rows, h_w)).at[h_row, hslot].set(col_k, mode="drop")
    heavy_val = jnp.zeros((h_rows, h_w), data_N.dtype).at[h_row, hslot].set(val_k, mode="drop")
    used = jnp.zeros((h_rows, h_w), bool).at[h_row, hslot].set(True, mode="drop")
    chunk_used = jnp.any(used.reshape(h_rows, h_w // r_w, r_w), axis=-1).astype(data_N.dtype)
    return PackedShifted(idx=idx, val=val, heavy_idx=heavy_idx, heavy_val=heavy_val, heavy_chunk_used=chunk_used,
                         heavy_of_row=jnp.minimum(heavy_id_S, h_rows), diag_shift=diag_S - 1, overflow=overflow)


def _slot_sum(idx_RxW, val_RxW, t_SxD):
    """sum_w val[:, w] * t[idx[:, w]] written out over the static slot count, so XLA emits
    ONE fused loop of row gathers and multiply-adds (a reduce over a gathered axis would
    materialise [rows, W, D] or run a slow reduction emitter)."""
    # indices are in [0, S) by construction (pack_shifted), so skip jnp's wrap/clamp.
    y = val_RxW[:, 0, None] * t_SxD.at[idx_RxW[:, 0]].get(mode="promise_in_bounds")
    for w in range(1, idx_RxW.shape[1]):
        y = y + val_RxW[:, w, None] * t_SxD.at[idx_RxW[:, w]].get(mode="promise_in_bounds")
    return y


def apply_packed(p: PackedShifted, t_SxD: jax.Array) -> jax.Array:
    """`(L - I) t` for one cell: two fused gather loops (primary, heavy) and one gather back."""
    # t must be a materialised buffer: if XLA fused t's producer (the previous product) into
    # these gathers it would recompute it R + W times per element.
    t_SxD = jax.lax.optimization_barrier(t_SxD)
    y_SxD = _slot_sum(p.idx, p.val, t_SxD)
    h, w = p.heavy_idx.shape
    r = p.idx.shape[1]
    # heavy rows as H*J chunks of R slots (one fused gather loop), chunk sums combined by a
    # small batched dot. The dot matters: XLA cannot fuse it into the gather back below,
    # whereas fused sums would be recomputed for every element of the [S, D] output.
    chunks = w // r
    part_CxD = _slot_sum(p.heavy_idx.reshape(h * chunks, r), p.heavy_val.reshape(h * chunks, r), t_SxD)
    heavy_HxD = jnp.einsum("hj,hjd->hd", p.heavy_chunk_used, part_CxD.reshape(h, chunks, -1))
    heavy_HxD = jnp.concatenate([heavy_HxD, jnp.zeros((1, t_SxD.shape[1]), heavy_HxD.dtype)])
    return y_SxD + heavy_HxD[p.heavy_of_row] + p.diag_shift[:, None] * t_SxD
