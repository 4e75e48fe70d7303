"""The README's ```python blocks run as written (a block fenced ```python no-run is skipped and says why).

Each block runs in a fresh namespace; blocks with a result worth checking are also checked against an
independent computation (the heat kernel against scipy's expm of the dense Laplacian).
"""

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from grn_jax.testing import assert_allclose

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)


def _blocks():
    text = README.read_text()
    out = []
    for m in _FENCE.finditer(text):
        line = text[:m.start()].count("\n") + 1
        out.append(pytest.param(m.group(2), m.group(1).strip(), id=f"README.md:{line}"))
    return out


BLOCKS = _blocks()


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


def _dense_laplacian(graph, b: int, s: int) -> np.ndarray:
    a = np.zeros((s, s))
    for u, v, w, m in zip(graph.senders[b], graph.receivers[b], graph.weights[b], graph.edge_mask[b]):
        if m and u != v:
            a[u, v] += w
            a[v, u] += w
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)
    return np.eye(s) - inv[:, None] * a * inv[None, :]


@pytest.mark.parametrize("code, info", BLOCKS)
def test_readme_block_runs(code, info, tmp_path, monkeypatch, capsys):
    if info.startswith("no-run"):
        assert len(info) > len("no-run") + 3, "a no-run block must say why after the marker"
        pytest.skip(info)
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), ns)  # noqa: S102 - the README's own example code

    if "q_diffused" in ns:  # graph core: exp(-beta L) Q per cell, CLS passed through
        q, out, beta = np.asarray(ns["q_BxSxD"], np.float64), np.asarray(ns["q_diffused"]), 0.1
        for b in range(q.shape[0]):
            want = scipy.linalg.expm(-beta * _dense_laplacian(ns["graph"], b, q.shape[1])) @ q[b]
            want[0] = q[b, 0]
            assert_allclose(out[b], want, np.float32)
    if "out" in ns and hasattr(ns["out"], "cls_embedding"):  # models: the ModelOutput structure
        cfg, batch = ns["model"].config, ns["batch"]
        b, s = batch.gene_ids.shape
        assert ns["out"].cls_embedding.shape == (b, cfg.d_model)
        assert ns["out"].bin_logits.shape == (b, s, cfg.n_bins)
        assert np.isfinite(np.asarray(ns["out"].hidden)).all()
    if "masked" in ns:  # data pipeline: 30 % of each real cell's genes masked, never CLS or padding
        tokens, masked = ns["batch"].tokens, ns["masked"]
        n_genes = tokens.token_mask.sum(1) - 1
        real = np.asarray(ns["batch"].cell_mask)
        np.testing.assert_array_equal(np.asarray(masked.loss_mask).sum(1)[real], np.round(0.3 * n_genes[real]))
        assert not np.asarray(masked.loss_mask)[:, 0].any()
        assert ns["summary"]["tokens"]["edges_kept"] > 0
