"""Pallas kernels (installed as `grn_jax.kernels`), each beside a pure-jnp reference.

* `ell`: padded fixed-degree layout of each cell's shifted Laplacian L~ = L - I.
* `chebyshev_diffusion`: fused Chebyshev heat-kernel diffusion of query columns.
* `diffusion_attention`: GDKA = fused diffusion + online-softmax (flash) attention;
  `flash_backward`: its dQ and dK/dV kernels.
* `dispatch`: what `attention_impl="pallas"` runs from model-side inputs, or why it cannot.
* `cpu_diffusion` (+ `cpu_diffusion.cc`, built by `native_build`): the fused C++ CPU
  Chebyshev diffusion behind `grn_jax.graphs.diffuse(impl="native")`, an XLA FFI call.
* `sharding`: every kernel call runs under `shard_map` over the batch's mesh axes when a
  batch-sharded mesh is in context, so each device computes only its own cells.

Every kernel takes `interpret: bool` (True runs it through the Pallas
interpreter on any backend, which is how CPU tests verify it) and a frozen
block-size dataclass; GPU lowering is Pallas-Triton.
"""

from .cpu_diffusion import cpu_diffuse
from .chebyshev_diffusion import ChebyshevBlocks, chebyshev_diffusion, chebyshev_diffusion_reference
from .diffusion_attention import (DiffusionAttentionBlocks, FlashBlocks, diffusion_attention,
                                  diffusion_attention_reference, masked_attention_reference,
                                  masked_flash_attention)
from .dispatch import pallas_gdka, pallas_unavailable_reason
from .ell import (EllLaplacian, build_ell_laplacian, check_ell, ell_degree_bound, ell_from_laplacian,
                  safe_width)

__all__ = [
    "ChebyshevBlocks", "DiffusionAttentionBlocks", "cpu_diffuse", "EllLaplacian", "FlashBlocks", "build_ell_laplacian",
    "chebyshev_diffusion", "chebyshev_diffusion_reference", "check_ell", "diffusion_attention",
    "diffusion_attention_reference", "ell_degree_bound", "ell_from_laplacian", "masked_attention_reference",
    "masked_flash_attention", "pallas_gdka", "pallas_unavailable_reason", "safe_width",
]
