"""Training data from prepared shards (`grn-jax prepare`): a train/validation split and this host's loaders.

The one place where `train` meets `grn_jax.data`: it opens the `ShardStore`,
holds out `train.val_fraction` of the cells (a fixed, seeded choice, reported),
builds the resumable grain loader over the rest for this host, and supplies the
masking function the compiled step applies (`grn_jax.data.mask_bins`, keyed by
(seed, step) and each cell's dataset index, so a cell's mask never depends on
its batch-mates).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import jax
import numpy as np

from grn_jax.data.collate import CellBatch
from grn_jax.data.loader import BatchIterator, make_loader
from grn_jax.data.masking import mask_bins
from grn_jax.data.shards import ShardStore
from grn_jax.types import GENE_PAD, GraphBatch, TokenBatch

VAL_SPLIT_SEED = 12_345  # the held-out cells do not change with train.seed


class _Subset:
    """A view of a ShardStore restricted to `indices` (what make_loader needs: len, cell, metadata)."""

    def __init__(self, store: ShardStore, indices: np.ndarray, split: str):
        self._store = store
        self._indices = np.asarray(indices, np.int64)
        self.manifest = {**store.manifest, "content_hash": f"{store.manifest['content_hash']}:{split}"}
        self.bin_spec = store.bin_spec
        self.seq_buckets = store.seq_buckets
        self.edge_buckets = store.edge_buckets
        self.with_cell_graph = store.with_cell_graph

    def __len__(self) -> int:
        return len(self._indices)

    def cell(self, i: int) -> dict:
        return self._store.cell(int(self._indices[int(i)]))

    def __getitem__(self, i: int) -> dict:
        return self.cell(i)


def _pad_graph_to(g: GraphBatch, e: int) -> GraphBatch:
    extra = e - g.senders.shape[1]
    if extra == 0:
        return g
    pad = lambda x, v: np.pad(np.asarray(x), ((0, 0), (0, extra)), constant_values=v)  # noqa: E731
    # padded edge slots point at position 1 with weight 0 and edge_mask False (the collate convention)
    return GraphBatch(pad(g.senders, 1), pad(g.receivers, 1), pad(g.weights, 0.0), pad(g.edge_mask, False))


def pad_batch_to(batch: CellBatch, seq_len: int, num_edges: int, pad_bin: int) -> CellBatch:
    """Pad a collated batch to a larger (seq_len, num_edges) bucket; padding is masked and inert."""
    t = batch.tokens
    s_extra = seq_len - t.gene_ids.shape[1]
    if s_extra < 0 or num_edges < t.graph.senders.shape[1]:
        raise ValueError(f"cannot pad a batch of shape S={t.gene_ids.shape[1]}, E={t.graph.senders.shape[1]} "
                         f"down to S={seq_len}, E={num_edges}")
    pad = lambda x, v: np.pad(np.asarray(x), ((0, 0), (0, s_extra)), constant_values=v)  # noqa: E731
    # t.replace keeps every field, including ones added later (the co-expression partner pairs)
    tokens = t.replace(gene_ids=pad(t.gene_ids, GENE_PAD), bins=pad(t.bins, pad_bin), targets=pad(t.targets, 0),
                       loss_mask=pad(t.loss_mask, False), token_mask=pad(t.token_mask, False),
                       graph=_pad_graph_to(t.graph, num_edges),
                       cell_graph=None if t.cell_graph is None else _pad_graph_to(t.cell_graph, num_edges),
                       coexpr_graph=None if t.coexpr_graph is None else _pad_graph_to(t.coexpr_graph, num_edges))
    return batch.replace(tokens=tokens)


def agree_on_shape(batch: CellBatch, pad_bin: int) -> CellBatch:
    """On many hosts, pad every host's local batch to the largest (S, E) bucket any host drew.

    Each host collates its own cells into a bucket; a global array needs one shape.
    One small all-gather of two integers per step; a no-op on one host.
    """
    if jax.process_count() == 1:
        return batch
    from jax.experimental import multihost_utils

    mine = np.array([batch.tokens.gene_ids.shape[1], batch.tokens.graph.senders.shape[1]], np.int32)
    s, e = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 2).max(axis=0)
    return pad_batch_to(batch, int(s), int(e), pad_bin)


def largest_bucket_pair(store: ShardStore) -> tuple[int, int]:
    """(S, E): the buckets of the longest cell and of the most edges any cell has (either graph).

    Read from the shards' CSR pointer arrays (`token_ptr`, `edge_ptr`, `cell_edge_ptr`;
    layout in `grn_jax.data.shards`), memory-mapped, vectorised.
    """
    from grn_jax.data.buckets import bucket_for

    longest, most_edges = 0, 0
    ptrs = ["edge_ptr"] + (["cell_edge_ptr"] if store.with_cell_graph else [])
    for shard in store.manifest["shards"]:
        folder = store.folder / shard["name"]
        tok = np.load(folder / "token_ptr.npy", mmap_mode="r")
        if len(tok) > 1:
            longest = max(longest, int(np.diff(tok).max()))
        for name in ptrs:
            ptr = np.load(folder / f"{name}.npy", mmap_mode="r")
            if len(ptr) > 1:
                most_edges = max(most_edges, int(np.diff(ptr).max()))
    s = bucket_for(1 + longest, store.seq_buckets, "sequence length (CLS + genes)")
    e = bucket_for(most_edges, store.edge_buckets, "edge count")
    return int(s), int(e)


def split_cells(n_cells: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), a fixed seeded split; validation gets round(frac * n) cells."""
    n_val = int(round(val_fraction * n_cells))
    perm = np.random.default_rng(VAL_SPLIT_SEED).permutation(n_cells)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def masking_fn(cfg) -> Callable[..., TokenBatch]:
    """mask_fn(key, CellBatch) -> masked TokenBatch, with the run's mask rate and bin spec."""
    rate = cfg.train.mask_rate
    bin_spec = cfg.model.bin_spec

    def mask_fn(key, batch: CellBatch) -> TokenBatch:
        return mask_bins(key, batch.tokens, rate, bin_spec, cell_ids=batch.cell_index)

    return mask_fn


