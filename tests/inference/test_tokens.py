"""`embed` tokenises new cells exactly as `prepare` did for training (oracle: the training shards)."""

import numpy as np
import pytest

from grn_jax.data import ShardStore, collate, open_counts
from grn_jax.data.graph_source import SingleNetworkSource
from grn_jax.inference import TrainingTokenizer
from tests.inference._run import SEQ, toy_network


def _tokenize_all(pre, adata, chunk):
    tok = TrainingTokenizer.from_record(pre.tokenization, pre.vocab)
    src = open_counts(adata, tok.ingest_config())
    col_ids, report = tok.column_map(src)
    gsrc = SingleNetworkSource(toy_network(), pre.vocab.tokens)
    parts = [tok.tokenize(block, start, col_ids, src, ingest=tok.ingest_config(), graph_source=gsrc)
             for start, block in src.chunks(chunk)]
    return tok, parts, report


@pytest.mark.parametrize("chunk", [7, 64])
def test_embed_tokens_equal_training_shards(pretrained, toy_run, chunk):
    store = ShardStore(toy_run["shards"], verify=True)
    tok, parts, report = _tokenize_all(pretrained, toy_run["adata"], chunk)
    assert report["genes_not_in_vocab"] == 0
    cells = [c for t in parts for c in tok.cell_dicts(t)]
    assert len(cells) == len(store) == toy_run["adata"].n_obs
    for i, got in enumerate(cells):
        want = store.cell(i)
        assert got["cell"] == want["dataset_row"] == i
        for key in ("gene_ids", "bins", "edge_src", "edge_dst", "edge_weight"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"cell {i} field {key}")
    assert sum(len(c["edge_src"]) for c in cells) > 0  # the graph is really there


def test_batches_group_by_own_bucket_and_match_training_collation(pretrained, toy_run):
    store = ShardStore(toy_run["shards"])
    tok, (t,), _ = _tokenize_all(pretrained, toy_run["adata"], 64)
    seen = []
    for batch, pos in tok.batches(t, batch_size=3):
        assert batch.tokens.gene_ids.shape == (3, SEQ)
        want = collate([store.cell(int(i)) for i in pos], store.bin_spec, store.seq_buckets, store.edge_buckets,
                       batch_size=3)
        for name in ("gene_ids", "bins", "token_mask"):
            np.testing.assert_array_equal(getattr(batch.tokens, name), getattr(want.tokens, name))
        np.testing.assert_array_equal(batch.tokens.graph.senders, want.tokens.graph.senders)
        np.testing.assert_array_equal(batch.tokens.graph.weights, want.tokens.graph.weights)
        np.testing.assert_array_equal(batch.cell_mask, np.arange(3) < len(pos))
        seen += pos.tolist()
    assert sorted(seen) == list(range(t.num_cells))


def test_record_with_inconsistent_bins_is_refused(pretrained):
    bad = {**pretrained.tokenization, "bin_spec": {"n_bins": 5}}
    with pytest.raises(ValueError, match="bin_spec has 5 bins but tokenize.n_bins is 8"):
        TrainingTokenizer.from_record(bad, pretrained.vocab)
