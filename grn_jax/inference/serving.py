"""Load and call an exported model WITHOUT the model's Python code (jax, numpy and orbax only).

This file imports nothing from grn_jax, so `export` also copies it into the
export folder as `serve.py`: a fresh process with jax + orbax installed can do

    import sys; sys.path.insert(0, EXPORT_DIR); import serve
    model = serve.load_export(EXPORT_DIR)
    cls_BxD, mean_BxD, hidden_BxSxD = model(gene_ids, bins, token_mask, senders, receivers, weights, edge_mask)

Folder layout (written by `grn_jax.inference.export`):

    export.json            manifest: format, SHA-256 of every file, inputs/outputs, buckets, provenance
    params/                parameters-only orbax checkpoint (no optimiser state)
    config.json            model config (+ the run config it was trained with)
    vocab.json             gene vocabulary (PAD, MASK, CLS, genes)
    tokenization.json      how training tokenised cells (data config, bins, buckets)
    serving/seq_<S>.jax    serialized `jax.export` of the inference function for sequence bucket S,
                           batch and edge dimensions symbolic
    model_card.md, serve.py

Loading verifies every file against the manifest and refuses, with a message
naming the file, a folder whose config, vocabulary, parameters or artefacts
changed; `expect_*` arguments also refuse an export made from another
checkpoint, vocabulary or config than the caller expects. The vocabulary and model
config are also compared with the hashes the manifest recorded at export time.
Calls check their inputs (`ServedModel.check_inputs`): an out-of-vocabulary gene
id, bin or edge index is a one-line ValueError, never a NaN embedding.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

FORMAT = "grn_jax.export/1"
MANIFEST = "export.json"
TOKEN_INPUTS = ("gene_ids", "bins", "token_mask")


class ExportError(ValueError):
    """An export folder is missing, corrupt or not the one the caller expects."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: Path, skip: tuple[str, ...] = (MANIFEST,)) -> dict:
    """{relative path: sha256} of every file under `root` except `skip`."""
    return {str(p.relative_to(root)): file_sha256(p)
            for p in sorted(root.rglob("*")) if p.is_file() and str(p.relative_to(root)) not in skip}


