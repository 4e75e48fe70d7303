"""Where embeddings go: straight into an .h5ad on disk (row blocks), or into an in-memory AnnData.

`H5adWriter` copies the input file and then writes `obsm`/`varm` datasets block by
block with h5py, in the on-disk encoding anndata reads (dense arrays with
`encoding-type=array`), so memory holds one block, never all cells.
Provenance goes to `uns` as JSON strings (a config is nested and may hold nulls,
which h5ad attributes cannot store).

Nothing half-written is left behind: `H5adWriter` fills a temporary sibling file and
renames it over the destination only in `commit()`; `MemoryWriter` stages the arrays
and sets them on the AnnData only in `commit()`. `close()` without a commit discards.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import anndata
import h5py
import numpy as np

from grn_jax._io import temp_sibling

_ARRAY_ATTRS = {"encoding-type": "array", "encoding-version": "0.2.0"}
_DICT_ATTRS = {"encoding-type": "dict", "encoding-version": "0.1.0"}


def _group(f: h5py.File, name: str) -> h5py.Group:
    if name not in f:
        g = f.create_group(name)
        g.attrs.update(_DICT_ATTRS)
    return f[name]


class H5adWriter:
    """Copy `src` to a temporary file beside `dst`, fill new obsm/varm arrays in it, rename it to `dst` on commit."""

    def __init__(self, src: str | Path, dst: str | Path, *, overwrite: bool = False):
        src, dst = Path(src), Path(dst)
        if dst.exists() and not overwrite:
            raise ValueError(f"output {str(dst)!r} exists; choose another path or pass overwrite")
        if dst.resolve() == src.resolve():
            raise ValueError(f"output {str(dst)!r} is the input file; write to a new file")
        if dst.suffix != ".h5ad":
            raise ValueError(f"output {str(dst)!r} must end in .h5ad")
        if dst.is_dir():
            raise ValueError(f"output {str(dst)!r} is a folder; give an .h5ad file path")
        dst.parent.mkdir(parents=True, exist_ok=True)
        self.path = dst
        self._tmp = temp_sibling(dst)
        self._f = None
        try:
            shutil.copyfile(src, self._tmp)
            self._f = h5py.File(self._tmp, "r+")
        except BaseException:
            self.close()
            raise
        self.replaced: list[str] = []

    def create(self, slot: str, key: str, shape: tuple, fill: float = np.nan) -> None:
        g = _group(self._f, slot)
        if key in g:
            del g[key]
            self.replaced.append(f"{slot}/{key}")
        ds = g.create_dataset(key, shape=shape, dtype=np.float32, fillvalue=np.float32(fill),
                              chunks=(min(shape[0], 1024),) + tuple(shape[1:]) if shape[0] else None)
        ds.attrs.update(_ARRAY_ATTRS)

    def write_rows(self, slot: str, key: str, start: int, values: np.ndarray) -> None:
        self._f[slot][key][start:start + len(values)] = values

    def write_full(self, slot: str, key: str, values: np.ndarray) -> None:
        self.create(slot, key, values.shape)
        self._f[slot][key][...] = values

    def write_uns(self, key: str, record: dict) -> None:
        uns = _group(self._f, "uns")
        if key in uns:
            del uns[key]
            self.replaced.append(f"uns/{key}")
        anndata.io.write_elem(uns, key, {k: json.dumps(v, default=str) for k, v in record.items()})

    def commit(self) -> None:
        """Everything is written: make the output appear at its path (atomic rename)."""
        self._f.close()
        self._f = None
        os.replace(self._tmp, self.path)
        self._tmp = None

    def close(self) -> None:
        """Release the file; without a prior `commit()` (a failure) the temporary is deleted, `dst` untouched."""
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


class MemoryWriter:
    """Write into an in-memory AnnData (library use on an AnnData object)."""

    def __init__(self, adata: anndata.AnnData):
        self.adata = adata
        self.path = None
        self.replaced: list[str] = []
        self._staged: dict = {"obsm": {}, "varm": {}, "uns": {}}

    def _existing(self, slot: str):
        return {"obsm": self.adata.obsm, "varm": self.adata.varm, "uns": self.adata.uns}[slot]

    def create(self, slot: str, key: str, shape: tuple, fill: float = np.nan) -> None:
        if key in self._existing(slot) and f"{slot}/{key}" not in self.replaced:
            self.replaced.append(f"{slot}/{key}")
        self._staged[slot][key] = np.full(shape, fill, np.float32)

    def write_rows(self, slot: str, key: str, start: int, values: np.ndarray) -> None:
        self._staged[slot][key][start:start + len(values)] = values

    def write_full(self, slot: str, key: str, values: np.ndarray) -> None:
        self.create(slot, key, values.shape)
        self._staged[slot][key][...] = values

    def write_uns(self, key: str, record: dict) -> None:
        if key in self.adata.uns:
            self.replaced.append(f"uns/{key}")
        self._staged["uns"][key] = {k: json.dumps(v, default=str) for k, v in record.items()}

    def commit(self) -> None:
        """Set the staged arrays on the AnnData (a failure before this leaves it unchanged)."""
        for slot, items in self._staged.items():
            for key, value in items.items():
                self._existing(slot)[key] = value
        self._staged = {"obsm": {}, "varm": {}, "uns": {}}

    def close(self) -> None:
        self._staged = {"obsm": {}, "varm": {}, "uns": {}}
