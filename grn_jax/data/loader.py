"""Batches from prepared shards, on grain: shuffling, per-host sharding, checkpointable iterator state.

Epoch e visits a permutation of all cells (seeded by (seed, e)); host p of P
takes every P-th position of it, so in each epoch the hosts partition the
cells. With `drop_remainder=True` (training) every host gets floor(N / P)
cells an epoch, so all hosts run the same number of steps (the N mod P cells
left over differ per epoch and are counted in `cells_skipped_per_epoch`); with
False (inference) host p gets all of positions p, p+P, ... and the last batch is
filled with masked filler rows.

`BatchIterator.get_state()` is a small JSON-serialisable dict; `set_state` of a
fresh iterator built with the same arguments resumes at the identical next batch.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import grain
import jax
import numpy as np

from grn_jax.data.collate import CellBatch, collate
from grn_jax.data.shards import ShardStore


class _EpochOrder:
    """Random-access sequence: position -> prepared cell index, over epochs, for one host.

    With `local_batch` (training: drop_remainder), host p's batch g holds the
    contiguous slice [g*B + p*b, g*B + (p+1)*b) of the epoch's permutation
    (B = b x hosts), so the global batch the hosts assemble is exactly the
    batch one process would read: multi-host runs reproduce single-host ones.
    A tail shorter than b per host, and evaluation order, are strided (p::hosts).
    """

    def __init__(self, n_cells: int, shuffle: bool, seed: int, process_index: int, process_count: int,
                 drop_remainder: bool, num_epochs: Optional[int], local_batch: Optional[int] = None):
        self.n, self.shuffle, self.seed = n_cells, shuffle, seed
        self.p, self.count = process_index, process_count
        self.local_batch = local_batch if drop_remainder else None
        self.per_epoch = n_cells // process_count if drop_remainder else len(range(process_index, n_cells,
                                                                                 process_count))
        self.num_epochs = num_epochs
        self._cached: tuple[int, Optional[np.ndarray]] = (-1, None)

    def __len__(self) -> int:
        if self.num_epochs is None:
            return sys.maxsize
        return self.per_epoch * self.num_epochs

    def _perm(self, epoch: int) -> np.ndarray:
        if self._cached[0] != epoch:
            perm = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
                    else np.arange(self.n))
            self._cached = (epoch, perm)
        return self._cached[1]

    def __getitem__(self, i: int) -> int:
        epoch, j = divmod(int(i), self.per_epoch)
        b = self.local_batch
        if b and j < self.per_epoch // b * b:  # whole batches: contiguous slices of the global batch
            g, r = divmod(j, b)
            return int(self._perm(epoch)[g * b * self.count + self.p * b + r])
        if b:  # the tail: strided over the cells after the last whole global batch
            base = self.per_epoch // b * b * self.count
            return int(self._perm(epoch)[base + self.p + (j - self.per_epoch // b * b) * self.count])
        return int(self._perm(epoch)[self.p + j * self.count])


class BatchIterator:
    """Iterator of `CellBatch` with `get_state`/`set_state` (JSON-serialisable)."""

    def __init__(self, it, signature: dict):
        self._it = it
        self._signature = signature

    def __iter__(self):
        return self

    def __next__(self) -> CellBatch:
        return next(self._it)

    def get_state(self) -> dict:
        state = self._it.get_state()
        json.dumps(state)  # fail here, not at checkpoint time, if it ever stops being JSON
        return {"grain": state, "signature": self._signature}

    def set_state(self, state: dict) -> None:
        if state.get("signature") != self._signature:
            raise ValueError(f"iterator state was saved by a loader with {state.get('signature')}, this loader "
                             f"has {self._signature}; rebuild the loader with the same data and arguments")
        self._it.set_state(state["grain"])


def make_loader(store: ShardStore, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                num_epochs: Optional[int] = None, drop_remainder: bool = True,
                process_index: Optional[int] = None, process_count: Optional[int] = None,
                num_threads: int = 0) -> BatchIterator:
    """A `BatchIterator` over `store` for this host.

    process_index/process_count default to `jax.process_index()/process_count()`.
    num_epochs=None repeats forever. num_threads > 0 reads cells in grain threads.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    p = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= p < count:
        raise ValueError(f"process_index {p} not in [0, process_count={count})")
    n = len(store)
    if n < count:
        raise ValueError(f"{n} cells cannot be split over {count} hosts")
    order = _EpochOrder(n, shuffle, seed, p, count, drop_remainder, num_epochs, local_batch=batch_size)
    if drop_remainder and order.per_epoch < batch_size:
        raise ValueError(f"host {p} gets {order.per_epoch} cells per epoch, fewer than batch_size={batch_size}; "
                         "use a smaller batch or drop_remainder=False")
    with_cg = store.with_cell_graph

    def batch_fn(cells):
        return collate(cells, store.bin_spec, store.seq_buckets, store.edge_buckets, batch_size=batch_size,
                       with_cell_graph=with_cg)

    ds = grain.MapDataset.source(order).map(store.cell)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(1, 2 * num_threads))
    it = iter(ds.to_iter_dataset(options))
    signature = {"content_hash": store.manifest["content_hash"], "batch_size": batch_size, "shuffle": shuffle,
                 "seed": seed, "num_epochs": num_epochs, "drop_remainder": drop_remainder,
                 "process_index": p, "process_count": count}
    return BatchIterator(it, signature)


def cells_skipped_per_epoch(n_cells: int, process_count: int, drop_remainder: bool = True) -> int:
    """Cells no host sees in an epoch (the N mod P left over when every host must take the same count)."""
    return n_cells % process_count if drop_remainder else 0