def canonical_sha256(obj: Any) -> str:
    """SHA-256 of a JSON value in canonical form (sorted keys): compares configs and vocabularies."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _verify(root: Path, manifest: dict) -> None:
    recorded = manifest.get("files", {})
    actual = hash_tree(root)
    missing = sorted(set(recorded) - set(actual))
    changed = sorted(k for k in recorded if k in actual and actual[k] != recorded[k])
    extra = sorted(set(actual) - set(recorded))
    if missing or changed or extra:
        raise ExportError(f"export {root} is corrupt or was modified: {len(missing)} file(s) missing {missing[:3]}, "
                          f"{len(changed)} changed {changed[:3]}, {len(extra)} unexpected {extra[:3]}; "
                          "re-export it with `grn-jax export`")


def _abstract_params(shapes: Any, device) -> Any:
    if isinstance(shapes, dict) and set(shapes) == {"shape", "dtype"}:
        return jax.ShapeDtypeStruct(tuple(shapes["shape"]), np.dtype(shapes["dtype"]),
                                    sharding=jax.sharding.SingleDeviceSharding(device))
    return {k: _abstract_params(v, device) for k, v in shapes.items()}


def restore_params(path: Path, param_shapes: dict) -> Any:
    """The parameter tree from the parameters-only orbax checkpoint, on the default device."""
    import orbax.checkpoint as ocp

    target = _abstract_params(param_shapes, jax.devices()[0])
    with ocp.StandardCheckpointer() as ckpt:
        try:
            return ckpt.restore(Path(path).absolute(), target)
        except Exception as e:  # orbax raises many types; keep the cause
            raise ExportError(f"cannot restore parameters from {path}: {type(e).__name__}: {e}") from e


class ServedModel:
    """An exported model: parameters + one compiled-on-demand artefact per sequence bucket."""

    def __init__(self, root: Path, manifest: dict, params: Any):
        self.root = root
        self.manifest = manifest
        self.params = params
        self.seq_buckets = tuple(int(s) for s in manifest["seq_buckets"])
        self.input_names = tuple(manifest["inputs"])
        self._exported: dict[int, Any] = {}
        self._model_cfg: Optional[dict] = None

    @property
    def vocab(self) -> dict:
        return json.loads((self.root / "vocab.json").read_text())

    @property
    def config(self) -> dict:
        return json.loads((self.root / "config.json").read_text())

    @property
    def tokenization(self) -> dict:
        return json.loads((self.root / "tokenization.json").read_text())

    def exported(self, seq_len: int):
        if seq_len not in self.seq_buckets:
            raise ExportError(f"sequence length {seq_len} is not an exported bucket {list(self.seq_buckets)}; pad "
                              "the batch to one of them (CLS + genes)")
        if seq_len not in self._exported:
            from jax import export

            data = (self.root / self.manifest["artefacts"][str(seq_len)]).read_bytes()
            self._exported[seq_len] = export.deserialize(bytearray(data))
        return self._exported[seq_len]

    def check_inputs(self, *arrays) -> None:
        """ValueError (one line, naming the input) unless the arrays are a token batch this model can embed.

        Without it an out-of-vocabulary gene id or bin silently yields NaN embeddings
        (the embedding lookup fills out-of-range rows) and an edge index outside the
        sequence silently drops or misplaces that edge.
        """
        if len(arrays) != len(self.input_names):
            raise ExportError(f"expected {len(self.input_names)} arrays {list(self.input_names)}, got {len(arrays)}")
        shapes = [np.shape(a) for a in arrays]
        if len(shapes[0]) != 2:
            raise ValueError(f"gene_ids must be [batch, seq_len], got shape {shapes[0]}")
        b, s = shapes[0]
        edges: dict = {}  # graph prefix ("" or "cell_") -> edge count, taken from its senders
        for name, shape in zip(self.input_names, shapes):
            prefix, base = ("cell_", name[5:]) if name.startswith("cell_") else ("", name)
            if base in TOKEN_INPUTS:
                want = (b, s)
            else:
                want = (b, edges.setdefault(prefix, shape[1] if len(shape) == 2 else -1))
            if tuple(shape) != want:
                like = ("[batch, seq_len] like gene_ids" if base in TOKEN_INPUTS
                        else f"[batch, edges] like {prefix}senders")
                raise ValueError(f"input {name} has shape {tuple(shape)}, expected {want} ({like})")
        if self._model_cfg is None:
            self._model_cfg = self.config["model"]
        model = self._model_cfg
        limits = {"gene_ids": (int(model["gene_vocab_size"]), "the exported vocabulary (vocab.json)"),
                  "bins": (int(model["n_bins"]) + 3, f"bins 0..{int(model['n_bins']) - 1} + MASK/PAD/CLS ids"),
                  "senders": (s, "the token positions"), "receivers": (s, "the token positions"),
                  "cell_senders": (s, "the token positions"), "cell_receivers": (s, "the token positions")}
        for name, a in zip(self.input_names, arrays):
            if name not in limits:
                continue
            a = np.asarray(a)
            if not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"input {name} must be integer ids, got dtype {a.dtype}")
            hi, what = limits[name]
            if a.size and (a.min() < 0 or a.max() >= hi):
                bad = a[(a < 0) | (a >= hi)]
                raise ValueError(f"input {name} has {bad.size} value(s) outside [0, {hi}) (e.g. {int(bad[0])}), "
                                 f"the range of {what}; tokenise cells with this export's tokenization.json")

    def __call__(self, *arrays, check: bool = True):
        """(cls [B, D], mean [B, D], hidden [B, S, D]) for the positional inputs named in `input_names`.

        `check` (default on) validates the inputs first (`check_inputs`).
        """
        if check:
            self.check_inputs(*arrays)
        elif len(arrays) != len(self.input_names):
            raise ExportError(f"expected {len(self.input_names)} arrays {list(self.input_names)}, got {len(arrays)}")
        seq_len = int(np.shape(arrays[0])[1])
        return self.exported(seq_len).call(self.params, *arrays)


def load_export(path, *, expect_checkpoint_sha256: Optional[str] = None, expect_vocab: Optional[dict] = None,
                expect_model_config: Optional[dict] = None, verify: bool = True) -> ServedModel:
    """Open an export folder, check it (see the module docstring) and restore its parameters."""
    root = Path(path).absolute()
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ExportError(f"{root} is not an export folder (no {MANIFEST}); create one with `grn-jax export`")
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError as e:
        raise ExportError(f"{mpath} is not valid JSON ({e}); re-export the model") from e
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{root}: format {manifest.get('format')!r}, this loader reads {FORMAT!r}")
    if verify:
        _verify(root, manifest)
    config = json.loads((root / "config.json").read_text())
    vocab = json.loads((root / "vocab.json").read_text())
    n_tokens = len(vocab.get("special_tokens", [])) + len(vocab.get("genes", []))
    if n_tokens != config["model"]["gene_vocab_size"]:
        raise ExportError(f"{root}: vocab.json has {n_tokens} tokens but the model was built for "
                          f"gene_vocab_size={config['model']['gene_vocab_size']}; the vocabulary does not belong "
                          "to this model")
    # The manifest records what the export was made from: a vocabulary or config swapped in
    # afterwards (even with the file hashes rewritten, or verify=False) does not match it.
    for what, key, got, fix in (("vocab.json", "vocab_sha256", vocab, "vocabulary"),
                                ("config.json's model config", "model_config_sha256", config["model"], "config")):
        recorded = manifest.get(key)
        if recorded is None:
            raise ExportError(f"{mpath} records no {key}; re-export the model with `grn-jax export`")
        if canonical_sha256(got) != recorded:
            raise ExportError(f"{root}: {what} (sha256 {canonical_sha256(got)[:12]}) is not the {fix} it was exported "
                              f"with ({key} {str(recorded)[:12]} in {MANIFEST}); re-export the model")
    for what, want, got in (("vocabulary", expect_vocab, vocab),
                            ("model config", expect_model_config, config["model"])):
        if want is not None and canonical_sha256(want) != canonical_sha256(got):
            raise ExportError(f"{root}: its {what} differs from the expected one (sha256 "
                              f"{canonical_sha256(got)[:12]} vs expected {canonical_sha256(want)[:12]}); "
                              f"use the export made for this {what}")
    got_ckpt = manifest.get("provenance", {}).get("checkpoint_sha256")
    if expect_checkpoint_sha256 is not None and got_ckpt != expect_checkpoint_sha256:
        raise ExportError(f"{root} was exported from checkpoint {str(got_ckpt)[:12]}..., expected "
                          f"{expect_checkpoint_sha256[:12]}...; export the checkpoint you mean to serve")
    params = restore_params(root / "params", manifest["param_shapes"])
    return ServedModel(root, manifest, params)
