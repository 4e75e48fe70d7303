"""Checkpoints at a URL (`train.checkpoint_dir: gs://...`) go through etils.epath and orbax, never pathlib.

No cloud here, so `gs://` is served by a stand-in bucket: fsspec's `gs` protocol
(what etils.epath uses for gs:// without TensorFlow) is a folder under tmp_path,
and orbax's tensorstore GCS kvstore spec is pointed at the same folder (the `file`
driver). Everything grn_jax does sees real `gs://` strings: had any of them gone
through `pathlib`, files would land in `<cwd>/gs:/...` instead of the bucket.
Not proven here: the real GCS drivers (gcsfs, google-cloud-storage, tensorstore's
`gcs` driver) and their latency. `memory://` cannot be used: etils.epath has no
path class for it (its URL schemes are gs, s3, az, hf), and orbax's tensorstore layer
writes arrays only to gs:// or local paths (s3:// is refused up front).
"""

import hashlib
import json
import uuid
from pathlib import Path

import jax
import numpy as np
import pytest

from grn_jax.train.checkpoint import INTEGRITY_FILE, CheckpointError, Checkpointer
from grn_jax.train.config import TrainConfig
from tests.train import test_checkpoint as tc
from tests.train.test_checkpoint import state1  # noqa: F401  (fixture)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """`gs://` backed by tmp_path/"gcs" for epath (fsspec) and orbax (tensorstore); yields that folder."""
    import importlib

    import fsspec
    from etils.epath import backend as epath_backend
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem
    from orbax.checkpoint._src.path import gcs_utils

    root = tmp_path / "gcs"
    root.mkdir()

    class StandInGCS(DirFileSystem):
        protocol = ("gs", "gcs")
        cachable = False

        def __init__(self, *args, **kwargs):
            super().__init__(path=str(root), fs=LocalFileSystem(auto_mkdir=True))

        @classmethod
        def _strip_protocol(cls, path):
            path = path[0] if isinstance(path, list) else path
            return path.split("://", 1)[1] if "://" in path else path

    def kvstore(path):
        name, rest = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        return {"driver": "file", "path": str(root / name / rest)}

    registry = importlib.import_module("fsspec.registry")._registry  # fsspec.registry is also a mappingproxy
    saved = {p: registry.get(p) for p in ("gs", "gcs")}
    for p in saved:
        fsspec.register_implementation(p, StandInGCS, clobber=True)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)  # needs google.cloud
    monkeypatch.chdir(tmp_path)
    yield root
    for p, cls in saved.items():
        registry.pop(p, None)
        if cls is not None:
            fsspec.register_implementation(p, cls, clobber=True)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    assert not (tmp_path / "gs:").exists(), "a gs:// path went through pathlib"