def abstract_local_batch(model_cfg, batch_size: int, seq_len: int, num_edges: int) -> CellBatch:
    """A CellBatch of the given shape (ShapeDtypeStruct-able numpy arrays) for compile-only runs."""
    from grn_jax.models import example_batch

    tokens = example_batch(model_cfg, batch_size=batch_size, seq_len=seq_len, num_edges=num_edges)
    return CellBatch(tokens=tokens, cell_index=np.arange(batch_size, dtype=np.int32),
                     cell_mask=np.ones(batch_size, bool))


@dataclasses.dataclass
class TrainData:
    """What `pretrain` needs from the data; built by `open_train_data`."""

    store: ShardStore
    train_idx: np.ndarray
    val_idx: np.ndarray
    mask_fn: Callable
    shuffle: bool
    process_index: int
    process_count: int

    @property
    def vocab(self) -> dict:
        return self.store.vocab.to_dict()

    @property
    def vocab_size(self) -> int:
        return len(self.store.vocab)

    @property
    def n_bins(self) -> int:
        return self.store.bin_spec.n_bins

    @property
    def identity(self) -> dict:
        m = self.store.manifest
        return {"shards": str(self.store.folder.absolute()), "content_hash": m["content_hash"],
                "n_cells": len(self.store), "n_train": int(len(self.train_idx)), "n_val": int(len(self.val_idx)),
                "val_split_seed": VAL_SPLIT_SEED}

    @property
    def tokenization(self) -> dict:
        """How the shards were tokenised (data config, bins, buckets, graphs): what inference must repeat.

        Saved with every checkpoint (config item, key "tokenization") so `grn-jax embed`
        tokenises new cells exactly as training did without the shards at hand.
        """
        m = self.store.manifest
        return {"data_config": m["config"], "bin_spec": m["bin_spec"], "seq_buckets": m["seq_buckets"],
                "edge_buckets": m["edge_buckets"], "with_cell_graph": bool(m.get("with_cell_graph")),
                "content_hash": m["content_hash"], "graph": m.get("summary", {}).get("graph"),
                "cell_graph": m.get("summary", {}).get("cell_graph")}

    @property
    def example_batch(self) -> CellBatch:
        """A 1-cell batch with the loader's pytree structure (for the step's sharding specs)."""
        from grn_jax.data.collate import collate

        return collate([self.store.cell(int(self.train_idx[0]))], self.store.bin_spec, self.store.seq_buckets,
                       self.store.edge_buckets, with_cell_graph=self.store.with_cell_graph)

    def train_iterator(self, batch_size: int, seed: int) -> BatchIterator:
        return make_loader(_Subset(self.store, self.train_idx, "train"), batch_size, shuffle=self.shuffle,
                           seed=seed, process_index=self.process_index, process_count=self.process_count)

    def val_batches(self, batch_size: int, n_batches: int) -> list[CellBatch]:
        """The first `n_batches` validation batches (fixed order, partial last batch filled and masked out)."""
        if len(self.val_idx) < self.process_count:
            raise ValueError(f"train.val_fraction: only {len(self.val_idx)} validation cells for "
                             f"{self.process_count} hosts; raise train.val_fraction or set train.eval_every=0")
        it = make_loader(_Subset(self.store, self.val_idx, "val"), batch_size, shuffle=False, num_epochs=1,
                         drop_remainder=False, process_index=self.process_index, process_count=self.process_count)
        # every host must run the same number of evaluation steps: the fewest any host has
        fewest_cells = len(self.val_idx) // self.process_count
        n = min(n_batches, -(-fewest_cells // batch_size))
        out = []
        for batch in it:
            if len(out) == n:
                break
            out.append(agree_on_shape(batch, self.store.bin_spec.pad_id))
        return out

    fixed_shape: Optional[tuple[int, int]] = None  # (S, E) every batch is padded to, if set

    def agree_on_shape(self, batch: CellBatch) -> CellBatch:
        """The batch at the run's fixed shape (if any), identical in shape on every host."""
        if self.fixed_shape is not None:
            batch = pad_batch_to(batch, *self.fixed_shape, self.store.bin_spec.pad_id)
        return agree_on_shape(batch, self.store.bin_spec.pad_id)

    @staticmethod
    def batch_stats(batch: CellBatch) -> tuple[int, int]:
        """(real cells, real tokens) in a local batch."""
        return int(np.asarray(batch.cell_mask).sum()), int(np.asarray(batch.tokens.token_mask).sum())


def open_train_data(cfg, *, process_index: int, process_count: int, log=print) -> TrainData:
    """Open `cfg.data.shards`, split train/validation, report the split."""
    if not cfg.data.shards:
        raise ValueError("data.shards: not set; point it at a folder written by `grn-jax prepare`")
    folder = Path(cfg.data.shards)
    if not folder.is_dir():
        raise ValueError(f"data.shards: {folder} does not exist; create it with `grn-jax prepare` "
                         f"(or `grn-jax quickstart`)")
    store = ShardStore(folder, verify=cfg.data.verify_shards)
    log(f"data: shard files match what prepare recorded ({store.verified})")
    train_idx, val_idx = split_cells(len(store), cfg.train.val_fraction)
    if len(train_idx) // process_count < cfg.train.batch_size // process_count:
        raise ValueError(f"train.batch_size: {len(train_idx)} training cells over {process_count} host(s) cannot "
                         f"fill a batch of {cfg.train.batch_size}; lower train.batch_size")
    log(f"data: {len(store)} cells in {folder}: {len(train_idx)} train, {len(val_idx)} held out for validation; "
        f"vocabulary {len(store.vocab)} tokens, {store.bin_spec.n_bins} bins")
    fixed = largest_bucket_pair(store) if cfg.data.fixed_shape else None
    if fixed is not None:
        log(f"data.fixed_shape: every batch padded to S={fixed[0]}, E={fixed[1]} (one compiled step)")
    from grn_jax.config import resolve_vocab_size

    cfg = resolve_vocab_size(cfg, len(store.vocab))
    return TrainData(store=store, train_idx=train_idx, val_idx=val_idx, mask_fn=masking_fn(cfg),
                     shuffle=cfg.data.shuffle, process_index=process_index, process_count=process_count,
                     fixed_shape=fixed)

