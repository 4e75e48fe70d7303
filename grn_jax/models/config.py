"""Typed, frozen model configuration and the named presets.

One config per concern (STYLE.md §10): `ModelConfig` describes the backbone
(GREmLN transformer), `AdapterConfig` the optional GRNFormer structure adapter.
Both validate themselves on construction with messages naming the bad field,
so a wrong YAML value fails at start-up rather than deep inside a jitted step.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from grn_jax.types import BinSpec

ATTENTION_KINDS = ("vanilla", "diffusion")
NORM_KINDS = ("pre", "post")
ACTIVATIONS = ("gelu", "relu")
ATTENTION_IMPLS = ("xla", "blocked", "pallas")
REMAT_POLICIES = ("none", "attention", "block")
DTYPES = ("float32", "bfloat16")
CELL_HEAD_OUTPUTS = ("bins", "value")
DIFFUSION_OPERANDS = ("queries", "queries_values")
GNN_KINDS = ("sage", "gcn", "gin")
AGGREGATORS = ("mean", "max")
PERTURB_MODES = ("coexpression", "random")
NODE_FEATURES = ("gene", "token")


def _check_choice(owner: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}")


def _check_positive(owner: str, name: str, value) -> None:
    if not value > 0:
        raise ValueError(f"{owner}.{name} must be > 0, got {value!r}")


def _check_rate(owner: str, name: str, value) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}.{name} must be in [0, 1), got {value!r}")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """GRNFormer structure adapter (papers/grnformer.txt §3.2, Algorithm 1).

    A GNN encodes the cell-type graph (`TokenBatch.graph`) and, when present,
    the cell-specific graph (`TokenBatch.cell_graph`) with shared weights; the
    two encodings are summed into `h_struct`. A multi-head cross-attention
    (queries from the expression stream) produces `h_fusion`, and the adapter
    replaces the backbone's final layer with `h = h_expr + fusion_beta * h_fusion`.
    """

    gnn: str = "sage"  # sage | gcn | gin (papers/grnformer.txt Table 5)
    gnn_layers: int = 2
    aggregator: str = "mean"  # GraphSAGE neighbour aggregator: mean | max
    fanout: int = 10  # fixed-size uniform neighbour sample per node (GraphSAGE)
    fusion_heads: int = 8
    fusion_beta: float = 1.0
    # GNN node features: "gene" = gene-ID embeddings (identity only, as in the paper) or "token" =
    # [gene || visible-bin] embeddings, so message passing carries each neighbour's expression along
    # the regulatory edges (masked genes show the MASK bin: no target leaks)
    node_features: str = "gene"
    # Co-expression edge perturbation (Algorithm 1 lines 3-12): the fraction of
    # edges replaced by co-expression pairs in training; 0 turns it off.
    perturb_alpha: float = 0.2
    perturb_mode: str = "coexpression"  # coexpression | random (the paper's random-edge ablation)
    # Seed of the edge-identity hash that picks neighbours when no 'sample' rng
    # is given (inference): the same cell always gets the same neighbours.
    inference_sample_seed: int = 0

    def __post_init__(self):
        o = "AdapterConfig"
        _check_choice(o, "gnn", self.gnn, GNN_KINDS)
        _check_choice(o, "aggregator", self.aggregator, AGGREGATORS)
        _check_choice(o, "node_features", self.node_features, NODE_FEATURES)
        _check_positive(o, "gnn_layers", self.gnn_layers)
        _check_positive(o, "fanout", self.fanout)
        _check_positive(o, "fusion_heads", self.fusion_heads)
        _check_rate(o, "perturb_alpha", self.perturb_alpha)
        _check_choice(o, "perturb_mode", self.perturb_mode, PERTURB_MODES)
        if not 0 <= self.inference_sample_seed < 2**32:
            raise ValueError(f"{o}.inference_sample_seed must be a uint32, got {self.inference_sample_seed}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """GREmLN backbone (papers/gremln.txt §3, A.5) plus an optional GRNFormer adapter.

    `attention` is one kind for every layer or a tuple with one kind per layer
    ("vanilla" = the paper's graph ablation, "diffusion" = GDKA). Diffusion
    always runs in float32; `dtype` sets the rest of the computation.
    """

    gene_vocab_size: int
    n_bins: int = 100
    d_model: int = 512
    n_layers: int = 3
    n_heads: int = 8
    mlp_dim: int = 2048
    activation: str = "gelu"
    norm: str = "pre"  # pre-LN (default) or post-LN (the public GREmLN code)
    attention: str | tuple[str, ...] = "diffusion"
    # a number, or "auto": GREmLN's default 1 / lambda_min (papers/gremln.txt A.5), resolved once at
    # pretraining start from a sample of training cells' graphs (grn_jax.train.graph_check)
    diffusion_beta: float | str = 0.1
    diffusion_tol: float = 1e-8  # Chebyshev coefficient-tail tolerance (adaptive order)
    diffusion_order: Optional[int] = None  # fixed Chebyshev order instead (the paper's K = 64)
    # what GDKA diffuses: "queries" (the paper: softmax(exp(-beta L) Q K^T) V, keys and values untouched) or
    # "queries_values" (V too, so a token reads its graph neighbours' values wherever it attends, itself
    # included: a direct channel from a masked gene's regulators to its prediction; an experiment of
    # issue 14, not the paper's design). Runs on attention_impl xla | blocked (the fused kernel diffuses Q only)
    diffusion_operands: str = "queries"
    attention_impl: str = "xla"  # xla | blocked (XLA, key blocks, no S x S) | pallas (grn_jax.kernels)
    attention_block: int = 512  # keys per block under attention_impl="blocked"
    # activation rematerialisation in the backward pass: none | attention (the softmax core of every
    # layer, so no S x S probabilities are kept) | block (each whole encoder layer keeps only its input)
    remat: str = "none"
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: str = "float32"
    layer_norm_eps: float = 1e-5
    adapter: Optional[AdapterConfig] = None
    # the cell-embedding head (models.heads.CellExpressionHead: every vocabulary gene's bin from the pooled
    # embedding). On by default: without its objective the pooled embedding does not carry the cell (README,
    # "What the default model is and why"). The papers' presets turn it off (their parameter counts);
    # off, ModelOutput.cell_gene_logits is an empty [B, 0, n_bins] array
    cell_head: bool = True
    # what the cell head predicts for every vocabulary gene: "value" (one number, the bin scaled to [0, 1],
    # squared error: an autoencoder of the cell's binned profile, whose linear optimum is the profile's
    # principal subspace; the default, measured better: README) or "bins" (a softmax over the n_bins rank
    # bins, cross-entropy)
    cell_head_output: str = "value"

    def __post_init__(self):
        o = "ModelConfig"
        if not isinstance(self.cell_head, bool):
            raise ValueError(f"{o}.cell_head must be true or false, got {self.cell_head!r}")
        if self.cell_head_output not in CELL_HEAD_OUTPUTS:
            raise ValueError(f"{o}.cell_head_output must be one of {list(CELL_HEAD_OUTPUTS)}, "
                             f"got {self.cell_head_output!r}")
        if isinstance(self.attention, list):  # from YAML: keep the config hashable
            object.__setattr__(self, "attention", tuple(self.attention))
        if self.gene_vocab_size < 4:
            raise ValueError(f"{o}.gene_vocab_size must count the 3 special tokens plus at least one gene, "
                             f"got {self.gene_vocab_size}")
        BinSpec(self.n_bins)  # validates n_bins
        for name in ("d_model", "n_layers", "n_heads", "mlp_dim"):
            _check_positive(o, name, getattr(self, name))
        if self.d_model % 2:
            raise ValueError(f"{o}.d_model must be even (gene-ID and bin embeddings are d_model/2 each), "
                             f"got {self.d_model}")
        if self.d_model % self.n_heads:
            raise ValueError(f"{o}.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        _check_choice(o, "activation", self.activation, ACTIVATIONS)
        _check_choice(o, "norm", self.norm, NORM_KINDS)
        _check_choice(o, "attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _check_positive(o, "attention_block", self.attention_block)
        _check_choice(o, "remat", self.remat, REMAT_POLICIES)
        if self.attention_impl == "blocked" and self.attention_dropout_rate > 0:
            raise ValueError(f"{o}.attention_impl='blocked' has no attention dropout; set attention_dropout_rate=0 "
                             f"or use attention_impl='xla'")
        _check_choice(o, "dtype", self.dtype, DTYPES)
        _check_rate(o, "dropout_rate", self.dropout_rate)
        _check_rate(o, "attention_dropout_rate", self.attention_dropout_rate)
        if isinstance(self.diffusion_beta, str):
            if self.diffusion_beta != "auto":
                raise ValueError(f"{o}.diffusion_beta must be a number >= 0 or 'auto', got {self.diffusion_beta!r}")
        elif self.diffusion_beta < 0:
            raise ValueError(f"{o}.diffusion_beta must be >= 0, got {self.diffusion_beta}")
        _check_positive(o, "diffusion_tol", self.diffusion_tol)
        _check_choice(o, "diffusion_operands", self.diffusion_operands, DIFFUSION_OPERANDS)
        if self.diffusion_operands != "queries" and self.attention_impl == "pallas":
            raise ValueError(f"{o}.diffusion_operands={self.diffusion_operands!r} runs on attention_impl 'xla' or "
                             "'blocked'; the fused Pallas kernel diffuses the queries only")
        if self.diffusion_order is not None and not (isinstance(self.diffusion_order, int)
                                                     and 0 <= self.diffusion_order < 512):
            raise ValueError(f"{o}.diffusion_order must be None (adaptive) or an int in [0, 512), "
                             f"got {self.diffusion_order!r}")
        kinds = self.layer_kinds
        if len(kinds) != self.n_layers:
            raise ValueError(f"{o}.attention lists {len(kinds)} layer kinds but n_layers={self.n_layers}; "
                             f"give one kind per layer or a single kind for all")
        for i, kind in enumerate(kinds):
            _check_choice(o, f"attention[{i}]", kind, ATTENTION_KINDS)
        if self.adapter is not None:
            if not isinstance(self.adapter, AdapterConfig):
                raise ValueError(f"{o}.adapter must be an AdapterConfig or None, got {type(self.adapter).__name__}")
            if self.d_model % self.adapter.fusion_heads:
                raise ValueError(f"{o}.d_model={self.d_model} must be divisible by "
                                 f"adapter.fusion_heads={self.adapter.fusion_heads}")

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """The attention kind of every transformer layer (length n_layers)."""
        if isinstance(self.attention, str):
            return (self.attention,) * self.n_layers
        return tuple(self.attention)

    @property
    def backbone_kinds(self) -> tuple[str, ...]:
        """Kinds of the transformer layers actually built: the adapter replaces the last one."""
        kinds = self.layer_kinds
        return kinds[:-1] if self.adapter is not None else kinds

    @property
    def uses_diffusion(self) -> bool:
        return "diffusion" in self.backbone_kinds

    @property
    def bin_spec(self) -> BinSpec:
        return BinSpec(self.n_bins)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def gremln_base(gene_vocab_size: int = 20_003, **overrides) -> ModelConfig:
    """The paper configuration (papers/gremln.txt A.5): 3 GDKA layers, d 512, 8 heads, GELU, beta 0.1.

    The default vocabulary is 20,000 genes + the 3 special tokens; the paper does
    not state its vocabulary, which dominates the parameter count (see
    `grn_jax.models.summary`).
    """
    fields = dict(gene_vocab_size=gene_vocab_size, n_bins=100, d_model=512, n_layers=3, n_heads=8, mlp_dim=2048,
                  activation="gelu", attention="diffusion", diffusion_beta=0.1, cell_head=False)
    fields.update(overrides)
    return ModelConfig(**fields)


def gremln_vanilla(gene_vocab_size: int = 20_003, **overrides) -> ModelConfig:
    """`gremln_base` with plain attention: the paper's graph ablation."""
    return gremln_base(gene_vocab_size, **{"attention": "vanilla", **overrides})


def grnformer_gremln(gene_vocab_size: int = 20_003, **overrides) -> ModelConfig:
    """GDKA backbone whose final layer is the GRNFormer structure adapter (a combination neither paper tried)."""
    return gremln_base(gene_vocab_size, **{"adapter": AdapterConfig(), **overrides})


def tiny(gene_vocab_size: int = 64, **overrides) -> ModelConfig:
    """A small config for tests and smoke runs."""
    base = dict(gene_vocab_size=gene_vocab_size, n_bins=8, d_model=32, n_layers=2, n_heads=4, mlp_dim=64)
    base.update(overrides)
    return ModelConfig(**base)


PRESETS = {
    "gremln_base": gremln_base,
    "gremln_vanilla": gremln_vanilla,
    "grnformer_gremln": grnformer_gremln,
    "tiny": tiny,
}


def preset(name: str, **overrides) -> ModelConfig:
    """Look up a preset by name; unknown names list the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
