"""Process-level runtime settings that JAX on CPU needs to run at memory speed.

`tune_host_allocator()`: glibc's malloc serves every allocation above its mmap
threshold (at most 32 MiB) with a fresh `mmap` and returns it with `munmap` when freed.
XLA:CPU allocates each output and temporary buffer of an executable per call, so a
[8, 2048, 512] float32 result (32 MiB) is page-faulted in, 4 KiB at a time, on every
call: measured here, that costs 4-10x the time of writing the data (a 32 MiB `x * 2`
took 11.4 ms with 8,193 page faults per call, 1.2-1.9 ms with none;
benchmarks/results/diffusion.md). Turning mmap allocation off (`M_MMAP_MAX = 0`),
never trimming the heap (`M_TRIM_THRESHOLD`) and keeping one arena (`M_ARENA_MAX = 1`:
a thread's own arena is capped at 64 MiB and falls back to mmap above that) makes freed
buffers reusable, as tcmalloc/jemalloc do. The cost: memory freed by the process is kept
for reuse rather than returned to the OS.

Call it before JAX's first computation: threads that already made their own arena keep
it. The CLI (`grn_jax.cli.main`) and the benchmarks call it at start; library users opt
in by calling it once at start-up. `GRN_JAX_TUNE_MALLOC=0` turns it off. Linux/glibc only; elsewhere
it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2 ** 31 - 1
_done: dict = {}


def tune_host_allocator() -> dict:
    """Apply the glibc malloc settings above (once per process); return what was done.

    Returns {"tuned": bool, "reason": str}.
    """
    if _done:
        return dict(_done)
    if os.environ.get("GRN_JAX_TUNE_MALLOC", "1") == "0":
        _done.update(tuned=False, reason="disabled by GRN_JAX_TUNE_MALLOC=0")
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _done.update(tuned=False, reason=f"not Linux/glibc ({platform.system()}, {platform.libc_ver()[0] or 'no libc'})")
    else:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(libc.mallopt(opt, val) == 1 for opt, val in
                 ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
        _done.update(tuned=ok, reason="glibc mallopt: M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1" if ok
                     else "glibc mallopt refused the settings")
    return dict(_done)
