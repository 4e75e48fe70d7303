"""Bucketed padded sizes: few distinct shapes, so a jitted step compiles a handful of times."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from grn_jax.data.config import TokenizeConfig


def _powers_of_two(lo: int, need: int) -> tuple[int, ...]:
    sizes = [int(lo)]
    while sizes[-1] < need:
        sizes.append(sizes[-1] * 2)
    return tuple(sizes)


def seq_buckets(cfg: TokenizeConfig) -> tuple[int, ...]:
    """Allowed padded sequence lengths (CLS included); the largest holds max_genes + 1."""
    return tuple(cfg.seq_buckets) if cfg.seq_buckets else _powers_of_two(cfg.min_seq_bucket, cfg.max_genes + 1)


def edge_buckets(cfg: TokenizeConfig) -> tuple[int, ...]:
    """Allowed padded edge counts per cell; the largest holds max_edges."""
    return tuple(cfg.edge_buckets) if cfg.edge_buckets else _powers_of_two(cfg.min_edge_bucket, cfg.max_edges)


def bucket_for(n: int, buckets: Sequence[int], what: str = "length") -> int:
    """Smallest bucket >= n."""
    i = int(np.searchsorted(np.asarray(buckets), n, side="left"))
    if i >= len(buckets):
        raise ValueError(f"{what} {n} exceeds the largest bucket {buckets[-1]}; raise the bucket list or the cap")
    return int(buckets[i])
