"""`pretrain` checks the shard files against what `prepare` recorded (sizes + a sampled SHA-256 by
default, every byte with `--verify-shards full`) and names a file that changed."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import yaml

from grn_jax.config import build_run_config
from grn_jax.data.shards import SAMPLE_BLOCK, SAMPLE_BLOCKS, ShardStore, file_fingerprints, verify_files
from grn_jax.train.loop import pretrain
from grn_jax.train.main import EXIT_ERROR, pretrain_command
from tests.train.shards import make_shards


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("verify") / "shards")


@pytest.fixture
def shards(prepared, tmp_path):
    return shutil.copytree(prepared, tmp_path / "shards")


def _cfg(shards, run_dir, **data):
    return build_run_config({"name": "verify", "data": {"shards": str(shards), **data}, "model": {"preset": "tiny"},
                             "train": {"run_dir": str(run_dir), "steps": 1, "batch_size": 8, "progress": False,
                                       "tensorboard": False}, "mesh": {"data": -1}})


def test_prepare_records_every_array_file(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    arrays = manifest["files"]["arrays"]
    on_disk = sorted(str(p.relative_to(prepared)) for p in prepared.glob("shard_*/*.npy"))
    assert sorted(arrays) == on_disk
    for rel, rec in arrays.items():
        data = (prepared / rel).read_bytes()
        assert rec["bytes"] == len(data) and rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert "sizes + sampled SHA-256" in verify_files(prepared, manifest)
    assert "full SHA-256" in verify_files(prepared, manifest, full=True)


def test_modified_bins_stop_pretrain_naming_the_file(prepared, shards, tmp_path, capsys):
    bins = shards / "shard_00000" / "bins.npy"
    arr = np.load(bins)
    arr[3] = (arr[3] + 1) % 4  # same size, same dtype: a silent edit
    np.save(bins, arr)
    with pytest.raises(ValueError, match=rf"data.shards: {bins} was modified after `grn-jax prepare` \(its sampled "
                                         r"SHA-256 differs"):
        pretrain(_cfg(shards, tmp_path / "run"), log=lambda m: None)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(_cfg(shards, tmp_path / "run").to_dict()))
    assert pretrain_command(str(cfg_path)) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bins) in err[0]
    shutil.copyfile(prepared / "shard_00000" / "bins.npy", bins)  # restored: accepted again
    assert "sampled" in ShardStore(shards, verify="sampled").verified
    # a truncated file: named by its size, before anything memory-maps it
    values = sorted(shards.glob("shard_*"))[-1] / "values.npy"
    values.write_bytes(values.read_bytes()[:-4])
    with pytest.raises(ValueError, match=rf"{values} was modified after `grn-jax prepare` \(\d+ bytes, prepare "
                                         r"wrote \d+\)"):
        ShardStore(shards, verify="sampled")


def test_full_check_catches_what_the_sample_misses(tmp_path):
    folder = tmp_path / "big"
    (folder / "shard_00000").mkdir(parents=True)
    manifest = {"shards": [{"name": "shard_00000"}], "with_cell_graph": False}
    rng = np.random.default_rng(0)
    from grn_jax.data.shards import _TOKEN_ARRAYS

    for name in _TOKEN_ARRAYS:
        (folder / "shard_00000" / f"{name}.npy").write_bytes(rng.bytes(64 if name != "values" else 4 << 20))
    manifest["files"] = file_fingerprints(folder, manifest)
    big = folder / "shard_00000" / "values.npy"
    size = big.stat().st_size
    starts = np.linspace(0, size - SAMPLE_BLOCK, SAMPLE_BLOCKS).astype(np.int64)
    off = int(starts[0] + SAMPLE_BLOCK + 1000)
    assert not any(s <= off < s + SAMPLE_BLOCK for s in starts)  # between two sampled blocks
    data = bytearray(big.read_bytes())
    data[off] ^= 0xFF
    big.write_bytes(bytes(data))
    verify_files(folder, manifest)  # the cheap check reads ~1 MiB of 4 MiB: this edit is outside it
    with pytest.raises(ValueError, match=rf"{big} was modified after `grn-jax prepare` \(its SHA-256 differs"):
        verify_files(folder, manifest, full=True)
    data[int(starts[5]) + 7] ^= 0xFF  # inside a sampled block
    big.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="its sampled SHA-256 differs"):
        verify_files(folder, manifest)


def test_old_manifest_without_fingerprints_gets_the_full_content_hash(shards):
    mpath = shards / "manifest.json"
    manifest = json.loads(mpath.read_text())
    del manifest["files"]
    assert "full content hash" in verify_files(shards, manifest)
    bins = shards / "shard_00000" / "bins.npy"
    arr = np.load(bins)
    arr[0] = (arr[0] + 1) % 4
    np.save(bins, arr)
    with pytest.raises(ValueError, match=rf"data.shards: {shards} was modified after `grn-jax prepare` \(content hash"):
        verify_files(shards, manifest)


def test_verify_shards_setting_is_validated(tmp_path):
    with pytest.raises(ValueError, match=r"data: verify_shards must be one of \['sampled', 'full'\], got 'some'"):
        _cfg(tmp_path, tmp_path / "run", verify_shards="some")
    assert _cfg(tmp_path, tmp_path / "run", verify_shards="full").data.verify_shards == "full"
