"""grn_jax: GRN-aware single-cell transcriptomics foundation models in JAX/Flax.

Unifies GREmLN (graph-diffusion-kernel attention) and GRNFormer (multi-scale
GRNs through a GraphSAGE adapter). Subpackages, in dependency order:
`data`, `graphs` -> `models` -> `train` -> `inference`, `tasks`; `cli` on top.
"""

from grn_jax.runtime import tune_host_allocator
from grn_jax.types import (
    GENE_CLS,
    GENE_MASK,
    GENE_PAD,
    BinSpec,
    GeneNetwork,
    GraphBatch,
    TokenBatch,
    validate_token_batch,
)

__version__ = "0.1.0"

__all__ = [
    "GENE_CLS", "GENE_MASK", "GENE_PAD", "BinSpec", "GeneNetwork", "GraphBatch", "TokenBatch",
    "tune_host_allocator", "validate_token_batch", "__version__",
]
