"""Load a pretraining run for inference: parameters, model config, vocabulary and tokenisation record.

A run directory (written by `grn-jax pretrain`) holds orbax checkpoints with the
train state, the resolved run config and the vocabulary (`grn_jax.train.checkpoint`),
in `checkpoints/` or wherever its config.yaml's `train.checkpoint_dir` says (a
local path or a URL such as `gs://...`).
Inference needs, besides the parameters, *exactly* how training tokenised cells:
the data config (normalisation target, `max_genes`, neighbour tokens, edge budget),
the number of bins and the bucket lists. Pretraining stores that record in the
checkpoint's config item (key "tokenization"); for runs made before it did, the
record is read from the prepared shards the run names, after checking that their
content hash equals the one in the run's provenance.json. Nothing is guessed.

`checkpoint_hash` is a SHA-256 over the checkpoint's integrity record (itself the
SHA-256 of every file of the step), so two loads with the same hash hold the
same bytes; it is written into every artefact made from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import jax

from grn_jax._io import read_json
from grn_jax.data.vocab import GeneVocab
from grn_jax.train.checkpoint import INTEGRITY_FILE, Checkpointer, CheckpointError, checkpoint_path

TOKENIZATION_KEYS = ("data_config", "bin_spec", "seq_buckets", "edge_buckets")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A pretrained model ready for inference (parameters on the default device, unsharded)."""

    run_dir: str
    step: int
    params: Any
    model_config: Any  # grn_jax.models.ModelConfig
    run_config: dict  # the resolved run config saved with the checkpoint
    vocab: GeneVocab
    tokenization: dict
    checkpoint_hash: str
    metrics: Optional[dict]

    @property
    def provenance(self) -> dict:
        """What `uns`/model cards record about where the weights came from."""
        return {"run_dir": self.run_dir, "step": self.step, "checkpoint_sha256": self.checkpoint_hash,
                "data_content_hash": self.tokenization.get("content_hash"), "metrics": self.metrics}


def checkpoint_sha256(step_dir) -> str:
    """SHA-256 of a sealed checkpoint step's integrity record (which hashes every file); a path or URL."""
    record = checkpoint_path(step_dir) / INTEGRITY_FILE
    if not record.is_file():
        raise CheckpointError(f"{step_dir} has no {INTEGRITY_FILE}: the save never completed; use another step")
    return hashlib.sha256(record.read_bytes()).hexdigest()


def model_config_from_dict(model: dict):
    """The ModelConfig saved in a run config (the resolved `model:` section, vocabulary size included)."""
    from grn_jax.config import build_model_config

    cfg = build_model_config(dict(model))
    if isinstance(cfg, dict):
        raise ValueError(f"the saved model config has no gene_vocab_size ({sorted(model)}); the checkpoint was "
                         "written before its vocabulary was resolved and cannot be used for inference")
    return cfg


def check_tokenization(record: Any, where: str) -> dict:
    """Validate a tokenisation record (keys and a buildable DataConfig); return it."""
    from grn_jax.data.config import DataConfig

    if not isinstance(record, dict):
        raise ValueError(f"{where}: tokenisation record must be a mapping, got {type(record).__name__}")
    missing = [k for k in TOKENIZATION_KEYS if k not in record]
    if missing:
        raise ValueError(f"{where}: tokenisation record lacks {missing}; it must hold {list(TOKENIZATION_KEYS)}")
    DataConfig.from_dict(record["data_config"])
    return record


def _tokenization_from_shards(run_dir: Path, config: dict) -> dict:
    """Fallback for checkpoints without a tokenisation record: the run's shards, verified by content hash."""
    from grn_jax.data.shards import MANIFEST

    shards = Path(str(config.get("data", {}).get("shards", "")))
    prov_path = run_dir / "provenance.json"
    if not prov_path.is_file():
        raise ValueError(f"{run_dir}: the checkpoint has no tokenisation record and there is no provenance.json "
                         "to identify the training shards; re-save the checkpoint with a current `grn-jax pretrain`")
    want = read_json(prov_path, "provenance file").get("data", {}).get("content_hash")
    manifest_path = shards / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{run_dir}: the checkpoint has no tokenisation record and the training shards "
                         f"{shards} are gone; inference cannot know how training tokenised cells. Restore "
                         f"the shards (content hash {want}) or re-save with a current `grn-jax pretrain`")
    m = read_json(manifest_path, "shards manifest")
    if m.get("content_hash") != want:
        raise ValueError(f"{run_dir}: the shards at {shards} have content hash {str(m.get('content_hash'))[:16]}..., "
                         f"but the run was trained on {str(want)[:16]}...; they were re-prepared since, so their "
                         "tokenisation may differ. Point data.shards at the original shards")
    summary = m.get("summary", {})
    return {"data_config": m["config"], "bin_spec": m["bin_spec"], "seq_buckets": m["seq_buckets"],
            "edge_buckets": m["edge_buckets"], "with_cell_graph": bool(m.get("with_cell_graph")),
            "content_hash": m["content_hash"], "graph": summary.get("graph"), "cell_graph": summary.get("cell_graph")}


