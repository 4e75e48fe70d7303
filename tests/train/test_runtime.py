"""Cheap checks of the run machinery: cluster detection, metrics log truncation, bf16 compute with f32 params."""

import json

import jax
import jax.numpy as jnp
import pytest

from grn_jax.models import build_model, example_batch, tiny
from grn_jax.train import distributed
from grn_jax.train.loop import FAULT_ENV, _fault_injection
from grn_jax.train.metrics import read_metrics, truncate_after


@pytest.mark.parametrize("environ,expected", [
    ({}, False),
    ({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "0"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "h:1234"}, False),          # incomplete: not a cluster
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False),      # one-task interactive allocation
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
])
def test_cluster_detection(environ, expected):
    assert distributed.cluster_detected(environ) is expected


def test_truncate_drops_records_from_the_lost_future(tmp_path):
    recs = [{"kind": "event", "event": "start", "step": 0}] + [{"kind": "train", "step": i, "loss": 1.0 / (i + 1)}
                                                               for i in range(6)]
    recs.append({"kind": "val", "step": 5, "val_loss": 0.5})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert truncate_after(tmp_path, 3) == 4  # train steps 3, 4, 5 and the val record at step 5
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    assert len(read_metrics(tmp_path, None)) == 4


def test_fault_injection_parsing():
    assert _fault_injection({}) == (-1, 0)
    assert _fault_injection({FAULT_ENV: "7"})[0] == 7
    with pytest.raises(ValueError, match=FAULT_ENV):
        _fault_injection({FAULT_ENV: "7:NOPE"})


def test_bfloat16_compute_keeps_float32_parameters():
    cfg = tiny(64, dtype="bfloat16", attention="diffusion")
    model = build_model(cfg)
    batch = example_batch(cfg, batch_size=1, seq_len=8, num_edges=8)
    params = jax.eval_shape(lambda k: model.init({"params": k}, batch, deterministic=True)["params"],
                            jax.random.key(0))
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves(params)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(lambda k: model.init_with_output({"params": k}, batch, deterministic=True)[0],
                         jax.random.key(0))
    assert out.hidden.dtype == jnp.bfloat16


def test_padding_to_a_larger_bucket_is_inert():
    import numpy as np

    from grn_jax.data.collate import collate
    from grn_jax.data.masking import mask_bins
    from grn_jax.train.data import pad_batch_to
    from grn_jax.types import BinSpec

    spec = BinSpec(8)
    cells = [{"cell": i, "gene_ids": np.arange(3, 3 + n, dtype=np.int32), "bins": np.arange(n, dtype=np.int32) % 8,
              "edge_src": np.array([1, 2], np.int32), "edge_dst": np.array([2, 3], np.int32),
              "edge_weight": np.array([0.5, 1.0], np.float32)} for i, n in enumerate([5, 9])]
    small = collate(cells, spec, (16, 32), (4, 8))
    big = pad_batch_to(small, 32, 8, spec.pad_id)
    t, u = small.tokens, big.tokens
    assert u.gene_ids.shape == (2, 32) and u.graph.senders.shape == (2, 8)
    np.testing.assert_array_equal(u.gene_ids[:, :16], t.gene_ids)
    assert not u.token_mask[:, 16:].any() and not u.graph.edge_mask[:, 4:].any()
    assert (u.bins[:, 16:] == spec.pad_id).all() and (u.graph.weights[:, 4:] == 0).all()
    key = jax.random.key(3)
    m_small = mask_bins(key, t, 0.3, spec, cell_ids=small.cell_index)
    m_big = mask_bins(key, u, 0.3, spec, cell_ids=big.cell_index)
    np.testing.assert_array_equal(np.asarray(m_big.loss_mask)[:, :16], np.asarray(m_small.loss_mask))
    with pytest.raises(ValueError, match="cannot pad"):
        pad_batch_to(small, 8, 8, spec.pad_id)
