"""A folder of per-cell-type networks: what `grn-jax grn infer` writes and `grn-jax grn assign` reads.

Layout of DIR:
  networks/<type>.tsv|parquet   one network per cell type (a fallback type shares the pooled file)
  summary.tsv, summary.json     one row per type: cells, status, edges, threshold, file; run params
  labels.tsv                    cell -> cell type used (given labels or clusters), for later assignment
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from grn_jax._io import atomic_path, atomic_write_text, check_out_dir
from grn_jax.data.ingest import read_h5ad
from grn_jax.data.validate import check_counts_matrix
from grn_jax.graphs.celltype_networks import POOLED, CellTypeNetworks, infer_cell_type_networks
from grn_jax.graphs.network_io import read_network, write_network

PathLike = Union[str, os.PathLike]
_COUNTS_FIX = ("networks are inferred from raw counts (normalised inside): pass --layer naming the layer that "
               "holds them")


def _safe_name(name: str, used: set) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "type"
    out, k = base, 1
    while out in used:
        k += 1
        out = f"{base}_{k}"
    used.add(out)
    return out


def write_cell_type_networks(result: CellTypeNetworks, out_dir: PathLike, fmt: str = "tsv",
                             cell_names: Optional[Sequence] = None) -> dict:
    """Write the layout above; return {cell type: relative file}."""
    if fmt not in ("tsv", "parquet"):
        raise ValueError(f"fmt must be 'tsv' or 'parquet', got {fmt!r}")
    os.makedirs(os.path.join(out_dir, "networks"), exist_ok=True)
    used, files, by_id = set(), {}, {}
    for t, net in result.networks.items():
        if id(net) in by_id and t != POOLED:
            files[t] = by_id[id(net)]
            continue
        path = os.path.join("networks", f"{_safe_name(t, used)}.{fmt}")
        write_network(net, os.path.join(out_dir, path))
        files[t] = by_id[id(net)] = path
    summary = result.summary.copy()
    summary["file"] = [files.get(t, "") for t in summary["cell_type"]]
    atomic_write_text(os.path.join(out_dir, "summary.tsv"), summary.to_csv(sep="\t", index=False))
    atomic_write_text(os.path.join(out_dir, "summary.json"), json.dumps(
        {"params": result.params, "cell_types": summary.to_dict(orient="records")}, indent=2, default=str))
    names = np.arange(len(result.labels)).astype(str) if cell_names is None else np.asarray(cell_names, str)
    atomic_write_text(os.path.join(out_dir, "labels.tsv"),
                      pd.DataFrame({"cell": names, "cell_type": result.labels}).to_csv(sep="\t", index=False))
    return files


def read_cell_type_networks(net_dir: PathLike) -> tuple[dict, pd.DataFrame]:
    """({cell type: GeneNetwork} for every type with a file, labels table) from a `grn infer` folder."""
    summary_path = os.path.join(net_dir, "summary.json")
    if not os.path.exists(summary_path):
        raise ValueError(f"{str(net_dir)!r} has no summary.json; pass the --out folder of `grn-jax grn infer`")
    with open(summary_path) as f:
        rows = json.load(f)["cell_types"]
    cache, nets = {}, {}
    for row in rows:
        if not row.get("file"):
            continue  # skipped type: recorded in the summary, no network
        if row["file"] not in cache:
            cache[row["file"]] = read_network(os.path.join(net_dir, row["file"]))
        nets[str(row["cell_type"])] = cache[row["file"]]
    if not nets:
        raise ValueError(f"{str(net_dir)!r}: the summary lists no network file")
    labels = pd.read_csv(os.path.join(net_dir, "labels.tsv"), sep="\t", dtype=str)
    return nets, labels


def infer_networks_to_dir(data_path: PathLike, out_dir: PathLike, *, cell_type_key: Optional[str] = None,
                          regulators_path: Optional[str] = None, fmt: str = "tsv", **kwargs) -> CellTypeNetworks:
    """Read an h5ad, infer per-cell-type networks, write them to `out_dir` (`grn-jax grn infer`).

    `regulators_path`: a gene-list file, "human" (default) or "hvg:N" (see `parse_regulators`)."""
    check_out_dir(out_dir)  # before the (long) inference
    adata = read_h5ad(data_path)
    check_counts_matrix(_counts(adata, kwargs.get("layer")), adata.var_names, adata.obs_names,
                        where=f"{data_path} {kwargs.get('layer') or 'X'}", counts_fix=_COUNTS_FIX)
    result = infer_cell_type_networks(adata, cell_type_key=cell_type_key, regulators=regulators_path, **kwargs)
    write_cell_type_networks(result, out_dir, fmt, cell_names=adata.obs_names)
    return result


def _counts(adata, layer):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise ValueError(f"layer {layer!r} not in adata.layers (have {list(adata.layers)})")
    return adata.layers[layer]


def assign_networks_to_dir(net_dir: PathLike, train_path: PathLike, query_path: PathLike, out_dir: PathLike, *,
                           layer: Optional[str] = None, k: int = 15, alpha: float = 0.05, seed: int = 0) -> dict:
    """Networks for unseen cells (`grn-jax grn assign`): GREmLN graph integration of a `grn infer` folder.

    Training cells are those of `train_path` listed in DIR/labels.tsv (their
    types); query cells' labels are never read. Writes posterior.tsv (query
    cell x type), cell_edges.parquet (cell, regulator, target, weight: each
    query cell's integrated network among its expressed genes) and report.json.
    """
    import scipy.sparse as sp

    from grn_jax.graphs.integration import assign_networks

    check_out_dir(out_dir)
    nets, labels = read_cell_type_networks(net_dir)
    train = read_h5ad(train_path, what="--train file")
    query = read_h5ad(query_path, what="query file")
    for path, a in ((train_path, train), (query_path, query)):
        check_counts_matrix(_counts(a, layer), a.var_names, a.obs_names, where=f"{path} {layer or 'X'}",
                            counts_fix=_COUNTS_FIX)
    lab = labels.set_index("cell")["cell_type"]
    missing = ~train.obs_names.isin(lab.index)
    if missing.all():
        raise ValueError(f"none of the {train.n_obs} cells of {str(train_path)!r} is in {net_dir}/labels.tsv; "
                         "pass the h5ad that `grn infer` was run on")
    train = train[~missing]
    nets = {t: n for t, n in nets.items() if t != POOLED}
    src = assign_networks(_counts(train, layer), list(train.var_names), lab.loc[train.obs_names].to_numpy(), nets,
                          _counts(query, layer), list(query.var_names), k=k, alpha=alpha, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "posterior.tsv"), pd.DataFrame(
        src.posterior, index=query.obs_names, columns=src.exclusion.types).to_csv(sep="\t", index_label="cell"))
    expressed = sp.csr_matrix(_counts(query, layer)) > 0
    edges = src.cell_edges(np.arange(query.n_obs), expressed)
    genes = np.asarray(query.var_names, dtype=object)
    cell_of_edge = np.repeat(np.arange(query.n_obs), np.diff(edges.ptr))
    with atomic_path(os.path.join(out_dir, "cell_edges.parquet")) as tmp:
        pd.DataFrame({"cell": np.asarray(query.obs_names, dtype=object)[cell_of_edge],
                      "regulator": genes[edges.src], "target": genes[edges.dst],
                      "weight": edges.weight}).to_parquet(tmp, index=False)
    report = {**src.report, "train_cells_without_label": int(missing.sum()), "networks_dir": str(net_dir),
              "edges_per_cell_mean": float(np.diff(edges.ptr).mean()) if query.n_obs else 0.0}
    atomic_write_text(os.path.join(out_dir, "report.json"), json.dumps(report, indent=2, default=str))
    return report