def test_checkpointer_on_gs_seals_verifies_restores_and_deletes_in_the_bucket(bucket, state1):
    url = f"gs://bkt/ck-{uuid.uuid4().hex[:8]}"
    ck = tc._save(url, state1, [(1, None), (2, None)])
    assert str(ck.directory) == url and not isinstance(ck.directory, Path)
    local = bucket / url[5:]
    for step in (1, 2):  # orbax's files and our seal are in the bucket
        record = json.loads((local / str(step) / INTEGRITY_FILE).read_text())
        assert record["step"] == step and any(k.startswith("state/") for k in record["files"])
        assert not (local / str(step) / (INTEGRITY_FILE + ".tmp")).exists()
        for name, entry in record["files"].items():
            data = (local / str(step) / name).read_bytes()
            assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert ck.latest_valid_step() == 2
    restored = ck.restore(2, tc._target(tc._mesh((1, 1, 1))))
    assert restored.data_state == {"pos": 2}
    for a, b in zip(jax.tree_util.tree_leaves(restored.state), jax.tree_util.tree_leaves(state1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    victim = next(p for p in (local / "2" / "state").rglob("*") if p.is_file() and p.stat().st_size > 0)
    victim.write_bytes(b"\0" + victim.read_bytes()[1:])
    with pytest.raises(CheckpointError, match=rf"step 2 at {url}/2 is corrupt"):
        ck.verify(2)
    # unsealed and unrestorable: restore_latest deletes it through orbax/epath and falls back to step 1
    (local / "2" / INTEGRITY_FILE).unlink()
    for p in (local / "2" / "state").rglob("*"):
        if p.is_file() and p.name != "_METADATA":
            p.write_bytes(b"garbage")
    msgs = []
    back = ck.restore_latest(tc._target(tc._mesh((1, 1, 1))), report=msgs.append)
    ck.close()
    assert back.step == 1 and not (local / "2").exists() and "deleting it" in msgs[0]


def test_run_dir_must_be_local_and_unknown_schemes_are_named():
    with pytest.raises(ValueError, match=r"^train.run_dir: must be a local directory .* train.checkpoint_dir"):
        TrainConfig(run_dir="gs://bkt/run")
    with pytest.raises(ValueError, match=r"^train.checkpoint_dir: must be a non-empty path or URL"):
        TrainConfig(checkpoint_dir="")
    with pytest.raises(ValueError, match=r"^train.checkpoint_dir 'memory://x': etils.epath has no backend"):
        Checkpointer("memory://x", every=1)
    with pytest.raises(ValueError, match=r"^train.checkpoint_dir 's3://bkt/x': orbax .* cannot write arrays there"):
        Checkpointer("s3://bkt/x", every=1)  # before any save: orbax 0.12's tensorstore layer has no s3 route


def test_inference_finds_the_checkpoints_the_run_recorded(tmp_path):
    from grn_jax.inference.checkpoint import run_checkpoint_dir

    assert run_checkpoint_dir(tmp_path) == tmp_path / "checkpoints"  # no config.yaml: the default layout
    (tmp_path / "config.yaml").write_text("train:\n  checkpoint_dir: null\n")
    assert run_checkpoint_dir(tmp_path) == tmp_path / "checkpoints"
    (tmp_path / "config.yaml").write_text("train:\n  checkpoint_dir: gs://bkt/x/checkpoints\n")
    found = run_checkpoint_dir(tmp_path)
    assert str(found) == "gs://bkt/x/checkpoints" and not isinstance(found, Path)


@pytest.mark.slow  # two tiny pretraining runs: ~30 s of CPU (the Checkpointer test above is the fast case)
def test_pretrain_with_gs_checkpoint_dir_resumes_exactly_and_inference_follows_it(bucket, tmp_path):
    """Run 3 steps with checkpoints in gs://, drop the newest, rerun: it resumes from gs:// step 2 and
    repeats step 2's loss bit for bit; embed/eval/export's loader finds the checkpoints from run_dir."""
    import shutil

    from grn_jax.config import build_run_config
    from grn_jax.inference.checkpoint import load_pretrained
    from grn_jax.train.loop import pretrain
    from grn_jax.train.metrics import read_metrics
    from tests.train.shards import make_shards
    from tests.train.test_pretrain import _tree

    run, url = tmp_path / "run", f"gs://bkt/run-{uuid.uuid4().hex[:8]}/checkpoints"
    tree = _tree(make_shards(tmp_path / "shards"), run, steps=3, checkpoint_every=1, eval_every=0,
                 checkpoint_dir=url)
    first = pretrain(build_run_config(tree), log=lambda _: None)
    ref = {r["step"]: r["loss"] for r in read_metrics(run)}
    in_bucket = bucket / url[5:]
    assert first.final_step == 3 and sorted(int(p.name) for p in in_bucket.iterdir()) == [1, 2, 3]
    assert not (run / "checkpoints").exists()

    shutil.rmtree(in_bucket / "3")
    log = []
    second = pretrain(build_run_config(tree), log=log.append)
    assert second.start_step == 2 and any(f"resumed from checkpoint step 2 in {url}" in m for m in log)
    assert {r["step"]: r["loss"] for r in read_metrics(run)} == ref and sorted(ref) == [0, 1, 2]

    pre = load_pretrained(run)  # follows train.checkpoint_dir recorded in run/config.yaml
    seal = (in_bucket / "3" / INTEGRITY_FILE).read_bytes()
    assert pre.step == 3 and pre.checkpoint_hash == hashlib.sha256(seal).hexdigest()
    assert pre.run_config["train"]["checkpoint_dir"] == url
