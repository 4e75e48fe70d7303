"""Re-export of `grn_jax.typed` (typed config dataclasses from YAML), kept for existing imports.

The code lives at the package root so `grn_jax.data` can use it without importing `grn_jax.train`.
"""

from grn_jax.typed import apply_overrides, build, coerce, parse_override, to_dict

__all__ = ["apply_overrides", "build", "coerce", "parse_override", "to_dict"]
