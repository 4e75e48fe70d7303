"""Masked-bin pretraining input: replace a fraction of each cell's gene bins by MASK (jit-able, pure).

Which positions are masked depends only on (key, cell id, token position):
each cell draws from `fold_in(key, cell_id)` and each position from
`fold_in(cell_key, position)`, so a cell's mask does not depend on its
batch-mates or on how much padding it got. `mask_key(seed, step)` makes a batch
reproducible from (seed, step). Each cell gets exactly
round(rate * n_gene_tokens) masked positions (at least 1 when it has a gene).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grn_jax.types import BinSpec, TokenBatch


def mask_key(seed: int, step) -> jax.Array:
    """The masking key of training step `step` under `seed`."""
    return jax.random.fold_in(jax.random.key(seed), step)


def mask_bins(key: jax.Array, batch: TokenBatch, rate: float = 0.3, bin_spec: BinSpec = BinSpec(),
              cell_ids: jax.Array | None = None) -> TokenBatch:
    """Mask `rate` of the real gene positions of every cell (never CLS or padding).

    Returns the batch with bins = MASK id at masked positions, targets = the true
    bin there (0 elsewhere) and loss_mask marking them. `cell_ids` [B] (e.g.
    `CellBatch.cell_index`) makes the draw independent of the row a cell sits in;
    without it the row index is used.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mask rate must be in [0, 1], got {rate}")
    bins_BxS = jnp.asarray(batch.bins)
    b, s = bins_BxS.shape
    if cell_ids is None:
        cell_ids = jnp.arange(b, dtype=jnp.int32)
    gene_BxS = jnp.asarray(batch.token_mask) & (jnp.arange(s)[None, :] > 0)

    def uniforms(cid):
        cell_key = jax.random.fold_in(key, cid)
        return jax.vmap(lambda p: jax.random.uniform(jax.random.fold_in(cell_key, p)))(jnp.arange(s))

    u_BxS = jax.vmap(uniforms)(jnp.asarray(cell_ids, jnp.uint32))
    u_BxS = jnp.where(gene_BxS, u_BxS, 2.0)  # non-gene positions sort last
    n_genes_B = gene_BxS.sum(axis=1)
    n_mask_B = jnp.floor(rate * n_genes_B + 0.5).astype(jnp.int32)
    if rate > 0:
        n_mask_B = jnp.where(n_genes_B > 0, jnp.maximum(n_mask_B, 1), 0)
    rank_BxS = jnp.argsort(jnp.argsort(u_BxS, axis=1), axis=1)
    masked_BxS = gene_BxS & (rank_BxS < n_mask_B[:, None])
    return batch.replace(
        bins=jnp.where(masked_BxS, bin_spec.mask_id, bins_BxS).astype(jnp.int32),
        targets=jnp.where(masked_BxS, bins_BxS, 0).astype(jnp.int32),
        loss_mask=masked_BxS,
    )
