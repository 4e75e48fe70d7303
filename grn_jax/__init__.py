"""grn_jax: GRN-aware single-cell transcriptomics foundation models in JAX/Flax.

Unifies GREmLN (graph-diffusion-kernel attention) and GRNFormer (multi-scale
GRNs through a GraphSAGE adapter). Subpackages, in dependency order:
`data`, `graphs` -> `models` -> `train` -> `inference`, `tasks`; `cli` on top.
"""

import importlib

# Public names resolve lazily (PEP 562): `import grn_jax` (and so `grn-jax --help`) loads no JAX or
# Flax; the first use of e.g. `grn_jax.TokenBatch` imports `grn_jax.types`.
_LAZY = {
    "tune_host_allocator": "grn_jax.runtime",
    **{name: "grn_jax.types" for name in ("GENE_CLS", "GENE_MASK", "GENE_PAD", "BinSpec", "GeneNetwork",
                                          "GraphBatch", "TokenBatch", "validate_token_batch")},
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'grn_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "GENE_CLS", "GENE_MASK", "GENE_PAD", "BinSpec", "GeneNetwork", "GraphBatch", "TokenBatch",
    "tune_host_allocator", "validate_token_batch", "__version__",
]
