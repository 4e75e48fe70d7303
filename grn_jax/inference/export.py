"""`grn-jax export`: a pretraining checkpoint -> a self-contained folder for serving.

    grn-jax export --checkpoint RUN_DIR --out EXPORT_DIR

The folder (layout in `grn_jax.inference.serving`) holds the parameters only (an
orbax checkpoint, no optimiser state), the model config, vocabulary and
tokenisation record as JSON, one serialized `jax.export` artefact of the
inference function per sequence bucket (symbolic batch and edge dimensions, so
any batch size and edge budget runs without re-tracing the model), a
`model_card.md`, a copy of the standalone loader as `serve.py`, and
`export.json` with the SHA-256 of every file. The folder is assembled under a
temporary name beside `--out` and renamed into place when complete, so a failed
export leaves nothing behind; the loader still refuses a folder without a manifest.
The artefacts are traced with the portable XLA diffusion path
(`grn_jax.graphs.diffusion.portable_impl`), whatever this process would run.

`load_exported_pretrained` turns an export back into a `Pretrained`, so
`embed`/`finetune` accept an export folder wherever they accept a run.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import jax
import numpy as np

from grn_jax.inference.checkpoint import Pretrained, check_tokenization, load_pretrained, model_config_from_dict
from grn_jax.inference.model_fn import input_names, make_inference_fn
from grn_jax.inference.serving import FORMAT, MANIFEST, canonical_sha256, hash_tree, load_export

OUTPUTS = ("cls_embedding [B, D]", "mean_embedding [B, D]", "hidden [B, S, D]")


def _param_shapes(params) -> dict:
    if isinstance(params, dict):
        return {str(k): _param_shapes(v) for k, v in params.items()}
    return {"shape": [int(x) for x in np.shape(params)], "dtype": np.dtype(params.dtype).name}


def _input_specs(names: Sequence[str], seq_len: int):
    from jax import export

    b, e = export.symbolic_shape("b, e")
    dtypes = {"gene_ids": np.int32, "bins": np.int32, "token_mask": np.bool_, "senders": np.int32,
              "receivers": np.int32, "weights": np.float32, "edge_mask": np.bool_}
    specs = []
    for n in names:
        base = n[len("cell_"):] if n.startswith("cell_") else n
        shape = (b, seq_len) if base in ("gene_ids", "bins", "token_mask") else (b, e)
        specs.append(jax.ShapeDtypeStruct(shape, dtypes[base]))
    return specs


def _model_card(pre: Pretrained, n_params: int, platforms: Sequence[str]) -> str:
    from grn_jax.train.metrics import read_metrics
    from grn_jax.train.typed import to_dict

    run_dir = Path(pre.run_dir)
    prov_path = run_dir / "provenance.json"
    prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    data = prov.get("data", {})
    val = [r for r in read_metrics(run_dir, "val") if r.get("step", 1 << 62) <= pre.step]
    train = [r for r in read_metrics(run_dir, "train") if r.get("step", 1 << 62) < pre.step]
    tok = pre.tokenization
    dc = tok["data_config"]
    cfg = to_dict(pre.model_config)
    lines = [
        f"# Model card: {pre.run_config.get('name', 'grn_jax model')} (step {pre.step})",
        "",
        "## Model",
        f"- architecture: GREmLN{' + GRNFormer adapter' if cfg.get('adapter') else ''}, "
        f"attention {cfg['attention']}, {cfg['n_layers']} layers, d_model {cfg['d_model']}, {cfg['n_heads']} heads",
        f"- parameters: {n_params:,}",
        f"- gene vocabulary: {len(pre.vocab)} tokens (3 special + {len(pre.vocab.genes)} genes); "
        f"{tok['bin_spec']['n_bins']} expression bins",
        "- full config: `config.json`",
        "",
        "## Training",
        f"- optimiser steps: {pre.step}",
        f"- last training loss: {train[-1]['loss']:.4f}" if train else "- last training loss: not recorded",
        (f"- validation (step {val[-1]['step']}): loss {val[-1]['val_loss']:.4f}, masked-bin accuracy "
         f"{val[-1]['val_accuracy']:.4f} over {val[-1]['val_masked']} masked tokens") if val
        else "- validation: none recorded (train.eval_every was 0 or the run stopped first)",
        f"- checkpoint: `{pre.run_dir}` step {pre.step}, sha256 {pre.checkpoint_hash}",
        "",
        "## Data",
        f"- shards content hash: {tok.get('content_hash')}",
        f"- cells: {data.get('n_cells', 'unknown')} ({data.get('n_train', '?')} train, {data.get('n_val', '?')} "
        f"validation)",
        f"- tokenisation: max_genes {dc['tokenize']['max_genes']}, target_sum {dc['tokenize']['target_sum']}, "
        f"max_edges {dc['tokenize']['max_edges']}, sequence buckets {tok['seq_buckets']}",
        f"- graph used in training: {json.dumps(tok.get('graph'), default=str)[:300]}",
        "",
        "## Use",
        "- inputs: token batches exactly as `grn_jax.inference.TrainingTokenizer` makes them "
        "(`tokenization.json`); `grn-jax embed --checkpoint THIS_DIR` does it for an .h5ad",
        f"- serving without grn_jax: `serve.load_export(dir)` (jax + orbax), platforms {list(platforms)}",
        "- outputs: " + ", ".join(OUTPUTS),
        "- limitations: embeddings are only meaningful for cells tokenised with this vocabulary and these bins; "
        "genes outside the vocabulary are ignored",
        "",
        f"_Exported {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} with grn_jax, "
        f"jax {jax.__version__}._",
    ]
    return "\n".join(lines) + "\n"


def export_model(checkpoint: Union[str, Path, Pretrained], out_dir: Union[str, Path], *, step: Optional[int] = None,
                 platforms: Sequence[str] = ("cpu",), overwrite: bool = False,
                 log: Callable[[str], None] = print) -> dict:
    """Write the export folder for `checkpoint` (a run directory or a loaded `Pretrained`); return its manifest.

    `overwrite` replaces an existing export only: a folder holding anything the
    export's manifest does not list is refused, never deleted.
    """
    pre = checkpoint if isinstance(checkpoint, Pretrained) else load_pretrained(checkpoint, step=step)
    out = Path(out_dir).absolute()
    replace = _check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(out, log)
    # Everything is written into a temporary sibling and renamed into place at the end:
    # a failure (or a kill) leaves no half-written export at `out`.
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    try:
        manifest = _write_export(pre, tmp, platforms)
        _move_into_place(tmp, out, replace)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"exported step {pre.step} of {pre.run_dir} to {out}: {manifest['n_params']:,} parameters, "
        f"{len(manifest['artefacts'])} serving artefact(s) for sequence buckets {list(manifest['artefacts'])}")
    return manifest


def _check_destination(out: Path, overwrite: bool) -> bool:
    """Whether `out` holds an export to replace; ValueError if it holds anything else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    entries = sorted(p for p in out.rglob("*") if p.is_file() or p.is_symlink())
    if not entries and not any(out.iterdir()):
        return True  # an empty folder: replaced by the export
    if not overwrite:
        raise ValueError(f"export folder {out} exists and is not empty; choose another --out or pass --overwrite")
    mpath = out / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
        listed = set(manifest["files"]) | {MANIFEST}
        if manifest.get("format") != FORMAT:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"--overwrite refuses {out}: it is not a grn_jax export folder (no readable {MANIFEST} "
                         f"listing its files); delete it yourself or choose another --out") from None
    unknown = [str(p.relative_to(out)) for p in entries if str(p.relative_to(out)) not in listed]
    if unknown:
        raise ValueError(f"--overwrite refuses {out}: it holds {len(unknown)} file(s) that are not part of the "
                         f"export ({', '.join(unknown[:3])}); move them away or choose another --out")
    return True


