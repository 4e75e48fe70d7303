"""grn_jax.models: pure Flax modules for GREmLN (GDKA transformer) and the GRNFormer adapter.

Entry points: `build_model(config)` -> module with pure `init`/`apply`;
`model(batch, deterministic=...)` -> `ModelOutput`. Configs: `ModelConfig`,
`AdapterConfig`, presets (`gremln_base`, ...).
"""

from grn_jax.models.adapter import StructureAdapter
from grn_jax.models.attention import (DiffusionContext, MultiHeadAttention, attention_weights, diffuse_queries,
                                      diffusion_attention, dot_product_attention)
from grn_jax.models.blocks import Encoder, EncoderBlock, Mlp, layer_runs
from grn_jax.models.build import abstract_variables, build_model, example_batch, init_variables
from grn_jax.models.config import (PRESETS, AdapterConfig, ModelConfig, gremln_base, gremln_vanilla,
                                   grnformer_gremln, preset, tiny)
from grn_jax.models.embeddings import GeneEmbed, TokenEmbed
from grn_jax.models.gnn import GNNEncoder, GNNLayer, flat_graph
from grn_jax.models.gremln import GREmLN, ModelOutput, diffusion_context, gene_token_mask, heat_plan
from grn_jax.models.grnformer import (GRNFormer, attention_importance, fusion_attention_weights,
                                      tf_enrichment_ratio)
from grn_jax.models.heads import ClassificationHead, MaskedBinHead
from grn_jax.models.sampling import sample_neighbors, undirected_edges
from grn_jax.models.summary import ModelSummary, count_params, model_summary, params_by_module
from grn_jax.models.validate import check_batch

__all__ = [
    "AdapterConfig", "ClassificationHead", "DiffusionContext", "Encoder", "EncoderBlock", "GNNEncoder", "GNNLayer",
    "GREmLN", "GRNFormer", "GeneEmbed", "MaskedBinHead", "Mlp", "ModelConfig", "ModelOutput", "ModelSummary",
    "MultiHeadAttention", "PRESETS", "StructureAdapter", "TokenEmbed", "abstract_variables", "attention_importance",
    "attention_weights", "build_model", "check_batch", "count_params", "diffuse_queries", "diffusion_attention",
    "diffusion_context", "dot_product_attention", "example_batch", "flat_graph", "fusion_attention_weights",
    "gene_token_mask", "gremln_base", "gremln_vanilla", "grnformer_gremln", "heat_plan", "init_variables",
    "layer_runs", "model_summary", "params_by_module", "preset", "sample_neighbors", "tf_enrichment_ratio", "tiny",
    "undirected_edges",
]
