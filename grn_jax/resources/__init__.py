"""grn_jax.resources: data files shipped with the package.

`TF.txt` lists 1,639 human transcription factors, copied from the `grnndata`
package (version 1.3.2, MIT licence); its header names the source.
`configs/*.yaml` are the run-config presets (`grn-jax pretrain --config tiny`); the
source checkout's experiments/configs links to them for reproduction.
"""

from __future__ import annotations

import importlib.resources
import os
from typing import Union


def _parse_gene_list(text: str, where: str) -> list[str]:
    genes = [line.strip() for line in text.splitlines()]
    genes = [g for g in genes if g and not g.startswith("#")]
    if not genes:
        raise ValueError(f"{where}: no gene names (one per line; '#' starts a comment)")
    return list(dict.fromkeys(genes))


def human_tfs() -> list[str]:
    """The 1,639 human transcription-factor symbols of grnndata's TF.txt (unique, file order)."""
    text = importlib.resources.files(__name__).joinpath("TF.txt").read_text()
    return _parse_gene_list(text, "grn_jax/resources/TF.txt")


def read_gene_list(path: Union[str, os.PathLike]) -> list[str]:
    """Gene names from a text file (one per line, '#' comments), or `human_tfs()` for path 'human'."""
    if str(path) == "human":
        return human_tfs()
    if not os.path.exists(path):
        raise ValueError(f"gene list file {str(path)!r} does not exist")
    with open(path) as f:
        return _parse_gene_list(f.read(), str(path))


def preset_names() -> list[str]:
    """Names of the shipped run-config presets (configs/<name>.yaml), sorted."""
    folder = importlib.resources.files(__name__).joinpath("configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def config_path(name: str):
    """Path of the shipped preset `name` (e.g. "tiny"); a ValueError lists the presets for an unknown name."""
    path = importlib.resources.files(__name__).joinpath("configs", f"{name}.yaml")
    if not path.is_file():
        raise ValueError(f"no shipped config preset {name!r}; presets: {', '.join(preset_names())} "
                         "(or pass a YAML file path)")
    return path
