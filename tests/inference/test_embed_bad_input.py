"""`embed` on bad input: unreadable files, empty cells in a chunk of their own, nothing half-written."""

import anndata
import numpy as np
import pytest

from grn_jax.cli import main
from grn_jax.inference import CLS_KEY, MEAN_KEY, GraphSpec, embed

from ._run import toy_adata


def _quiet(**kw):
    return dict(progress=False, log=lambda m: None, **kw)


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated"])
def test_unreadable_h5ad_is_one_line_exit_2(toy_run, tmp_path, capsys, kind):
    bad = tmp_path / f"{kind}.h5ad"
    good = toy_run["h5ad"].read_bytes()
    bad.write_bytes({"empty": b"", "garbage": b"\x00garbage" * 100, "truncated": good[: len(good) // 2]}[kind])
    out = tmp_path / "out.h5ad"
    rc = main(["embed", str(bad), "--checkpoint", str(toy_run["run"]), "--out", str(out), "--no-progress",
               "--network", str(toy_run["network"])])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(bad) in err, err
    assert not out.exists()


def test_an_all_zero_cell_alone_in_its_chunk(pretrained, toy_run, tmp_path):
    a = toy_adata(n_cells=6)
    x = a.X.tolil()
    x[2] = 0
    a.X = x.tocsr()
    a.write_h5ad(tmp_path / "in.h5ad")
    graph = GraphSpec(network=str(toy_run["network"]))
    res = {}
    for chunk in (1, 6):
        with pytest.warns(UserWarning, match="express no vocabulary gene"):
            rep = embed(pretrained, tmp_path / "in.h5ad", tmp_path / f"c{chunk}.h5ad", graph=graph, chunk_cells=chunk,
                        batch_size=2, **_quiet())
        assert rep.cells_without_vocab_genes == 1
        res[chunk] = anndata.read_h5ad(tmp_path / f"c{chunk}.h5ad")
    for key in (CLS_KEY, MEAN_KEY):
        emb = res[1].obsm[key]
        assert np.isnan(emb[2]).all() and np.isfinite(np.delete(emb, 2, axis=0)).all()
        # the outcome does not depend on the chunking: the same cells are NaN, the others finite
        assert np.array_equal(np.isnan(emb), np.isnan(res[6].obsm[key]))


def test_a_failed_embed_leaves_no_output(pretrained, toy_run, tmp_path):
    a = toy_adata(n_cells=12)
    x = a.X.tolil()
    x[9, 3] = 2.5  # not a count: found in the third chunk of 4, after two chunks were written
    a.X = x.tocsr()
    a.write_h5ad(tmp_path / "in.h5ad")
    out = tmp_path / "out.h5ad"
    with pytest.raises(ValueError, match="non-integer"):
        embed(pretrained, tmp_path / "in.h5ad", out, graph=GraphSpec(network=str(toy_run["network"])),
              chunk_cells=4, **_quiet())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]  # no output, no temporary file

    # an existing output is left as it was by a failed --overwrite
    out.write_bytes(b"previous result")
    with pytest.raises(ValueError, match="non-integer"):
        embed(pretrained, tmp_path / "in.h5ad", out, graph=GraphSpec(network=str(toy_run["network"])),
              chunk_cells=4, overwrite=True, **_quiet())
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "out.h5ad"]


def test_a_failed_in_memory_embed_leaves_the_anndata_unchanged(pretrained, toy_run):
    a = toy_adata(n_cells=12)
    x = a.X.tolil()
    x[9, 3] = 2.5
    a.X = x.tocsr()
    with pytest.raises(ValueError, match="non-integer"):
        embed(pretrained, a, graph=GraphSpec(network=str(toy_run["network"])), chunk_cells=4, **_quiet())
    assert CLS_KEY not in a.obsm and MEAN_KEY not in a.obsm and len(a.varm) == 0 and len(a.uns) == 0


@pytest.mark.parametrize("command", ["eval", "finetune", "reference"])
def test_truncated_h5ad_in_eval_finetune_and_reference(toy_run, tmp_path, capsys, command):
    good = toy_run["h5ad"].read_bytes()
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(good[: len(good) // 3])
    ckpt, net = str(toy_run["run"]), str(toy_run["network"])
    argv = {"eval": ["eval", "annotation", str(bad), "--checkpoint", ckpt, "--out", str(tmp_path / "o"),
                     "--label-key", "cell_type", "--network", net],
            "finetune": ["finetune", str(bad), "--checkpoint", ckpt, "--label-key", "cell_type", "--out",
                         str(tmp_path / "o"), "--network", net],
            "reference": ["embed", str(toy_run["h5ad"]), "--checkpoint", ckpt, "--out", str(tmp_path / "o.h5ad"),
                          "--no-progress", "--networks-dir", str(_networks_dir(tmp_path, toy_run)), "--reference",
                          str(bad)]}[command]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(bad) in err, err


def _networks_dir(tmp_path, toy_run):
    """A `grn infer`-style folder: both toy cell types share the toy network."""
    import json
    import shutil

    d = tmp_path / "nets"
    (d / "networks").mkdir(parents=True)
    shutil.copy(toy_run["network"], d / "networks" / "net.tsv")
    rows = [{"cell_type": t, "file": "networks/net.tsv"} for t in ("t0", "t1")]
    (d / "summary.json").write_text(json.dumps({"params": {}, "cell_types": rows}))
    a = toy_run["adata"]
    (d / "labels.tsv").write_text("cell\tcell_type\n" + "".join(
        f"{c}\t{t}\n" for c, t in zip(a.obs_names, a.obs["cell_type"])))
    return d


def test_a_network_with_no_usable_edge_fails_unless_allowed(toy_run, tmp_path, capsys):
    net = tmp_path / "net.tsv"
    net.write_text("regulator\ttarget\tmi\tpvalue\nENSG1\tENSG2\t0.5\t0.01\n")  # genes the model does not know
    argv = ["embed", str(toy_run["h5ad"]), "--checkpoint", str(toy_run["run"]), "--out", str(tmp_path / "o.h5ad"),
            "--no-progress", "--network", str(net)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no edge" in err and "--allow-empty-graph" in err, err
    assert not (tmp_path / "o.h5ad").exists()
    assert main(argv + ["--allow-empty-graph"]) == 0
    assert "WARNING" in capsys.readouterr().err and (tmp_path / "o.h5ad").exists()


def test_evaluation_embeddings_show_progress(pretrained, toy_run, capsys):
    from grn_jax.tasks.features import cell_embeddings

    emb, ok = cell_embeddings(pretrained, toy_run["adata"], graph=GraphSpec(network=str(toy_run["network"])))
    assert ok.all() and "embed" in capsys.readouterr().err  # a tqdm bar on stderr, not minutes of silence
    cell_embeddings(pretrained, toy_run["adata"], graph=GraphSpec(network=str(toy_run["network"])), progress=False)
    assert "embed" not in capsys.readouterr().err


def test_edge_prediction_masking_loop_shows_progress(pretrained, toy_run, capsys):
    from grn_jax.tasks.edge_prediction import masked_cells

    graph = GraphSpec(network=str(toy_run["network"]))
    masked_cells(pretrained, toy_run["adata"], graph=graph)
    assert "cells" in capsys.readouterr().err  # its own tqdm bar (cells masked and run), not silence
    masked_cells(pretrained, toy_run["adata"], graph=graph, progress=False)
    assert "cells" not in capsys.readouterr().err
