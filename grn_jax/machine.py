"""Describe the machine a benchmark ran on (recorded beside every benchmark result)."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine() -> dict:
    """CPU, cores, memory, library versions, JAX backend/devices and the load average now.

    The load average is recorded because timings taken on a busy machine are not comparable.
    """
    import jax
    import numpy as np

    dev = jax.devices()[0]
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        mem_gib = float("nan")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(), "numpy": np.__version__, "jax": jax.__version__,
        "backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
        "n_devices": jax.device_count(), "platform": platform.platform(),
        "load_average_1min": round(load[0], 2), "load_average_at_start": [round(x, 2) for x in load],
    }
