"""Result files are written atomically (temp + rename) and `--out` naming an existing file is one clear error."""

import json

import pytest

from grn_jax._io import atomic_path, atomic_write_text, read_json
from grn_jax.cli import main
from grn_jax.tasks.results import TaskResult


def test_atomic_path_leaves_the_destination_alone_on_failure(tmp_path):
    dst = tmp_path / "result.json"
    dst.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dst) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert dst.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    atomic_write_text(dst, "new")
    assert dst.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_read_json_names_the_file(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text('{"a": ')
    with pytest.raises(ValueError, match="m.json.*not valid JSON"):
        read_json(bad)
    with pytest.raises(ValueError, match="does not exist"):
        read_json(tmp_path / "missing.json")


def test_task_result_write_is_complete_and_refuses_a_file_as_folder(tmp_path):
    r = TaskResult("annotation", {"s": {"m": {"f1": {"value": 0.5}}}}, {}, {})
    paths = r.write(tmp_path / "eval")
    assert json.loads(open(paths["json"]).read())["task"] == "annotation"
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["annotation.json", "annotation.md"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="existing file"):
        r.write(tmp_path / "file")


def test_simulate_out_an_existing_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("x")
    rc = main(["simulate", "--out", str(taken), "--cells", "20", "--genes", "20"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "existing file" in err, err
    assert taken.read_text() == "x"


def test_simulate_writes_complete_files_only(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--cells", "40", "--genes", "20", "--tfs", "4",
                 "--knockouts", "1"]) == 0
    names = sorted(p.name for p in (tmp_path / "sim").iterdir())
    assert names == ["data.h5ad", "edge_signs.tsv", "network.tsv", "summary.json"]  # no temporaries left


@pytest.mark.parametrize("argv", [
    ["eval", "annotation", "x.h5ad", "--checkpoint", "nowhere", "--label-key", "y"],
    ["finetune", "x.h5ad", "--checkpoint", "nowhere", "--label-key", "y"],
])
def test_eval_and_finetune_refuse_a_file_as_out_before_any_work(tmp_path, capsys, argv):
    taken = tmp_path / "taken"
    taken.write_text("x")
    rc = main(argv + ["--out", str(taken)])
    err = capsys.readouterr().err.strip()
    # the checkpoint does not exist either: the --out check comes first, before anything is loaded
    assert rc == 2 and len(err.splitlines()) == 1 and "existing file" in err, err
    assert taken.read_text() == "x"


def test_an_os_refusal_is_one_line(tmp_path, capsys):
    import anndata
    import numpy as np

    anndata.AnnData(np.ones((3, 4), np.float32)).write_h5ad(tmp_path / "in.h5ad")
    (tmp_path / "plain_file").write_text("x")
    rc = main(["prepare", str(tmp_path / "in.h5ad"), "--out", str(tmp_path / "plain_file" / "sub"),
               "--min-counts", "0", "--min-genes", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err and "plain_file" in err, err


def test_report_figure_is_written_atomically(tmp_path, monkeypatch):
    import matplotlib.figure

    from grn_jax.reporting import plot_training_curves

    path = tmp_path / "curves.png"
    train = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    val = [{"step": 2, "val_loss": 1.6, "val_accuracy": 0.3}]
    plot_training_curves(train, val, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def broken(self, fname, **kw):
        open(fname, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(OSError):
        plot_training_curves(train, val, tmp_path / "other.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]  # no half-written file left
