"""check_batch names the cell, position and field of bad input."""

import dataclasses

import numpy as np
import pytest

from grn_jax.models import check_batch, tiny
from tests.models._cells import Cell, make_batch

CFG = tiny(gene_vocab_size=64, n_bins=8)


def _batch(**cell_kw):
    cells = [Cell([5, 6, 7], [1, 2, 3], [(0, 1, 1.0), (1, 2, 0.5)]), Cell([8, 9], [0, 4], [(0, 1, 1.0)])]
    return make_batch(cells, 6, 4, 8, cell_graph=True)


def test_good_batch_reports_graph_counts():
    rep = check_batch(CFG, _batch())
    assert rep["graph"]["edges"] == 3 and rep["graph"]["self_loops"] == 0
    assert rep["graph"]["isolated_nodes"] == [0, 0]


def _with(batch, field, b, s, value):
    arr = np.array(getattr(batch, field))
    arr[b, s] = value
    return dataclasses.replace(batch, **{field: arr})


@pytest.mark.parametrize("field,value,match", [
    ("gene_ids", 64, r"gene_ids\[cell 1, position 2\] = 64"),
    ("bins", 11, r"bins\[cell 1, position 2\] = 11"),
])
def test_out_of_vocabulary_ids_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        check_batch(CFG, _with(_batch(), field, 1, 2, value))


def test_edge_into_padding_is_named():
    batch = _batch()
    g = batch.graph
    rcv = np.array(g.receivers)
    rcv[1, 0] = 4  # cell 1 has genes at positions 1..2 only
    with pytest.raises(ValueError, match=r"receivers\[cell 1, edge 0\] = 4"):
        check_batch(CFG, dataclasses.replace(batch, graph=dataclasses.replace(g, receivers=rcv)))


def test_wrong_dtype_is_named():
    batch = dataclasses.replace(_batch(), gene_ids=np.asarray(_batch().gene_ids, np.int64))
    with pytest.raises(ValueError, match="gene_ids"):
        check_batch(CFG, batch)