def _sibling(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"


def _remove_stale_siblings(out: Path, log: Callable[[str], None]) -> None:
    """Delete temporary folders left beside `out` by exports on this host whose process has died (killed)."""
    prefix = f".{out.name}.{socket.gethostname()}."
    for p in out.parent.glob(f".{out.name}.*"):
        parts = p.name[len(prefix):].split(".") if p.name.startswith(prefix) else []
        if len(parts) != 3 or parts[2] not in ("tmp", "old") or not parts[0].isdigit() or not p.is_dir():
            continue
        try:
            os.kill(int(parts[0]), 0)
            continue  # that export is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, someone else's
        shutil.rmtree(p, ignore_errors=True)
        log(f"removed {p.name}, left beside {out.name} by an export (pid {parts[0]}) that was killed")


def _move_into_place(tmp: Path, out: Path, replace: bool) -> None:
    """Rename the finished export `tmp` to `out` (replacing the export or empty folder there)."""
    if not replace:
        os.rename(tmp, out)
        return
    old = _sibling(out, "old")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_export(pre: Pretrained, out: Path, platforms: Sequence[str]) -> dict:
    """Write every file of the export into the (empty) folder `out`; return the manifest."""
    import orbax.checkpoint as ocp
    from jax import export

    from grn_jax.graphs.diffusion import portable_impl
    from grn_jax.models import build_model, count_params
    from grn_jax.train.sharding import with_rules
    from grn_jax.train.typed import to_dict

    params = jax.device_get(pre.params)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(out / "params", params)
    model_cfg = to_dict(pre.model_config)
    run_cfg = {k: v for k, v in pre.run_config.items() if k != "tokenization"}
    (out / "config.json").write_text(json.dumps({"model": model_cfg, "run_config": run_cfg}, indent=1))
    vocab = pre.vocab.to_dict()
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "tokenization.json").write_text(json.dumps(pre.tokenization, indent=1, default=str))

    with_cell_graph = bool(pre.tokenization.get("with_cell_graph"))
    names = input_names(with_cell_graph)
    # A fresh jit object, traced only under portable_impl(): the artefact holds the XLA
    # diffusion path, never this process's native CPU kernel (a custom call that
    # cannot be serialized).
    fn = jax.jit(with_rules(make_inference_fn(build_model(pre.model_config), with_cell_graph)))
    pspec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    (out / "serving").mkdir()
    artefacts = {}
    for s in pre.tokenization["seq_buckets"]:
        with portable_impl():
            exp = export.export(fn, platforms=tuple(platforms))(pspec, *_input_specs(names, int(s)))
        rel = f"serving/seq_{int(s)}.jax"
        (out / rel).write_bytes(exp.serialize())
        artefacts[str(int(s))] = rel
    n_params = count_params(params)
    (out / "model_card.md").write_text(_model_card(pre, n_params, platforms))
    shutil.copyfile(Path(__file__).with_name("serving.py"), out / "serve.py")

    manifest = {
        "format": FORMAT,
        "inputs": list(names),
        "outputs": list(OUTPUTS),
        "seq_buckets": [int(s) for s in pre.tokenization["seq_buckets"]],
        "artefacts": artefacts,
        "platforms": list(platforms),
        "param_shapes": _param_shapes(params),
        "n_params": n_params,
        "d_model": pre.model_config.d_model,
        "vocab_sha256": canonical_sha256(vocab),
        "model_config_sha256": canonical_sha256(model_cfg),
        "provenance": pre.provenance,
        "versions": {"jax": jax.__version__},
        "files": hash_tree(out),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    return manifest


def load_exported_pretrained(export_dir: Union[str, Path]) -> Pretrained:
    """A verified export folder as a `Pretrained` (for `embed` / `finetune` from an export)."""
    from grn_jax.data.vocab import GeneVocab

    served = load_export(export_dir)
    config = served.config
    tok = check_tokenization(served.tokenization, str(export_dir))
    prov = served.manifest["provenance"]
    return Pretrained(run_dir=str(prov.get("run_dir")), step=int(prov.get("step")), params=served.params,
                      model_config=model_config_from_dict(config["model"]),
                      run_config={**config["run_config"], "tokenization": tok},
                      vocab=GeneVocab.from_dict(served.vocab), tokenization=tok,
                      checkpoint_hash=str(prov.get("checkpoint_sha256")), metrics=prov.get("metrics"))


def load_model(path: Union[str, Path], *, step: Optional[int] = None) -> Pretrained:
    """A pretraining run directory or an export folder, whichever `path` is."""
    if (Path(path) / MANIFEST).is_file():
        if step is not None:
            raise ValueError(f"{path} is an export folder (one fixed step); drop --step")
        return load_exported_pretrained(path)
    return load_pretrained(path, step=step)
