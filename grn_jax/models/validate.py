"""Host-side check that a TokenBatch fits a model config, before it enters a jitted step.

Inside jit nothing can raise on values: an out-of-vocabulary id would be
silently clamped by the embedding gather and an edge into padding would leak
between positions. Call `check_batch(config, batch)` on the first batch (the
data loader's tests) to get a ValueError naming the cell, position and field.
"""

from __future__ import annotations

import numpy as np

from grn_jax.models.config import ModelConfig
from grn_jax.types import TokenBatch, validate_token_batch


def _first_bad(mask) -> tuple[int, int]:
    b, s = np.argwhere(mask)[0]
    return int(b), int(s)


def check_batch(config: ModelConfig, batch: TokenBatch) -> dict:
    """Raise ValueError on the first contract violation; return the graphs' `graph_report` counts."""
    from grn_jax.graphs.laplacian import graph_report  # noqa: PLC0415

    validate_token_batch(batch)
    gene_ids = np.asarray(batch.gene_ids)
    bins = np.asarray(batch.bins)
    token = np.asarray(batch.token_mask, bool)
    spec = config.bin_spec
    bad = token & ((gene_ids < 0) | (gene_ids >= config.gene_vocab_size))
    if bad.any():
        b, s = _first_bad(bad)
        raise ValueError(f"gene_ids[cell {b}, position {s}] = {gene_ids[b, s]} is outside the model's gene "
                         f"vocabulary [0, {config.gene_vocab_size}); rebuild the vocabulary or the config")
    bad = token & ((bins < 0) | (bins >= spec.vocab_size))
    if bad.any():
        b, s = _first_bad(bad)
        raise ValueError(f"bins[cell {b}, position {s}] = {bins[b, s]} is outside [0, {spec.vocab_size}) for "
                         f"n_bins={config.n_bins}; the data's BinSpec must match ModelConfig.n_bins")
    bad = np.asarray(batch.loss_mask, bool) & ((np.asarray(batch.targets) < 0)
                                               | (np.asarray(batch.targets) >= config.n_bins))
    if bad.any():
        b, s = _first_bad(bad)
        raise ValueError(f"targets[cell {b}, position {s}] = {np.asarray(batch.targets)[b, s]} is not an "
                         f"expression bin in [0, {config.n_bins}) but loss_mask is set there")
    bad = ~token[:, :1]
    if bad.any():
        raise ValueError(f"token_mask[cell {int(np.argwhere(bad)[0][0])}, position 0] is False: every cell "
                         f"starts with its CLS token")
    s = gene_ids.shape[1]
    nodes = token & (np.arange(s) > 0)[None, :]
    reports = {"graph": graph_report(batch.graph, num_nodes=s, node_mask=nodes)}
    if batch.cell_graph is not None:
        reports["cell_graph"] = graph_report(batch.cell_graph, num_nodes=s, node_mask=nodes)
    return reports
