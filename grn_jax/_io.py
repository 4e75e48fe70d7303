"""Small file helpers every command uses: JSON read with the file named, atomic writes (temp + rename).

A result file is either absent or complete: each writer fills a temporary sibling
(`.<name>.tmp-<pid>`, same folder, so `os.replace` is atomic on POSIX) and renames
it over the destination only after the last byte is written. A failure leaves the
destination as it was and removes the temporary.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def is_url(path: PathLike) -> bool:
    """True for `scheme://...` (remote storage, through etils.epath), False for a local path."""
    return "://" in os.fspath(path)


def read_json(path: PathLike, what: str = "JSON file"):
    """`json.loads` of the file; a missing file or a decode error is a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist (or is not a file)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({e}); was it truncated or hand-edited?") from e


def temp_sibling(path: PathLike) -> Path:
    """Where to write `path` before renaming: a hidden file in the same folder, unique to this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on any error delete it."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write `text` to `path` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_out_dir(path: PathLike, what: str = "--out") -> Path:
    """`path` as an output folder: refuse an existing file there (a folder is created by the caller)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is an existing file, not a folder; give a folder path")
    return path
