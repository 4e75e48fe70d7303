"""Selecting the Pallas GDKA path from a model: can it run here, and the call from model-side inputs.

The model (`grn_jax.models.attention.diffusion_attention`, impl="pallas")
calls `pallas_gdka` with what it already has — the batched BCOO Laplacian,
the node/passthrough masks and the static Chebyshev plan — and gets either the
attention output or None after a `logging.warning` naming the backend and the
reason, in which case it runs its XLA path. Duck-typed (`.data/.indices/.shape`
for the Laplacian, `.as_array()` for the plan) so `kernels/` imports nothing
from `grn_jax.graphs` or `grn_jax.models`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .chebyshev_diffusion import chebyshev_diffusion
from .diffusion_attention import DiffusionAttentionBlocks, masked_flash_attention
from .ell import ell_from_laplacian, safe_width

log = logging.getLogger(__name__)

PALLAS_BACKENDS = ("gpu",)


def pallas_unavailable_reason(*, backend: Optional[str] = None, dropout_active: bool = False) -> Optional[str]:
    """Why the Pallas GDKA cannot run here, or None if it can."""
    backend = backend or jax.default_backend()
    if backend not in PALLAS_BACKENDS:
        return (f"backend {backend!r} has no Pallas-Triton lowering (the kernels need a GPU; on other backends "
                f"they run only in interpret mode, for tests)")
    if dropout_active:
        return "attention dropout is active and the flash kernel implements none"
    return None


def pallas_gdka(q_BxSxHxD, k_BxSxHxD, v_BxSxHxD, key_mask_BxS, laplacian, node_mask_BxS, passthrough_mask_BxS,
                plan_or_coeffs, *, dropout_active: bool = False, width: Optional[int] = None,
                block: DiffusionAttentionBlocks = DiffusionAttentionBlocks(), interpret: bool = False):
    """GDKA by the fused kernels, or None (with a logged reason) when they cannot run on this backend.

    `width` is the static ELL row width; the default min(S - 1, 2E) can never
    overflow but is conservative (pass a bucketed max degree for speed).
    `interpret=True` forces the kernels through the Pallas interpreter on any
    backend (tests).
    """
    if not interpret:
        reason = pallas_unavailable_reason(dropout_active=dropout_active)
        if reason is not None:
            log.warning("attention_impl='pallas' falls back to 'xla': %s", reason)
            return None
    elif dropout_active:
        log.warning("attention_impl='pallas' falls back to 'xla': %s",
                    pallas_unavailable_reason(backend="gpu", dropout_active=True))
        return None
    b, s, h, d = q_BxSxHxD.shape
    n_offdiag = int(laplacian.data.shape[-1]) - s  # BCOO layout: 2E edge entries + S diagonal entries
    width = int(width) if width is not None else safe_width(s, max(n_offdiag, 1))
    bd = block.diffusion.block_degree
    width = _next_pow2(width) if width <= bd else -(-width // bd) * bd  # whole power-of-two degree tiles
    ell = ell_from_laplacian(laplacian, node_mask_BxS, passthrough_mask_BxS, width=width)
    coeffs = plan_or_coeffs.as_array() if hasattr(plan_or_coeffs, "as_array") else np.asarray(plan_or_coeffs)

    # Triton loads power-of-two tiles and its dots need dimensions >= 16: pad S to a multiple of
    # the tile (or the next power of two >= 16 below it) with isolated, masked positions, the head
    # dimension to a power of two >= 16 with zeros (attention stage only), then cut the result.
    tile = max(block.diffusion.block_rows, block.attention.block_q, block.attention.block_k)
    s_pad = -(-s // tile) * tile if s > tile else max(16, _next_pow2(s))
    c = h * d
    cols = min(block.diffusion.block_cols, c & -c)  # largest power-of-two divisor of C
    block = dataclasses.replace(block, diffusion=dataclasses.replace(block.diffusion, block_cols=cols))
    if s_pad > s:
        pad = s_pad - s
        q_BxSxHxD, k_BxSxHxD, v_BxSxHxD = (_pad_axis(x, 1, pad, 0) for x in (q_BxSxHxD, k_BxSxHxD, v_BxSxHxD))
        key_mask_BxS = _pad_axis(key_mask_BxS, 1, pad, False)
        rows = jnp.arange(s, s_pad, dtype=ell.indices.dtype)
        ell = ell.replace(
            indices=jnp.concatenate([ell.indices, jnp.broadcast_to(rows[None, :, None], (b, pad, ell.width))], axis=1),
            values=_pad_axis(ell.values, 1, pad, 0), node_mask=_pad_axis(ell.node_mask, 1, pad, False),
            passthrough_mask=_pad_axis(ell.passthrough_mask, 1, pad, False),
            row_degree=_pad_axis(ell.row_degree, 1, pad, 0))
    qd = chebyshev_diffusion(q_BxSxHxD.reshape(b, s_pad, c), ell, jnp.asarray(coeffs, jnp.float32),
                             block=block.diffusion, interpret=interpret).reshape(b, s_pad, h, d)
    d_pad = max(16, _next_pow2(d)) - d
    if d_pad:
        qd, k_BxSxHxD, v_BxSxHxD = (_pad_axis(x, 3, d_pad, 0) for x in (qd, k_BxSxHxD, v_BxSxHxD))
    out = masked_flash_attention(qd, k_BxSxHxD, v_BxSxHxD, key_mask_BxS, block=block.attention,
                                 interpret=interpret, sm_scale=1.0 / math.sqrt(d))
    return out[:, :s, :, :d]


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _pad_axis(x, axis: int, pad: int, value):
    """Pad `axis` at the end with `pad` entries of `value`."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)
