"""mask_bins: exact per-cell counts, only gene positions, reproducible, independent of batch-mates and padding."""

import jax
import numpy as np

from grn_jax.data import collate, mask_bins, mask_key
from grn_jax.types import BinSpec

SPEC = BinSpec(10)
_mask = jax.jit(mask_bins, static_argnames=("rate", "bin_spec"))  # one compile per shape


def _cell(i, n):
    rng = np.random.default_rng(i)
    return {"cell": i, "gene_ids": np.arange(3, 3 + n, dtype=np.int32), "bins": rng.integers(0, 10, n),
            "edge_src": np.zeros(0, np.int32), "edge_dst": np.zeros(0, np.int32), "edge_weight": np.zeros(0)}


def _batch(cells, buckets=(8, 16, 32, 64)):
    return collate(cells, SPEC, buckets, (4,), batch_size=4)


def test_masks_exact_fraction_of_gene_positions_only():
    cb = _batch([_cell(0, 10), _cell(1, 3), _cell(2, 25)])
    out = _mask(mask_key(0, 1), cb.tokens, rate=0.3, bin_spec=SPEC, cell_ids=cb.cell_index)
    lm = np.asarray(out.loss_mask)
    assert lm.sum(axis=1).tolist() == [3, 1, 8, 0]  # round(0.3 n), >= 1 for a real cell, 0 for filler
    assert not lm[:, 0].any() and not (lm & ~cb.tokens.token_mask).any()
    bins, tgt = np.asarray(out.bins), np.asarray(out.targets)
    np.testing.assert_array_equal(bins[lm], SPEC.mask_id)
    np.testing.assert_array_equal(tgt[lm], cb.tokens.bins[lm])
    assert (tgt[~lm] == 0).all()
    np.testing.assert_array_equal(bins[~lm], cb.tokens.bins[~lm])


def test_reproducible_from_seed_and_step_and_changes_with_step():
    cb = _batch([_cell(0, 20), _cell(1, 20)])
    a = _mask(mask_key(3, 5), cb.tokens, rate=0.3, bin_spec=SPEC, cell_ids=cb.cell_index)
    b = _mask(mask_key(3, 5), cb.tokens, rate=0.3, bin_spec=SPEC, cell_ids=cb.cell_index)
    c = _mask(mask_key(3, 6), cb.tokens, rate=0.3, bin_spec=SPEC, cell_ids=cb.cell_index)
    np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
    assert (np.asarray(a.loss_mask) != np.asarray(c.loss_mask)).any()


def test_cell_mask_independent_of_batch_mates_and_padding():
    x = _cell(42, 12)
    small = _batch([x, _cell(1, 5)])                  # S = 16
    big = _batch([_cell(7, 40), _cell(8, 2), x])      # S = 64, x in row 2
    key = mask_key(0, 9)
    m1 = np.asarray(_mask(key, small.tokens, rate=0.3, bin_spec=SPEC, cell_ids=small.cell_index).loss_mask)[0]
    m2 = np.asarray(_mask(key, big.tokens, rate=0.3, bin_spec=SPEC, cell_ids=big.cell_index).loss_mask)[2]
    assert small.tokens.seq_len != big.tokens.seq_len
    np.testing.assert_array_equal(m1[:13], m2[:13])
    assert not m2[13:].any()


def test_rate_zero_and_one():
    cb = _batch([_cell(0, 9)])
    assert not np.asarray(_mask(mask_key(0, 0), cb.tokens, rate=0.0, bin_spec=SPEC).loss_mask).any()
    full = np.asarray(_mask(mask_key(0, 0), cb.tokens, rate=1.0, bin_spec=SPEC).loss_mask)
    assert full[0].sum() == 9
