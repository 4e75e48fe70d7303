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

from .diffusion_attention import DiffusionAttentionBlocks, diffusion_attention
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
    s = q_BxSxHxD.shape[1]
    n_offdiag = int(laplacian.data.shape[-1]) - s  # BCOO layout: 2E edge entries + S diagonal entries
    width = int(width) if width is not None else safe_width(s, max(n_offdiag, 1))
    ell = ell_from_laplacian(laplacian, node_mask_BxS, passthrough_mask_BxS, width=width)
    coeffs = plan_or_coeffs.as_array() if hasattr(plan_or_coeffs, "as_array") else np.asarray(plan_or_coeffs)
    c = q_BxSxHxD.shape[2] * q_BxSxHxD.shape[3]
    if c > block.diffusion.block_cols and c % block.diffusion.block_cols:
        block = dataclasses.replace(block, diffusion=dataclasses.replace(
            block.diffusion, block_cols=math.gcd(c, block.diffusion.block_cols)))
    tile = max(block.diffusion.block_rows, block.attention.block_q, block.attention.block_k)
    pad = (-s) % tile if s > tile else 0
    if pad:  # e.g. S = CLS + 2048 genes: pad to the tile with isolated, masked positions, then cut
        q_BxSxHxD, k_BxSxHxD, v_BxSxHxD = (_pad_seq(x, pad, 0) for x in (q_BxSxHxD, k_BxSxHxD, v_BxSxHxD))
        key_mask_BxS = _pad_seq(key_mask_BxS, pad, False)
        rows_S = jnp.arange(s + pad, dtype=ell.indices.dtype)
        ell = ell.replace(
            indices=jnp.concatenate([ell.indices, jnp.broadcast_to(rows_S[s:, None], (ell.indices.shape[0], pad, width))],
                                    axis=1),
            values=_pad_seq(ell.values, pad, 0), node_mask=_pad_seq(ell.node_mask, pad, False),
            passthrough_mask=_pad_seq(ell.passthrough_mask, pad, False))
    out = diffusion_attention(q_BxSxHxD, k_BxSxHxD, v_BxSxHxD, key_mask_BxS, ell,
                              jnp.asarray(coeffs, jnp.float32), block=block, interpret=interpret)
    return out[:, :s]


def _pad_seq(x, pad: int, value):
    """Pad axis 1 (the sequence) with `pad` entries of `value`."""
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)
