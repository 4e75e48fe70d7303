"""The cell-embedding objective: targets of every gene token, the weighted sum, and the head's inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grn_jax.testing import assert_allclose
from grn_jax.train import losses
from grn_jax.train.config import TrainConfig
from grn_jax.train.step import _sums
from grn_jax.types import BinSpec, GraphBatch, TokenBatch

N_BINS = 4
SPEC = BinSpec(N_BINS)


def _batch():
    # cell 0: CLS + 3 genes (position 2 masked, true bin 3); cell 1: CLS + 1 gene + padding
    bins = np.array([[SPEC.cls_id, 1, SPEC.mask_id, 2], [SPEC.cls_id, 3, SPEC.pad_id, SPEC.pad_id]], np.int32)
    targets = np.array([[0, 0, 3, 0], [0, 0, 0, 0]], np.int32)
    loss_mask = np.array([[0, 0, 1, 0], [0, 0, 0, 0]], bool)
    token_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
    z = np.zeros((2, 2), np.int32)
    return TokenBatch(gene_ids=np.array([[2, 5, 6, 7], [2, 5, 0, 0]], np.int32), bins=bins, targets=targets,
                      loss_mask=loss_mask, token_mask=token_mask,
                      graph=GraphBatch(z, z, z.astype(np.float32), z.astype(bool)))


VOCAB = 9  # ids 0..2 special, genes 3..8


def test_targets_are_true_bins_of_every_vocabulary_gene():
    b = _batch()
    tgt, valid = losses.cell_expression_targets(jnp.asarray(b.gene_ids), jnp.asarray(b.bins), jnp.asarray(b.targets),
                                                jnp.asarray(b.loss_mask), jnp.asarray(b.token_mask), VOCAB, N_BINS, 3)
    # cell 0 has genes 5 (bin 1), 6 (masked, true 3), 7 (bin 2); cell 1 gene 5 (bin 3); the rest bin 0
    assert np.asarray(tgt).tolist() == [[0, 0, 0, 0, 0, 1, 3, 2, 0], [0, 0, 0, 0, 0, 3, 0, 0, 0]]
    assert np.asarray(valid).tolist() == [[False] * 3 + [True] * 6] * 2
    # a filler row (no gene token) is not a cell: none of its entries count
    filler = np.zeros_like(b.token_mask)
    _, valid = losses.cell_expression_targets(jnp.asarray(b.gene_ids), jnp.asarray(b.bins), jnp.asarray(b.targets),
                                              jnp.asarray(b.loss_mask), jnp.asarray(filler), VOCAB, N_BINS, 3)
    assert not np.asarray(valid).any()


def _log_softmax_ce(logits, t):
    z = logits - logits.max(-1, keepdims=True)
    return float(-(z[t] - np.log(np.exp(z).sum())))


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_objective_is_masked_ce_plus_weighted_cell_ce(weight):
    b = _batch()
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, N_BINS)).astype(np.float32)
    cell_logits = rng.normal(size=(2, VOCAB, N_BINS)).astype(np.float32)
    cfg = TrainConfig(mask_rate=0.25, cell_loss_weight=weight)
    objective, sums = _sums(lambda p, batch, **kw: (jnp.asarray(logits), jnp.asarray(cell_logits)), None,
                            jax.tree_util.tree_map(jnp.asarray, b), jax.random.key(0), True, cfg)
    masked = _log_softmax_ce(logits[0, 2], 3)
    want = [[0, 0, 1, 3, 2, 0], [0, 0, 3, 0, 0, 0]]  # genes 3..8
    cell = sum(_log_softmax_ce(cell_logits[r, 3 + j], t) for r in range(2) for j, t in enumerate(want[r]))
    assert float(sums["count"]) == 1 and float(sums["cell_count"]) == 12
    assert_allclose(sums["ce_sum"], masked, np.float32)
    assert_allclose(sums["cell_sum"], cell, np.float32)
    # scale mask_rate x S / V: the cell term weighs about as much per cell as the masked-bin term
    assert_allclose(objective, masked + weight * 0.25 * 4 / VOCAB * cell, np.float32)


@pytest.mark.parametrize("output,width", [("bins", N_BINS), ("value", 1)])
def test_cell_head_reads_only_the_mean_embedding(output, width):
    import flax.linen as nn

    from grn_jax.models import build_model, example_batch, tiny
    from grn_jax.models.heads import CellExpressionHead

    cfg = tiny(gene_vocab_size=16, n_bins=N_BINS, d_model=16, n_layers=1, n_heads=2, mlp_dim=32,
               attention="vanilla", cell_head_output=output)
    model = build_model(cfg)
    batch = example_batch(cfg, batch_size=2, seq_len=8, num_edges=8)
    params = nn.unbox(model.init({"params": jax.random.key(0)}, batch, deterministic=True)["params"])
    out = model.apply({"params": params}, batch, deterministic=True)
    head = CellExpressionHead(N_BINS, 16, cfg.d_model, output=output)
    want = head.apply({"params": params["cell_head"]}, out.mean_embedding)
    assert_allclose(out.cell_gene_logits, want, np.float32)
    assert out.cell_gene_logits.shape == (2, 16, width)


def test_cell_loss_weight_is_validated():
    with pytest.raises(ValueError, match="cell_loss_weight"):
        TrainConfig(cell_loss_weight=-1.0)


def test_value_head_objective_is_squared_error_of_scaled_bins():
    """cell_head_output="value": one number per gene, fitted to bin / (n_bins - 1) by squared error."""
    b = _batch()
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 4, N_BINS)).astype(np.float32)
    pred = rng.uniform(size=(2, VOCAB, 1)).astype(np.float32)
    pred[0, 6, 0] = 1.0  # rounds to bin 3 = the true bin of gene 6: a hit
    cfg = TrainConfig(mask_rate=0.25, cell_loss_weight=2.0)
    objective, sums = _sums(lambda p, batch, **kw: (jnp.asarray(logits), jnp.asarray(pred)), None,
                            jax.tree_util.tree_map(jnp.asarray, b), jax.random.key(0), True, cfg)
    want = np.array([[0, 0, 1, 3, 2, 0], [0, 0, 3, 0, 0, 0]]) / (N_BINS - 1)  # genes 3..8
    err = float(np.sum((pred[:, 3:, 0].astype(np.float64) - want) ** 2))
    hits = int(np.sum(np.clip(np.round(pred[:, 3:, 0] * (N_BINS - 1)), 0, N_BINS - 1) == want * (N_BINS - 1)))
    assert float(sums["cell_count"]) == 12 and float(sums["cell_correct"]) == hits >= 1
    assert_allclose(sums["cell_sum"], err, np.float32)
    assert_allclose(objective, _log_softmax_ce(logits[0, 2], 3) + 2.0 * 0.25 * 4 / VOCAB * err, np.float32)


def test_value_head_is_the_default_and_bad_output_is_refused():
    from grn_jax.models import tiny

    assert tiny().cell_head_output == "value"  # the default (README, "What the default model is and why")
    with pytest.raises(ValueError, match="cell_head_output"):
        tiny(cell_head_output="probabilities")