def _abstract_state(model_cfg, train_cfg_dict: dict, device):
    """Abstract TrainState (ShapeDtypeStructs on one device) matching what pretraining saved."""
    from grn_jax.models import build_model, example_batch
    from grn_jax.train import sharding as sh
    from grn_jax.train.config import MeshConfig, TrainConfig
    from grn_jax.train.optim import make_optimizer
    from grn_jax.train.state import abstract_with_shardings, state_shardings
    from grn_jax.train.typed import build

    train_cfg = build(TrainConfig, train_cfg_dict, "train")
    model = build_model(model_cfg)
    batch = example_batch(model_cfg, batch_size=1, seq_len=8, num_edges=8)

    def init_params(rng):
        return model.init({"params": rng}, batch, deterministic=True)["params"]

    mesh = sh.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=[device])
    abstract, shardings, _ = state_shardings(init_params, make_optimizer(train_cfg), mesh, jax.random.key(0))
    return abstract_with_shardings(abstract, shardings)


def resolve_step(ckpt: Checkpointer, step: Optional[int], where: str) -> int:
    steps = ckpt.all_steps()
    if not steps:
        raise ValueError(f"{where} holds no checkpoint; train first (`grn-jax pretrain`)")
    if step is None:
        found = ckpt.latest_valid_step(report=lambda msg: None)
        if found is None:
            raise ValueError(f"{where}: no complete checkpoint (steps {steps} are all partial)")
        return found
    if step not in steps:
        raise ValueError(f"{where}: no checkpoint step {step}; available steps: {steps}")
    return step


def load_pretrained(run_dir: str | Path, *, step: Optional[int] = None) -> Pretrained:
    """Load step `step` (default: the newest complete one) of a pretraining run directory.

    Raises ValueError/CheckpointError naming the run and what is wrong: no run,
    partial or corrupt checkpoint, a vocabulary that does not fit the model.
    """
    run_dir = Path(run_dir).absolute()
    ckpt_dir = run_checkpoint_dir(run_dir)
    if not ckpt_dir.is_dir():
        raise ValueError(f"{run_dir} is not a pretraining run directory (no checkpoint folder {ckpt_dir}); pass "
                         "the train.run_dir of a `grn-jax pretrain` run")
    ckpt = Checkpointer(ckpt_dir, every=1, keep_last=1_000_000, keep_best=0, async_save=False)
    try:
        step = resolve_step(ckpt, step, str(run_dir))
        ckpt.verify(step)
        config = _read_json_item(ckpt_dir / str(step) / "config", run_dir)
        model_cfg = model_config_from_dict(config["model"])
        abstract = _abstract_state(model_cfg, config["train"], jax.devices()[0])
        restored = ckpt.restore(step, abstract)
        metrics = ckpt.metrics(step)
    finally:
        ckpt.close()
    vocab = GeneVocab.from_dict(restored.vocab)
    if len(vocab) != model_cfg.gene_vocab_size:
        raise ValueError(f"{run_dir} step {step}: the saved vocabulary has {len(vocab)} tokens but the model was "
                         f"built for gene_vocab_size={model_cfg.gene_vocab_size}; the checkpoint is inconsistent")
    tok = config.get("tokenization") or _tokenization_from_shards(run_dir, config)
    tok = check_tokenization(tok, f"{run_dir} step {step}")
    if int(tok["bin_spec"]["n_bins"]) != model_cfg.n_bins:
        raise ValueError(f"{run_dir} step {step}: data were binned into {tok['bin_spec']['n_bins']} bins but the "
                         f"model predicts {model_cfg.n_bins}; the checkpoint is inconsistent")
    return Pretrained(run_dir=str(run_dir), step=int(step), params=restored.state.params, model_config=model_cfg,
                      run_config=config, vocab=vocab, tokenization=tok,
                      checkpoint_hash=checkpoint_sha256(ckpt_dir / str(step)), metrics=metrics)


def run_checkpoint_dir(run_dir: Path):
    """A run's checkpoint folder: `train.checkpoint_dir` recorded in its config.yaml, else <run_dir>/checkpoints."""
    import yaml

    cfg_path = Path(run_dir) / "config.yaml"
    recorded = None
    if cfg_path.is_file():
        train = (yaml.safe_load(cfg_path.read_text()) or {}).get("train") or {}
        recorded = train.get("checkpoint_dir")
    return checkpoint_path(recorded) if recorded else Path(run_dir) / "checkpoints"


def _read_json_item(item_dir, run_dir: Path) -> dict:
    """The JSON item orbax wrote (`metadata` file of a JsonSave item)."""
    path = item_dir / "metadata"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{run_dir}: cannot read the saved run config {path}: {e}") from e
