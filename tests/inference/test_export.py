"""`export`: round trip in a fresh process without grn_jax, refusals of corrupt or mismatched exports."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from grn_jax.cli import main
from grn_jax.data import ShardStore, collate
from grn_jax.inference import ExportError, batch_arrays, export_model, input_names, load_export, load_model
from grn_jax.inference.model_fn import jitted_inference_fn
from grn_jax.testing import assert_allclose

SERVE_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    export_dir, inputs, out = sys.argv[1:4]
    sys.path.insert(0, export_dir)
    import serve  # the copy of grn_jax/inference/serving.py inside the export folder
    model = serve.load_export(export_dir)
    data = np.load(inputs)
    results = {}
    for b in (5, 2):  # two batch sizes through the same artefact (symbolic batch dimension)
        arrays = [data[name][:b] for name in model.input_names]
        cls, mean, hidden = model(*arrays)
        results.update({f"cls{b}": np.asarray(cls), f"mean{b}": np.asarray(mean), f"hidden{b}": np.asarray(hidden)})
    np.savez(out, **results)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("grn_jax", "flax"))
    print("LEAKED", leaked)
    sys.exit(1 if leaked else 0)
""")


@pytest.fixture(scope="module")
def exported(toy_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    assert main(["export", "--checkpoint", str(toy_run["run"]), "--out", str(out), "--platforms", "cpu"]) == 0
    return out


def test_round_trip_in_fresh_process_without_model_code(exported, toy_run, pretrained, tmp_path):
    store = ShardStore(toy_run["shards"])
    # training-tokenised cells straight from the shards (E = 32 edges, S = the single bucket)
    batch = collate([store.cell(i) for i in range(5)], store.bin_spec, store.seq_buckets, store.edge_buckets)
    names = input_names(False)
    arrays = batch_arrays(batch.tokens, False)
    np.savez(tmp_path / "inputs.npz", **dict(zip(names, arrays)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, str(exported), str(tmp_path / "inputs.npz"),
                           str(tmp_path / "out.npz")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LEAKED []" in proc.stdout
    served = np.load(tmp_path / "out.npz")
    live = jitted_inference_fn(pretrained.model_config, False)(pretrained.params, *arrays)
    for b in (5, 2):
        for i, key in enumerate(("cls", "mean", "hidden")):
            assert_allclose(served[f"{key}{b}"], np.asarray(live[i])[:b], np.float32, err_msg=f"{key}, batch {b}")


ONE_DEVICE_EXPORT_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    from grn_jax.cli import main
    from grn_jax.graphs import resolve_impl
    from grn_jax.inference import load_pretrained
    from grn_jax.inference.model_fn import jitted_inference_fn
    run_dir, export_dir, inputs, out = sys.argv[1:5]
    # what this process's diffusion would run outside an export (native where the kernel builds)
    info = {"devices": jax.device_count(), "auto": resolve_impl("auto")}
    data = np.load(inputs)
    pre = load_pretrained(run_dir)  # the live model runs first: nothing it traced may leak into the export
    jax.block_until_ready(jitted_inference_fn(pre.model_config, False)(pre.params, *[data[n] for n in data.files]))
    info["rc"] = main(["export", "--checkpoint", run_dir, "--out", export_dir])  # default platforms
    if info["rc"] == 0:
        sys.path.insert(0, export_dir)
        import serve
        model = serve.load_export(export_dir)
        cls, mean, hidden = model(*[data[name] for name in model.input_names])
        np.savez(out, cls=np.asarray(cls), mean=np.asarray(mean), hidden=np.asarray(hidden))
    print(json.dumps(info))
""")


def test_export_and_serve_from_a_single_device_process(toy_run, pretrained, tmp_path):
    """A user's process has one CPU device, where diffusion "auto" picks the native kernel: the
    export must still lower the portable XLA path (a custom call cannot be serialized)."""
    from jax import export

    store = ShardStore(toy_run["shards"])
    batch = collate([store.cell(i) for i in range(4)], store.bin_spec, store.seq_buckets, store.edge_buckets)
    arrays = batch_arrays(batch.tokens, False)
    np.savez(tmp_path / "inputs.npz", **dict(zip(input_names(False), arrays)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no fake devices
    env["JAX_PLATFORMS"] = "cpu"
    out = tmp_path / "model"
    proc = subprocess.run([sys.executable, "-c", ONE_DEVICE_EXPORT_SCRIPT, str(toy_run["run"]), str(out),
                           str(tmp_path / "inputs.npz"), str(tmp_path / "served.npz")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["devices"] == 1 and info["rc"] == 0, proc.stderr[-3000:]
    from grn_jax.kernels import native_build

    if native_build.unavailable_reason() is None:  # the kernel builds here: that process would run it
        assert info["auto"] == "native"
    for art in (out / "serving").iterdir():
        text = export.deserialize(bytearray(art.read_bytes())).mlir_module()
        assert "grn_cpu_diffuse" not in text
        assert set(re.findall(r"custom_call @(\w+)", text)) <= {"shape_assertion", "Sharding"}, art
    served = np.load(tmp_path / "served.npz")
    live = jitted_inference_fn(pretrained.model_config, False)(pretrained.params, *arrays)
    for i, key in enumerate(("cls", "mean", "hidden")):
        assert_allclose(served[key], np.asarray(live[i]), np.float32, err_msg=key)


def test_failed_export_leaves_nothing(toy_run, tmp_path, monkeypatch):
    import grn_jax.inference.export as export_mod

    def broken(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(export_mod, "_model_card", broken)
    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="simulated"):
        export_mod.export_model(toy_run["run"], out, log=lambda m: None)
    assert sorted(tmp_path.iterdir()) == []  # neither the folder nor a temporary sibling
    # a failure while replacing an export keeps the previous one intact
    monkeypatch.undo()
    export_mod.export_model(toy_run["run"], out, log=lambda m: None)
    before = {p.name: p.read_bytes() for p in out.rglob("*.json")}
    monkeypatch.setattr(export_mod, "_model_card", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        export_mod.export_model(toy_run["run"], out, overwrite=True, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert {p.name: p.read_bytes() for p in out.rglob("*.json")} == before
    load_export(out)
    # a temporary folder left by a killed export on this host is removed by the next export
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".model.{socket.gethostname()}.{dead.pid}.0badc0de.tmp"
    (stale / "params").mkdir(parents=True)
    live = tmp_path / f".model.{socket.gethostname()}.{os.getpid()}.0badc0de.tmp"  # a running export's
    live.mkdir()
    monkeypatch.undo()
    logs = []
    export_mod.export_model(toy_run["run"], tmp_path / "model", overwrite=True, log=logs.append)
    assert not stale.exists() and live.is_dir()
    assert any(f"by an export (pid {dead.pid}) that was killed" in m for m in logs)


def test_export_contents_and_model_card(exported, pretrained):
    manifest = json.loads((exported / "export.json").read_text())
    assert manifest["provenance"]["checkpoint_sha256"] == pretrained.checkpoint_hash
    assert manifest["seq_buckets"] == list(pretrained.tokenization["seq_buckets"])
    n = sum(int(np.prod(v.shape)) for v in __import__("jax").tree_util.tree_leaves(pretrained.params))
    assert manifest["n_params"] == n
    card = (exported / "model_card.md").read_text()
    assert f"parameters: {n:,}" in card and f"optimiser steps: {pretrained.step}" in card
    # parameters only: no optimiser state was saved
    served = load_export(exported)
    assert set(served.params) == set(pretrained.params)
    # an export loads back as a Pretrained with the same weights, config and vocabulary
    again = load_model(exported)
    assert again.model_config == pretrained.model_config and again.vocab == pretrained.vocab
    a = __import__("jax").tree_util.tree_leaves(again.params)
    b = __import__("jax").tree_util.tree_leaves(pretrained.params)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_corrupted_export_is_refused(exported, tmp_path):
    bad = _copy(exported, tmp_path / "bad")
    art = next((bad / "serving").iterdir())
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"corrupt or was modified: 0 file\(s\) missing .*1 changed .*serving/seq_"):
        load_export(bad)
    partial = _copy(exported, tmp_path / "partial")
    (partial / "export.json").unlink()
    with pytest.raises(ExportError, match="not an export folder"):
        load_export(partial)
    gone = _copy(exported, tmp_path / "gone")
    shutil.rmtree(gone / "params")
    with pytest.raises(ExportError, match="missing"):
        load_export(gone)


def test_mismatched_vocabulary_config_or_checkpoint_is_refused(exported, pretrained, tmp_path):
    other_vocab = {**pretrained.vocab.to_dict(), "genes": [g + "_x" for g in pretrained.vocab.genes]}
    with pytest.raises(ExportError, match="its vocabulary differs from the expected one"):
        load_export(exported, expect_vocab=other_vocab)
    from grn_jax.train.typed import to_dict

    other_cfg = {**to_dict(pretrained.model_config), "d_model": 32}
    with pytest.raises(ExportError, match="its model config differs"):
        load_export(exported, expect_model_config=other_cfg)
    with pytest.raises(ExportError, match="exported from checkpoint"):
        load_export(exported, expect_checkpoint_sha256="0" * 64)
    load_export(exported, expect_vocab=pretrained.vocab.to_dict(), expect_model_config=to_dict(pretrained.model_config),
                expect_checkpoint_sha256=pretrained.checkpoint_hash)
    # a vocabulary swapped in (manifest re-hashed, so only the consistency check can catch it)
    swapped = _copy(exported, tmp_path / "swapped")
    (swapped / "vocab.json").write_text(json.dumps({**other_vocab, "genes": other_vocab["genes"][:-2]}))
    from grn_jax.inference.serving import hash_tree

    manifest = json.loads((swapped / "export.json").read_text())
    manifest["files"] = hash_tree(swapped)
    (swapped / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="vocab.json has 31 tokens but the model was built for gene_vocab_size=33"):
        load_export(swapped)


def _rehash(folder):
    from grn_jax.inference.serving import hash_tree

    manifest = json.loads((folder / "export.json").read_text())
    manifest["files"] = hash_tree(folder)
    (folder / "export.json").write_text(json.dumps(manifest))


def test_swapped_vocabulary_or_config_is_refused_by_the_manifest_hashes(exported, pretrained, tmp_path):
    # same size as the real vocabulary, file hashes rewritten: only vocab_sha256 can tell
    swapped = _copy(exported, tmp_path / "swapped")
    renamed = {**pretrained.vocab.to_dict(), "genes": [g + "_x" for g in pretrained.vocab.genes]}
    (swapped / "vocab.json").write_text(json.dumps(renamed))
    _rehash(swapped)
    with pytest.raises(ExportError, match=r"vocab.json \(sha256 \w+\) is not the vocabulary it was exported with"):
        load_export(swapped)
    with pytest.raises(ExportError, match="is not the vocabulary"):
        load_export(swapped, verify=False)
    edited = _copy(exported, tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    config["model"]["diffusion_beta"] = 7.5
    (edited / "config.json").write_text(json.dumps(config))
    _rehash(edited)
    with pytest.raises(ExportError, match="model config .* is not the config it was exported with"):
        load_export(edited)


def test_served_inputs_out_of_range_are_refused(exported, toy_run, pretrained):
    store = ShardStore(toy_run["shards"])
    batch = collate([store.cell(i) for i in range(3)], store.bin_spec, store.seq_buckets, store.edge_buckets)
    arrays = [np.asarray(a) for a in batch_arrays(batch.tokens, False)]
    model = load_export(exported)
    cls, _, _ = model(*arrays)
    assert np.isfinite(np.asarray(cls)).all()
    n_tokens = len(pretrained.vocab)
    n_bin_ids = pretrained.model_config.n_bins + 3

    def with_value(name, value):
        out = [a.copy() for a in arrays]
        out[model.input_names.index(name)][0, 1] = value
        return out

    oov = rf"input gene_ids has 1 value\(s\) outside \[0, {n_tokens}\) \(e.g. {n_tokens}\)"
    with pytest.raises(ValueError, match=oov):
        model(*with_value("gene_ids", n_tokens))
    with pytest.raises(ValueError, match=rf"input bins has 1 value\(s\) outside \[0, {n_bin_ids}\) \(e.g. -1\)"):
        model(*with_value("bins", -1))
    with pytest.raises(ValueError, match=r"input senders has 1 value\(s\) outside \[0, 32\)"):
        model(*with_value("senders", 32))
    short = list(arrays)
    short[model.input_names.index("bins")] = arrays[1][:, :-1]
    with pytest.raises(ValueError, match=r"input bins has shape \(3, 31\), expected \(3, 32\)"):
        model(*short)
    # the unchecked path is what the check prevents: a NaN embedding for the bad cell only
    cls_bad, _, _ = model(*with_value("gene_ids", n_tokens), check=False)
    assert np.isnan(np.asarray(cls_bad)[0]).any() and np.isfinite(np.asarray(cls_bad)[1:]).all()


def test_overwrite_replaces_only_an_export(exported, toy_run, tmp_path):
    # a folder that merely contains params/ (the old rule) is not an export: refused, nothing deleted
    lookalike = tmp_path / "lookalike"
    (lookalike / "params").mkdir(parents=True)
    (lookalike / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--overwrite refuses .*lookalike: it is not a grn_jax export folder"):
        export_model(toy_run["run"], lookalike, overwrite=True, log=lambda m: None)
    assert (lookalike / "notes.txt").read_text() == "mine" and (lookalike / "params").is_dir()
    # an export with an unrelated file added: refused, the file kept
    crowded = _copy(exported, tmp_path / "crowded")
    (crowded / "serving" / "results.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"holds 1 file\(s\) that are not part of the export \(serving/results.csv\)"):
        export_model(toy_run["run"], crowded, overwrite=True, log=lambda m: None)
    assert (crowded / "serving" / "results.csv").is_file()
    # the CLI reports it as a one-line usage error
    assert main(["export", "--checkpoint", str(toy_run["run"]), "--out", str(lookalike), "--overwrite"]) == 2
    # a genuine export is replaced
    again = _copy(exported, tmp_path / "again")
    (again / "model_card.md").write_text("stale")
    export_model(toy_run["run"], again, overwrite=True, log=lambda m: None)
    assert (again / "model_card.md").read_text() != "stale"
    load_export(again)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "crowded", "lookalike"]


def test_corrupted_checkpoint_is_refused(toy_run, tmp_path):
    from grn_jax.train.checkpoint import CheckpointError

    run = _copy(toy_run["run"], tmp_path / "run")
    step_dir = next((run / "checkpoints").iterdir())
    victim = next(p for p in sorted((step_dir / "state").rglob("*")) if p.is_file() and p.stat().st_size > 0)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_model(run)
    with pytest.raises(ValueError, match="not a pretraining run directory"):
        load_model(tmp_path)


def test_checkpoint_with_a_vocabulary_that_does_not_fit_the_model_is_refused(toy_run, pretrained, tmp_path):
    import dataclasses

    from tests.inference._run import run_config, save_initial_checkpoint

    cfg = run_config(toy_run["shards"].parent)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_dir=str(tmp_path / "run")))
    other = {**pretrained.vocab.to_dict(), "genes": pretrained.vocab.genes[:-4]}
    save_initial_checkpoint(cfg, vocab=other)
    with pytest.raises(ValueError, match="saved vocabulary has 29 tokens but the model was built for "
                                         "gene_vocab_size=33"):
        load_model(tmp_path / "run")
