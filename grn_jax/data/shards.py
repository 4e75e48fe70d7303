"""Tokenised shards on disk: memory-mappable .npy arrays per shard plus one manifest.

Layout of a prepared folder:

    manifest.json            format version, vocabulary, BinSpec, buckets, config, QC and
                             filtering counts, per-shard cell counts, content hash
    cells.csv                one row per kept cell: dataset row, cell name, cell type
    shard_00000/*.npy        ragged arrays (CSR-style pointers) for up to cells_per_shard cells

The content hash is a SHA-256 over the vocabulary, BinSpec, buckets and every
shard array (name, dtype, shape, bytes), so two folders with the same hash hold
the same tokens. The manifest also fingerprints each array file (size, sampled
and full SHA-256) so `verify_files` can check cheaply, before training, that the
files are still the ones the content hash describes, and name one that is not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from grn_jax._io import atomic_path, atomic_write_text, check_out_dir, read_json
from grn_jax._json import jsonable
from grn_jax.data.tokenize import TokenizedCells
from grn_jax.data.vocab import GeneVocab
from grn_jax.types import BinSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_TOKEN_ARRAYS = ("cell_index", "token_ptr", "gene_ids", "bins", "values", "edge_ptr", "edge_src", "edge_dst",
                 "edge_weight")
_CELL_GRAPH_ARRAYS = ("cell_edge_ptr", "cell_edge_src", "cell_edge_dst", "cell_edge_weight")


def _concat_ragged(parts: list[TokenizedCells], with_cell_graph: bool) -> dict[str, np.ndarray]:
    def ptr_cat(ptrs):
        out, base = [np.zeros(1, np.int64)], 0
        for p in ptrs:
            out.append(p[1:] + base)
            base += int(p[-1])
        return np.concatenate(out)

    arrays = {
        "cell_index": np.concatenate([p.cell_index for p in parts]).astype(np.int64),
        "token_ptr": ptr_cat([p.token_ptr for p in parts]),
        "gene_ids": np.concatenate([p.gene_ids for p in parts]).astype(np.int32),
        "bins": np.concatenate([p.bins for p in parts]).astype(np.int16),
        "values": np.concatenate([p.values for p in parts]).astype(np.float32),
        "edge_ptr": ptr_cat([p.graph.ptr for p in parts]),
        "edge_src": np.concatenate([p.graph.src for p in parts]).astype(np.int32),
        "edge_dst": np.concatenate([p.graph.dst for p in parts]).astype(np.int32),
        "edge_weight": np.concatenate([p.graph.weight for p in parts]).astype(np.float32),
    }
    if with_cell_graph:
        arrays.update({
            "cell_edge_ptr": ptr_cat([p.cell_graph.ptr for p in parts]),
            "cell_edge_src": np.concatenate([p.cell_graph.src for p in parts]).astype(np.int32),
            "cell_edge_dst": np.concatenate([p.cell_graph.dst for p in parts]).astype(np.int32),
            "cell_edge_weight": np.concatenate([p.cell_graph.weight for p in parts]).astype(np.float32),
        })
    return arrays


def _slice_cells(t: TokenizedCells, lo: int, hi: int) -> TokenizedCells:
    from grn_jax.data.graph_source import CellEdges

    def edges(e: Optional[CellEdges]):
        if e is None:
            return None
        a, b = int(e.ptr[lo]), int(e.ptr[hi])
        return CellEdges(e.ptr[lo:hi + 1] - a, e.src[a:b], e.dst[a:b], e.weight[a:b])

    a, b = int(t.token_ptr[lo]), int(t.token_ptr[hi])
    return TokenizedCells(t.cell_index[lo:hi], t.token_ptr[lo:hi + 1] - a, t.gene_ids[a:b], t.bins[a:b],
                          t.values[a:b], edges(t.graph), edges(t.cell_graph))


class ShardWriter:
    """Accumulates tokenised blocks and writes a shard every `cells_per_shard` cells."""

    def __init__(self, out_dir, cells_per_shard: int, with_cell_graph: bool = False, overwrite: bool = False):
        self.out = check_out_dir(out_dir, "output folder")
        self._created = not self.out.exists()
        if self.out.exists() and any(self.out.iterdir()):
            if not overwrite:
                raise ValueError(f"output folder {str(self.out)!r} exists and is not empty; choose a new folder "
                                 "or pass overwrite=True (--overwrite)")
            if (self.out / MANIFEST).exists() or all(p.name.startswith("shard_") or p.name == "cells.csv"
                                                     for p in self.out.iterdir()):
                for p in sorted(self.out.glob("shard_*")):
                    for f in p.iterdir():
                        f.unlink()
                    p.rmdir()
                for name in (MANIFEST, "cells.csv"):
                    if (self.out / name).exists():
                        (self.out / name).unlink()
            else:
                raise ValueError(f"refusing to overwrite {str(self.out)!r}: it is not a prepared-shards folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self.cells_per_shard = cells_per_shard
        self.with_cell_graph = with_cell_graph
        self._buffer: list[TokenizedCells] = []
        self._buffered = 0
        self.shard_cells: list[int] = []
        self.shard_tokens: list[int] = []

    def add(self, cells: TokenizedCells) -> None:
        lo = 0
        while lo < cells.num_cells:
            take = min(self.cells_per_shard - self._buffered, cells.num_cells - lo)
            self._buffer.append(_slice_cells(cells, lo, lo + take))
            self._buffered += take
            lo += take
            if self._buffered == self.cells_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        arrays = _concat_ragged(self._buffer, self.with_cell_graph)
        folder = self.out / f"shard_{len(self.shard_cells):05d}"
        folder.mkdir()
        for name, arr in arrays.items():
            np.save(folder / f"{name}.npy", arr)
        self.shard_cells.append(len(arrays["cell_index"]))
        self.shard_tokens.append(int(arrays["token_ptr"][-1]))
        self._buffer, self._buffered = [], 0

    def finish(self, manifest: dict, cells: pd.DataFrame) -> dict:
        """Write the last shard, cells.csv and the manifest (with content hash); return the manifest."""
        self._flush()
        with atomic_path(self.out / "cells.csv") as tmp:
            cells.to_csv(tmp, index=False)
        manifest = dict(manifest)
        manifest.update(format_version=FORMAT_VERSION, with_cell_graph=self.with_cell_graph,
                        shards=[{"name": f"shard_{i:05d}", "cells": c, "tokens": t}
                                for i, (c, t) in enumerate(zip(self.shard_cells, self.shard_tokens))])
        manifest["content_hash"] = content_hash(self.out, manifest)
        manifest["files"] = file_fingerprints(self.out, manifest)
        # the manifest seals the folder: written last, atomically (a reader never sees a partial one)
        atomic_write_text(self.out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, default=jsonable))
        return manifest

    def abort(self) -> None:
        """Remove what this writer wrote (after a failure), so no half-prepared folder is left behind."""
        for i in range(len(self.shard_cells) + 1):  # + the one a failed flush may have begun
            folder = self.out / f"shard_{i:05d}"
            if folder.is_dir():
                for f in folder.iterdir():
                    f.unlink()
                folder.rmdir()
        self.shard_cells, self._buffer, self._buffered = [], [], 0
        if self._created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()


def content_hash(folder, manifest: dict) -> str:
    """SHA-256 over vocabulary, bins, buckets and all shard arrays."""
    h = hashlib.sha256()
    h.update(json.dumps({k: manifest[k] for k in ("vocab", "bin_spec", "seq_buckets", "edge_buckets")},
                        sort_keys=True).encode())
    names = _TOKEN_ARRAYS + (_CELL_GRAPH_ARRAYS if manifest.get("with_cell_graph") else ())
    for shard in manifest["shards"]:
        for name in names:
            arr = np.load(Path(folder) / shard["name"] / f"{name}.npy", mmap_mode="r")
            h.update(f"{shard['name']}/{name}:{arr.dtype.str}:{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


SAMPLE_BLOCK, SAMPLE_BLOCKS = 1 << 16, 16  # sampled check: 16 blocks of 64 KiB (first, last, evenly between)


def _file_digests(path: Path, block: int, blocks: int, full: bool) -> dict:
    """{"bytes", "sampled_sha256"[, "sha256"]} of one file; the sample is the whole file when small."""
    size = path.stat().st_size
    out = {"bytes": size}
    with open(path, "rb") as f:
        sample = hashlib.sha256(str(size).encode())
        if size <= block * blocks:
            sample.update(f.read())
        else:
            for off in np.linspace(0, size - block, blocks).astype(np.int64):
                f.seek(int(off))
                sample.update(f.read(block))
        out["sampled_sha256"] = sample.hexdigest()
        if full:
            f.seek(0)
            h = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            out["sha256"] = h.hexdigest()
    return out


def _shard_files(manifest: dict) -> list[str]:
    names = _TOKEN_ARRAYS + (_CELL_GRAPH_ARRAYS if manifest.get("with_cell_graph") else ())
    return [f"{shard['name']}/{name}.npy" for shard in manifest["shards"] for name in names]


def file_fingerprints(folder, manifest: dict) -> dict:
    """What `verify_files` checks later: size, sampled and full SHA-256 of every shard array file."""
    return {"sample": {"block": SAMPLE_BLOCK, "blocks": SAMPLE_BLOCKS},
            "arrays": {rel: _file_digests(Path(folder) / rel, SAMPLE_BLOCK, SAMPLE_BLOCKS, True)
                       for rel in _shard_files(manifest)}}


def verify_files(folder, manifest: dict, *, full: bool = False) -> str:
    """ValueError naming the first shard file whose size or SHA-256 differs from what prepare recorded.

    Cheap by default (sizes + a sampled hash: at most 1 MiB read per file, catching any
    truncation, growth or rewrite and most in-place edits); `full=True` hashes every byte.
    Folders prepared before per-file fingerprints existed get the full content-hash check.
    Returns a short description of what was checked.
    """
    folder = Path(folder)
    rec = manifest.get("files")
    if not isinstance(rec, dict) or "arrays" not in rec:
        got = content_hash(folder, manifest)
        if got != manifest.get("content_hash"):
            raise ValueError(f"data.shards: {folder} was modified after `grn-jax prepare` (content hash "
                             f"{got[:12]}..., manifest {str(manifest.get('content_hash'))[:12]}...); re-run prepare")
        return "full content hash (no per-file fingerprints in this manifest: re-run prepare for a faster check)"
    block, blocks = int(rec["sample"]["block"]), int(rec["sample"]["blocks"])
    for rel, want in rec["arrays"].items():
        path = folder / rel
        if not path.is_file():
            raise ValueError(f"data.shards: {path} is missing (prepare wrote it); re-run `grn-jax prepare`")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise ValueError(f"data.shards: {path} was modified after `grn-jax prepare` ({size} bytes, prepare "
                             f"wrote {want['bytes']}); re-run prepare")
        got = _file_digests(path, block, blocks, full)
        key = "sha256" if full else "sampled_sha256"
        if got[key] != want[key]:
            raise ValueError(f"data.shards: {path} was modified after `grn-jax prepare` (its "
                             f"{'SHA-256' if full else 'sampled SHA-256'} differs from the one prepare recorded); "
                             f"re-run prepare")
    n = len(rec["arrays"])
    return f"{n} shard files, {'full SHA-256' if full else 'sizes + sampled SHA-256'}"


class ShardStore:
    """Read-only, memory-mapped access to a prepared folder, cell by cell.

    `verify=True` recomputes the content hash and fails if the files changed;
    `verify="sampled"` / `"full"` checks each file against prepare's fingerprints
    (`verify_files`), naming a file that changed.
    """

    def __init__(self, folder, verify: bool | str = False):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.exists():
            raise ValueError(f"{str(self.folder)!r} has no {MANIFEST}; create it with `grn-jax prepare`")
        self.manifest = read_json(path, "shards manifest")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{str(path)!r} has format_version {self.manifest.get('format_version')}, this "
                             f"library reads {FORMAT_VERSION}; re-run `grn-jax prepare`")
        self.verified = None  # what verify checked (a short description)
        if verify in ("sampled", "full"):  # before any array is memory-mapped (a truncated file cannot be)
            self.verified = verify_files(self.folder, self.manifest, full=verify == "full")
        elif verify:
            got = content_hash(self.folder, self.manifest)
            if got != self.manifest["content_hash"]:
                raise ValueError(f"content hash mismatch in {str(self.folder)!r}: manifest "
                                 f"{self.manifest['content_hash'][:12]}..., files {got[:12]}...; the shards were "
                                 "modified or truncated, re-run `grn-jax prepare`")
        self.with_cell_graph = bool(self.manifest.get("with_cell_graph"))
        names = _TOKEN_ARRAYS + (_CELL_GRAPH_ARRAYS if self.with_cell_graph else ())
        self._shards = [{n: np.load(self.folder / s["name"] / f"{n}.npy", mmap_mode="r") for n in names}
                        for s in self.manifest["shards"]]
        self._starts = np.cumsum([0] + [s["cells"] for s in self.manifest["shards"]])
        self.vocab = GeneVocab.from_dict(self.manifest["vocab"])
        self.bin_spec = BinSpec(self.manifest["bin_spec"]["n_bins"])
        self.seq_buckets = tuple(self.manifest["seq_buckets"])
        self.edge_buckets = tuple(self.manifest["edge_buckets"])
        self.coexpression = _load_partners(self.folder, self.manifest)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> dict:
        return self.cell(i)

    def cell(self, i: int) -> dict:
        """Ragged arrays of prepared cell `i` (0..len-1); `cell` is i, `dataset_row` its input row."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"cell {i} out of range [0, {len(self)})")
        k = int(np.searchsorted(self._starts, i, side="right") - 1)
        sh, j = self._shards[k], i - int(self._starts[k])
        a, b = int(sh["token_ptr"][j]), int(sh["token_ptr"][j + 1])
        ea, eb = int(sh["edge_ptr"][j]), int(sh["edge_ptr"][j + 1])
        out = {
            "cell": i,
            "dataset_row": int(sh["cell_index"][j]),
            "gene_ids": np.asarray(sh["gene_ids"][a:b]),
            "bins": np.asarray(sh["bins"][a:b]),
            "values": np.asarray(sh["values"][a:b]),
            "edge_src": np.asarray(sh["edge_src"][ea:eb]),
            "edge_dst": np.asarray(sh["edge_dst"][ea:eb]),
            "edge_weight": np.asarray(sh["edge_weight"][ea:eb]),
        }
        if self.with_cell_graph:
            ca, cb = int(sh["cell_edge_ptr"][j]), int(sh["cell_edge_ptr"][j + 1])
            out.update(cell_edge_src=np.asarray(sh["cell_edge_src"][ca:cb]),
                       cell_edge_dst=np.asarray(sh["cell_edge_dst"][ca:cb]),
                       cell_edge_weight=np.asarray(sh["cell_edge_weight"][ca:cb]))
        if self.coexpression is not None:  # the cell's dataset co-expression partner pairs (positions)
            out["coexpr_src"], out["coexpr_dst"], out["coexpr_weight"] = self.coexpression.cell_pairs(out["gene_ids"])
        return out

    def cells_table(self) -> pd.DataFrame:
        return pd.read_csv(self.folder / "cells.csv", keep_default_na=False)


def _load_partners(folder: Path, manifest: dict):
    """The co-expression partner table `prepare` wrote (None for folders prepared before it existed)."""
    rec = manifest.get("coexpression")
    if not rec:
        return None
    from grn_jax.graphs.coexpression import PartnerTable

    path = folder / rec["file"]
    if not path.is_file():
        raise ValueError(f"data.shards: {path} is missing (prepare wrote it); re-run `grn-jax prepare`")
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != rec["sha256"]:
        raise ValueError(f"data.shards: {path} was modified after `grn-jax prepare` (SHA-256 differs); re-run prepare")
    return PartnerTable.load(path)
