"""grn_jax.inference: embeddings into AnnData, export for serving, fine-tuning on labels.

- `load_pretrained(run_dir)` / `load_model(path)`: parameters, config, vocabulary and the
  tokenisation record of a pretraining run (or an export folder);
- `TrainingTokenizer`: tokenises new cells exactly as training did;
- `embed(...)`: streaming embeddings into obsm/varm/uns (`grn-jax embed`);
- `export_model(...)` / `load_export(...)`: a self-contained serving folder with a
  `jax.export` artefact (`grn-jax export`);
- `finetune(...)`: a classification head on the pretrained encoder (`grn-jax finetune`).
"""

from grn_jax.inference.checkpoint import Pretrained, checkpoint_sha256, load_pretrained
from grn_jax.inference.embed import (CLS_KEY, GENE_CONTEXT_KEY, GENE_TOKEN_KEY, MEAN_KEY, UNS_KEY, EmbedReport,
                                     embed)
from grn_jax.inference.export import export_model, load_exported_pretrained, load_model
from grn_jax.inference.finetune import FinetuneConfig, FinetuneResult, finetune
from grn_jax.inference.graph_sources import GraphSpec, build_graph_source
from grn_jax.inference.model_fn import batch_arrays, input_names, make_inference_fn
from grn_jax.inference.serving import ExportError, ServedModel, load_export
from grn_jax.inference.tokens import TrainingTokenizer

__all__ = [
    "CLS_KEY", "EmbedReport", "ExportError", "FinetuneConfig", "FinetuneResult", "finetune", "GENE_CONTEXT_KEY", "GENE_TOKEN_KEY", "GraphSpec", "MEAN_KEY",
    "Pretrained", "ServedModel", "TrainingTokenizer", "UNS_KEY", "batch_arrays", "build_graph_source",
    "checkpoint_sha256", "embed", "export_model", "input_names", "load_export", "load_exported_pretrained",
    "load_model", "load_pretrained", "make_inference_fn",
]
