"""The run config: one YAML file in experiments/ composing data, model, train and mesh configs.

    name: tiny
    data:  {shards: quickstart_out/shards, prepare: {...grn_jax.data.DataConfig...}}
    model: {preset: tiny, d_model: 64, ...grn_jax.models.ModelConfig fields...}
    train: {...grn_jax.train.TrainConfig...}
    mesh:  {data: -1, fsdp: 1, tensor: 1}

`load_run_config(path, overrides)` reads the YAML, applies dotted command-line
overrides (`train.steps=20`, `mesh.fsdp=8`, `model.attention=vanilla`) and
validates everything once, with errors naming the bad field. The model's
`gene_vocab_size` may be left out: it is then taken from the vocabulary of the
prepared shards when the run starts (`resolve_vocab_size`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from grn_jax.train.config import MeshConfig, TrainConfig
from grn_jax.train.typed import apply_overrides, build, to_dict

SECTIONS = ("name", "data", "model", "train", "mesh")
VERIFY_SHARDS = ("sampled", "full")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where the training data is: tokenised shards written by `grn-jax prepare`.

    `prepare` (optional) is the `grn_jax.data.DataConfig` the shards are made
    with (used by the quickstart and recorded with the run). `fixed_shape` pads
    every batch to the largest bucket pair the shards use (one compile).
    """

    shards: str = ""
    prepare: Optional[Any] = None
    shuffle: bool = True
    # Pad every batch to the largest (sequence, edge) bucket the shards use: one compiled step
    # instead of one per bucket pair (worth it for small data; costs compute on short cells).
    fixed_shape: bool = False
    # Before training, check the shard files against prepare's fingerprints: "sampled" (sizes +
    # sampled SHA-256, ~1 MiB read per file) or "full" (every byte; `pretrain --verify-shards full`).
    verify_shards: str = "sampled"

    def __post_init__(self):
        if self.verify_shards not in VERIFY_SHARDS:
            raise ValueError(f"verify_shards must be one of {list(VERIFY_SHARDS)}, got {self.verify_shards!r}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a pretraining run needs, validated."""

    name: str
    data: DataSection
    model: Any  # grn_jax.models.ModelConfig, or a dict of its fields until the vocabulary is known
    train: TrainConfig
    mesh: MeshConfig

    def to_dict(self) -> dict:
        return to_dict(self)

    @property
    def model_ready(self) -> bool:
        from grn_jax.models import ModelConfig

        return isinstance(self.model, ModelConfig)


def _build_data(section: Any) -> DataSection:
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ValueError(f"data: expected a mapping, got {section!r}")
    section = dict(section)
    prepare = section.pop("prepare", None)
    data = build(DataSection, section, "data")
    if prepare is not None:
        from grn_jax.data.config import DataConfig

        try:
            prepare = DataConfig.from_dict(prepare)
        except (ValueError, TypeError) as e:
            raise ValueError(f"data.prepare: {e}") from e
        data = dataclasses.replace(data, prepare=prepare)
    return data


def build_model_config(section: Any, vocab_size: Optional[int] = None):
    """A ModelConfig from the `model:` section (`preset:` + field overrides).

    Without `gene_vocab_size` in the section, `vocab_size` is used; with neither
    the section is validated against a placeholder vocabulary and returned as a
    dict, to be completed by `resolve_vocab_size` once the data is known.
    """
    from grn_jax.models import PRESETS, ModelConfig

    section = dict(section or {})
    name = section.pop("preset", None)
    if name is not None and name not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    fields = dict(to_dict(PRESETS[name]())) if name is not None else {}
    fields.pop("gene_vocab_size", None)
    fields.update(section)
    if "gene_vocab_size" in section and vocab_size is not None and section["gene_vocab_size"] != vocab_size:
        raise ValueError(f"model.gene_vocab_size: config says {section['gene_vocab_size']} but the data "
                         f"vocabulary has {vocab_size} tokens; remove the field to take it from the data")
    if "gene_vocab_size" not in fields and vocab_size is not None:
        fields["gene_vocab_size"] = vocab_size
    if "gene_vocab_size" in fields:
        return build(ModelConfig, fields, "model")
    build(ModelConfig, {**fields, "gene_vocab_size": 4}, "model")  # validate everything else now
    if name is not None:
        fields["preset"] = name
    return fields


def build_run_config(tree: dict, *, vocab_size: Optional[int] = None) -> RunConfig:
    """Validate a whole run-config mapping (after overrides)."""
    if not isinstance(tree, dict):
        raise ValueError(f"run config: expected a mapping with sections {list(SECTIONS)}, got {type(tree).__name__}")
    unknown = sorted(set(tree) - set(SECTIONS))
    if unknown:
        raise ValueError(f"run config: unknown section(s) {unknown}; known sections: {list(SECTIONS)}")
    name = tree.get("name", "run")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    return RunConfig(
        name=name,
        data=_build_data(tree.get("data")),
        model=build_model_config(tree.get("model"), vocab_size),
        train=build(TrainConfig, tree.get("train"), "train"),
        mesh=build(MeshConfig, tree.get("mesh"), "mesh"),
    )


def load_run_config(path: str | Path, overrides: Sequence[str] = (), *,
                    vocab_size: Optional[int] = None) -> RunConfig:
    """Read an experiment YAML, apply `section.field=value` overrides, validate.

    `path` is a YAML file or the name of a shipped preset (`grn_jax.resources.preset_names()`:
    tiny, gremln_base, grnformer_base, pod_example), which works after a plain `pip install`.
    """
    from grn_jax.resources import config_path, preset_names

    path = Path(path)
    if not path.is_file():
        if str(path) in preset_names():
            path = Path(str(config_path(str(path))))
        else:
            raise ValueError(f"config file {path} does not exist; give a YAML path or a shipped preset name "
                             f"({', '.join(preset_names())})")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from e
    tree = apply_overrides(tree, overrides)
    try:
        return build_run_config(tree, vocab_size=vocab_size)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def resolve_vocab_size(cfg: RunConfig, vocab_size: int) -> RunConfig:
    """Complete (or check) the model's gene_vocab_size against the data vocabulary."""
    from grn_jax.models import ModelConfig

    if isinstance(cfg.model, ModelConfig):
        if cfg.model.gene_vocab_size != vocab_size:
            raise ValueError(f"model.gene_vocab_size: config says {cfg.model.gene_vocab_size} but the data "
                             f"vocabulary has {vocab_size} tokens; remove the field to take it from the data")
        return cfg
    return dataclasses.replace(cfg, model=build_model_config(cfg.model, vocab_size))


def dump_run_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what the run directory records)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
