"""The GREmLN model (papers/gremln.txt §3): embeddings -> GDKA/vanilla encoder -> masked-bin head.

`GREmLN(config)(batch, deterministic=...)` always returns a `ModelOutput`,
whatever the config (attention kinds, norm placement, GRNFormer adapter).
The Laplacian is built once per forward from `batch.graph` and the Chebyshev
plan once per (beta, tol) at trace time; every diffusion layer shares both.

RNG streams (pass via `rngs=` to `apply`): 'dropout' (dropout, attention
dropout), and for the GRNFormer adapter 'sample' (GraphSAGE neighbour
sampling) and 'perturb' (co-expression edge perturbation); none is needed
when `deterministic=True`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from grn_jax import axes
from grn_jax.models.adapter import StructureAdapter
from grn_jax.models.attention import DiffusionContext
from grn_jax.models.blocks import Encoder, layer_norm
from grn_jax.models.config import ModelConfig
from grn_jax.models.embeddings import TokenEmbed
from grn_jax.models.heads import CellExpressionHead, MaskedBinHead
from grn_jax.types import TokenBatch


@struct.dataclass
class ModelOutput:
    """What every model returns.

    bin_logits  float32 [B, S, n_bins]  masked-bin prediction logits
    hidden      [B, S, D]               final hidden states (zero at padding)
    cls_embedding   [B, D]              hidden state of the CLS token
    mean_embedding  [B, D]              mean of hidden over the cell's real gene tokens
    cell_gene_logits float32 [B, V, n_bins]  every vocabulary gene's bin (0 = not among the cell's
                                        tokens) predicted from mean_embedding alone (CellExpressionHead);
                                        [B, V, 1] with cell_head_output="value": bin / (n_bins - 1)
    """

    bin_logits: jax.Array
    hidden: jax.Array
    cls_embedding: jax.Array
    mean_embedding: jax.Array
    cell_gene_logits: jax.Array


def compute_dtype(cfg: ModelConfig):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def gene_token_mask(token_mask_BxS) -> jax.Array:
    """Real gene tokens: `token_mask` without the CLS at position 0."""
    s = token_mask_BxS.shape[1]
    return token_mask_BxS & (jnp.arange(s) > 0)[None, :]


def heat_plan(cfg: ModelConfig):
    """The static Chebyshev plan of exp(-beta L): adaptive per (beta, tol), or fixed `diffusion_order`."""
    from grn_jax.graphs.chebyshev import fixed_order_heat_kernel_plan, heat_kernel_plan  # noqa: PLC0415

    if cfg.diffusion_beta == "auto":
        raise ValueError("model.diffusion_beta is 'auto', which pretraining resolves from the training cells' graphs "
                         "(grn_jax.train.graph_check.check_graphs); give a number to build the model here")
    if cfg.diffusion_order is not None:
        return fixed_order_heat_kernel_plan(float(cfg.diffusion_beta), int(cfg.diffusion_order))
    return heat_kernel_plan(float(cfg.diffusion_beta), float(cfg.diffusion_tol))


def diffusion_context(batch: TokenBatch, impl: str = "xla") -> DiffusionContext:
    """Laplacian of `batch.graph` + node/passthrough masks: built once per forward, shared by all layers.

    When the diffusion runs on the XLA path the Laplacian is also packed once
    (`pack_laplacian`), so no layer repeats the packing sort; the native CPU kernel
    (`grn_jax.graphs.diffusion.resolve_impl`) reads the BCOO directly.
    """
    from grn_jax.graphs.diffusion import pack_laplacian, resolve_impl  # noqa: PLC0415
    from grn_jax.graphs.laplacian import normalized_laplacian  # noqa: PLC0415

    s = batch.gene_ids.shape[1]
    lap = normalized_laplacian(batch.graph, num_nodes=s)
    cls_BxS = jnp.broadcast_to((jnp.arange(s) == 0)[None, :], batch.token_mask.shape) & batch.token_mask
    # the same choice `diffuse` will make for this batch (a mesh's batch axes that do not divide it do not count)
    xla_path = impl != "pallas" and resolve_impl(batch_size=batch.gene_ids.shape[0]) == "xla"
    return DiffusionContext(laplacian=lap, node_mask_BxS=batch.token_mask.astype(bool),
                            passthrough_mask_BxS=cls_BxS, packed=pack_laplacian(lap) if xla_path else None)


class GREmLN(nn.Module):
    """GRN-aware transformer; with `config.adapter` set, its last layer is the GRNFormer adapter."""

    config: ModelConfig

    @nn.compact
    def __call__(self, batch: TokenBatch, *, deterministic: bool = True) -> ModelOutput:
        cfg = self.config
        dtype = compute_dtype(cfg)
        token_mask_BxS = batch.token_mask.astype(bool)
        gene_mask_BxS = gene_token_mask(token_mask_BxS)

        x_BxSxD, gene_emb_BxSxH = TokenEmbed(cfg.gene_vocab_size, cfg.bin_spec.vocab_size, cfg.d_model,
                                             dtype, name="embed")(batch.gene_ids, batch.bins)
        token_emb_BxSxD = x_BxSxD  # [gene || bin] embeddings: the adapter's node features if node_features="token"
        x_BxSxD = nn.Dropout(cfg.dropout_rate)(x_BxSxD, deterministic=deterministic)

        ctx, plan = None, None
        if cfg.uses_diffusion:
            ctx, plan = diffusion_context(batch, cfg.attention_impl), heat_plan(cfg)
        if cfg.backbone_kinds:
            x_BxSxD = Encoder(cfg, cfg.backbone_kinds, plan, dtype, deterministic, name="encoder")(
                x_BxSxD, token_mask_BxS, ctx)
        if cfg.adapter is not None:
            node_feats = gene_emb_BxSxH if cfg.adapter.node_features == "gene" else token_emb_BxSxD
            x_BxSxD = StructureAdapter(cfg, dtype, deterministic, name="adapter")(x_BxSxD, node_feats, batch)
        if cfg.norm == "pre":
            x_BxSxD = layer_norm(cfg, "ln_final", dtype)(x_BxSxD)

        hidden_BxSxD = jnp.where(token_mask_BxS[..., None], x_BxSxD, 0).astype(dtype)
        hidden_BxSxD = nn.with_logical_constraint(hidden_BxSxD, (axes.BATCH, axes.GENES, axes.EMBED))
        logits_BxSxC = MaskedBinHead(cfg.n_bins, dtype, name="bin_head")(hidden_BxSxD)
        count_Bx1 = jnp.maximum(gene_mask_BxS.sum(axis=1, keepdims=True), 1).astype(jnp.float32)
        mean_BxD = (jnp.where(gene_mask_BxS[..., None], hidden_BxSxD.astype(jnp.float32), 0).sum(axis=1)
                    / count_Bx1)
        if cfg.cell_head:
            cell_logits_BxVxC = CellExpressionHead(cfg.n_bins, cfg.gene_vocab_size, cfg.d_model, dtype,
                                                   cfg.cell_head_output, name="cell_head")(mean_BxD)
        else:  # same structure, no work: the papers' objective has no cell term
            cell_logits_BxVxC = jnp.zeros((mean_BxD.shape[0], 0, cfg.n_bins), jnp.float32)
        return ModelOutput(bin_logits=logits_BxSxC, hidden=hidden_BxSxD, cls_embedding=hidden_BxSxD[:, 0],
                           mean_embedding=mean_BxD.astype(dtype), cell_gene_logits=cell_logits_BxVxC)
