"""Build and load the native CPU kernels (`*.cc` beside this file) as XLA FFI targets.

The C++ sources are compiled on first use with the machine's C++ compiler against the
XLA FFI headers that ship with jaxlib (`jax.ffi.include_dir()`), with `-march=native`,
and cached under `$GRN_JAX_CACHE_DIR` (default `~/.cache/grn_jax/native`). The cache key
hashes the source, the compiler command, jaxlib's version and the CPU's model and flags,
so a cache shared between different machines never loads a binary built for another
CPU. The build writes to a temporary name and renames it into place, so concurrent
processes (pytest-xdist, several trainers) never load a half-written library.

Loading a shared library runs its code, so the cache is private: the folder is
created 0700 and must belong to you; each build writes a record
(`libgrn_cpu_<key>.json`) with the SHA-256 of the library it produced, and a
library is loaded only if the record and the file are yours, not group- or
world-writable, and the file's SHA-256 matches. Anything else (a planted or
modified file) is refused, with the reason logged, and the XLA path is used.

`load()` returns the loaded library, or None with the reason in `unavailable_reason()`
(no compiler, compile error, `GRN_JAX_NATIVE=0`); callers then take their XLA path.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_diffusion.cc")
TARGETS = {"float32": "GrnCpuDiffuseF32", "float64": "GrnCpuDiffuseF64"}
FFI_NAMES = {"float32": "grn_cpu_diffuse_f32", "float64": "grn_cpu_diffuse_f64"}

# Part of the cache key: bump when the cache layout changes (2: build records with SHA-256).
CACHE_FORMAT = b"grn_jax.native/2"
COMPILE_SECONDS = "15-60"  # 12 s measured on an idle 2-core VM; 57 s reported on a loaded one

_lock = threading.Lock()
_state: dict = {}


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))][:2]
    return "\n".join(keep) or platform.machine()


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("GRN_JAX_CACHE_DIR", Path.home() / ".cache" / "grn_jax")) / "native"


class UnsafeCacheError(RuntimeError):
    """A cached library or the cache folder fails the ownership / permission / hash checks."""


def _flags() -> list:
    import jax

    return ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno",
            f"-I{jax.ffi.include_dir()}"]


def record_path(cxx: str) -> Path:
    """The build record `libgrn_cpu_<key>.json` naming this machine's library and its SHA-256."""
    import jaxlib

    key = hashlib.sha256(b"\0".join([CACHE_FORMAT, SOURCE.read_bytes(), cxx.encode(), " ".join(_flags()).encode(),
                                     jaxlib.__version__.encode(), _cpu_signature().encode()])).hexdigest()[:20]
    return cache_dir() / f"libgrn_cpu_{key}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_private(path: Path, st: os.stat_result, what: str) -> None:
    if st.st_uid != os.geteuid():
        raise UnsafeCacheError(f"refusing {what} {path}: owned by uid {st.st_uid}, not by you (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        raise UnsafeCacheError(f"refusing {what} {path}: it is group- or world-writable "
                               f"(mode {stat.S_IMODE(st.st_mode):o})")


def _private_dir(d: Path) -> Path:
    """`d`, created 0700 if absent (and its missing parent); refused unless it is yours; tightened to 0700."""
    d.parent.parent.mkdir(parents=True, exist_ok=True)
    for folder in (d.parent, d):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
    st = os.stat(d)
    if st.st_uid != os.geteuid():
        raise UnsafeCacheError(f"refusing cache folder {d}: owned by uid {st.st_uid}, not by you "
                               f"(uid {os.geteuid()}); point GRN_JAX_CACHE_DIR at a folder of your own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(d, 0o700)  # the files in it are still checked one by one before loading
    return d


def verified_library(record: Path) -> Optional[Path]:
    """The library named by `record` once its owner, permissions and SHA-256 check out;
    None if nothing is cached yet; UnsafeCacheError for anything else (never loaded)."""
    try:
        rst = os.lstat(record)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(rst.st_mode):
        raise UnsafeCacheError(f"refusing build record {record}: not a regular file")
    _check_private(record, rst, "build record")
    try:
        info = json.loads(record.read_text())
        name, want = str(info["library"]), str(info["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise UnsafeCacheError(f"refusing build record {record}: unreadable ({e}); delete it to rebuild") from None
    if Path(name).name != name:
        raise UnsafeCacheError(f"refusing build record {record}: library {name!r} is not a file name in the cache")
    lib = record.parent / name
    try:
        lst = os.lstat(lib)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(lst.st_mode) or not stat.S_ISREG(lst.st_mode):
        raise UnsafeCacheError(f"refusing {lib}: not a regular file")
    _check_private(lib, lst, "cached library")
    got = _sha256(lib)
    if got != want:
        raise UnsafeCacheError(f"refusing {lib}: its SHA-256 {got[:16]}... differs from the {want[:16]}... recorded "
                               "when it was built (modified or replaced); delete it to rebuild")
    return lib


def _write_private(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build(cxx: str) -> Path:
    """The verified cached library for this machine, compiled first if there is none."""
    _private_dir(cache_dir())
    record = record_path(cxx)
    cached = verified_library(record)
    if cached is not None:
        return cached
    fd, tmp = tempfile.mkstemp(prefix=record.stem + ".", suffix=".tmp", dir=record.parent)
    os.close(fd)
    cmd = [cxx, *_flags(), str(SOURCE), "-o", tmp]
    log.warning("compiling native CPU diffusion kernel (first use, ~%s s; cached in %s)...", COMPILE_SECONDS,
                record.parent)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-4000:]}")
        os.chmod(tmp, 0o700)
        digest = _sha256(Path(tmp))
        # content-addressed name: concurrent builders never leave a record naming another's file
        lib = record.parent / f"{record.stem}-{digest[:16]}.so"
        os.replace(tmp, lib)
        _write_private(record, json.dumps({"library": lib.name, "sha256": digest, "compiler": cxx}).encode())
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return verified_library(record)


def load():
    """The native library with its FFI targets registered, or None (see `unavailable_reason`)."""
    with _lock:
        if "lib" in _state or "reason" in _state:
            return _state.get("lib")
        if os.environ.get("GRN_JAX_NATIVE", "1") == "0":
            _state["reason"] = "disabled by GRN_JAX_NATIVE=0"
            return None
        cxx = _compiler()
        if cxx is None:
            _state["reason"] = "no C++ compiler found (set CXX, or install g++)"
            return None
        try:
            import jax

            path = _build(cxx)
            lib = ctypes.cdll.LoadLibrary(str(path))
            for dtype, sym in TARGETS.items():
                jax.ffi.register_ffi_target(FFI_NAMES[dtype], jax.ffi.pycapsule(getattr(lib, sym)), platform="cpu")
        except UnsafeCacheError as e:
            _state["reason"] = f"native CPU kernel not loaded, using XLA: {e}"
            log.warning("%s", _state["reason"])
            return None
        except Exception as e:  # noqa: BLE001 - any failure means: use the XLA path, and say why
            _state["reason"] = f"native CPU kernel build/load failed: {e}"
            log.warning("%s", _state["reason"])
            return None
        _state["lib"] = lib
        return lib


def unavailable_reason() -> Optional[str]:
    """Why the native kernels cannot be used here, or None if they can (builds on first call)."""
    load()
    return _state.get("reason")
