"""Parameter counts: per module and in total, computed abstractly (no parameters allocated).

The GREmLN paper reports 10.3M parameters for its base model (papers/gremln.txt
A.5) without stating its gene vocabulary. The transformer body is fixed by
the architecture; the gene-ID table (vocab x d_model/2) is the part that
depends on the vocabulary, so `model_summary` reports it separately and
states the vocabulary size the count is for.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np

from grn_jax.models.build import abstract_variables, build_model, example_batch
from grn_jax.models.config import ModelConfig

PAPER_GREMLN_PARAMS = 10.3e6


def count_params(tree) -> int:
    """Total number of scalars in a (possibly logically-partitioned) parameter tree."""
    leaves = jax.tree.leaves(nn.meta.unbox(tree))
    return int(sum(int(np.prod(x.shape)) for x in leaves))


def params_by_module(params, depth: int = 2) -> dict[str, int]:
    """Counts grouped by the first `depth` levels of the parameter path ('encoder/run0_diffusion', ...)."""
    out: dict[str, int] = {}
    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]
    for path, leaf in flat:
        keys = [getattr(k, "key", str(k)) for k in path][:depth]
        name = "/".join(str(k) for k in keys)
        out[name] = out.get(name, 0) + int(np.prod(leaf.shape))
    return out


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    config: ModelConfig
    total: int
    gene_embedding: int
    by_module: dict

    @property
    def non_vocab(self) -> int:
        """Parameters that do not depend on the gene vocabulary size."""
        return self.total - self.gene_embedding

    def vocab_for_paper_count(self) -> float:
        """The gene vocabulary that would make our total equal the paper's 10.3M."""
        return (PAPER_GREMLN_PARAMS - self.non_vocab) / (self.config.d_model // 2)

    def to_text(self, name: str = "") -> str:
        cfg = self.config
        lines = [f"model {name or ''}".rstrip(),
                 f"  layers={cfg.n_layers} d_model={cfg.d_model} heads={cfg.n_heads} mlp={cfg.mlp_dim} "
                 f"attention={','.join(cfg.layer_kinds)} norm={cfg.norm} adapter={'yes' if cfg.adapter else 'no'}",
                 f"  gene vocabulary: {cfg.gene_vocab_size} ids (incl. 3 special), bins: {cfg.n_bins}"]
        for mod, n in sorted(self.by_module.items()):
            lines.append(f"  {mod:<40s} {n:>12,d}")
        lines.append(f"  {'total':<40s} {self.total:>12,d}  ({self.total / 1e6:.2f}M)")
        lines.append(f"  {'  of which gene-ID embedding':<40s} {self.gene_embedding:>12,d}  "
                     f"(vocab x d_model/2 = {cfg.gene_vocab_size} x {cfg.d_model // 2})")
        lines.append(f"  {'  vocabulary-independent':<40s} {self.non_vocab:>12,d}")
        v = self.vocab_for_paper_count()
        lines.append(f"  the paper's GREmLN base reports {PAPER_GREMLN_PARAMS / 1e6:.1f}M; with this body that "
                     f"corresponds to a gene vocabulary of ~{max(v, 0):,.0f} ids" if v > 0 else
                     f"  the paper's GREmLN base reports {PAPER_GREMLN_PARAMS / 1e6:.1f}M, below this body alone")
        return "\n".join(lines)


def model_summary(config: ModelConfig) -> ModelSummary:
    """Count parameters of `build_model(config)` abstractly (eval_shape; nothing is allocated)."""
    model = build_model(config)
    variables = abstract_variables(model, example_batch(config, batch_size=1, seq_len=8, num_edges=8))
    params = variables["params"]
    gene = count_params(params["embed"]["gene"])
    return ModelSummary(config=config, total=count_params(params), gene_embedding=gene,
                        by_module=params_by_module(params))
