"""Build and load the native CPU kernels (`*.cc` beside this file) as XLA FFI targets.

The C++ sources are compiled on first use with the machine's C++ compiler against the
XLA FFI headers that ship with jaxlib (`jax.ffi.include_dir()`), with `-march=native`,
and cached under `$GRN_JAX_CACHE_DIR` (default `~/.cache/grn_jax/native`). The cache key
hashes the source, the compiler command, jaxlib's version and the CPU's model and flags,
so a cache shared between different machines never loads a binary built for another
CPU. The build writes to a temporary name and renames it into place, so concurrent
processes (pytest-xdist, several trainers) never load a half-written library.

`load()` returns the loaded library, or None with the reason in `unavailable_reason()`
(no compiler, compile error, `GRN_JAX_NATIVE=0`); callers then take their XLA path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_diffusion.cc")
TARGETS = {"float32": "GrnCpuDiffuseF32", "float64": "GrnCpuDiffuseF64"}
FFI_NAMES = {"float32": "grn_cpu_diffuse_f32", "float64": "grn_cpu_diffuse_f64"}

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


def _build(cxx: str) -> Path:
    import jax
    import jaxlib

    src = SOURCE.read_bytes()
    flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno",
             f"-I{jax.ffi.include_dir()}"]
    key = hashlib.sha256(b"\0".join([src, cxx.encode(), " ".join(flags).encode(), jaxlib.__version__.encode(),
                                     _cpu_signature().encode()])).hexdigest()[:20]
    out = cache_dir() / f"libgrn_cpu_{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    cmd = [cxx, *flags, str(SOURCE), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


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
