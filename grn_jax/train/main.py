"""What `grn-jax pretrain` runs: load + validate the config, then train (or compile only).

Kept apart from the CLI so the command stays one library call, and so errors a
user can fix (bad config field, corrupt checkpoint, non-finite loss) become one
clear message and an exit code instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

EXIT_ERROR = 2          # bad config / data / checkpoint
EXIT_NON_FINITE = 3     # training diverged
EXIT_SIGTERM = 143      # stopped by SIGTERM after saving (128 + 15)


def use_cpu_devices(n: int) -> None:
    """Run on `n` simulated CPU devices (set before JAX picks a backend)."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", int(n))


def pretrain_command(config: str, overrides: Sequence[str] = (), *, compile_only: bool = False,
                     cpu_devices: Optional[int] = None, seq_len: Optional[int] = None,
                     num_edges: Optional[int] = None, device_memory: Optional[str] = None) -> int:
    """Load `config` with `overrides`, then pretrain or compile; returns the process exit code."""
    if cpu_devices is not None:
        use_cpu_devices(cpu_devices)
    from grn_jax.config import load_run_config
    from grn_jax.train.checkpoint import CheckpointError
    from grn_jax.train.loop import NonFiniteLossError

    try:
        cfg = load_run_config(config, overrides)
        if compile_only:
            from grn_jax.train.compile import compile_only as run_compile

            run_compile(cfg, seq_len=seq_len, num_edges=num_edges, device_memory=device_memory)
            return 0
        from grn_jax.train.loop import pretrain

        result = pretrain(cfg)
    except (ValueError, CheckpointError) as e:
        print(f"grn-jax pretrain: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except NonFiniteLossError as e:
        print(f"grn-jax pretrain: stopped: {e}", file=sys.stderr)
        return EXIT_NON_FINITE
    if result.stopped == "sigterm":
        return EXIT_SIGTERM
    val = "" if result.val is None else (f", val loss {result.val['val_loss']:.4f}, "
                                         f"val masked-bin accuracy {result.val['val_accuracy']:.3f}")
    print(f"pretrain: {result.final_step} steps done (started at {result.start_step}); final train loss "
          f"{result.final_loss if result.final_loss is None else round(result.final_loss, 4)}{val}; "
          f"run directory {result.run_dir}")
    return 0
