"""One ARACNe network per cell type, from an AnnData (GREmLN A.1).

Cell types come from an obs column, or from Leiden/Louvain clustering (scanpy)
when no labels are given. A type with fewer than `min_cells` cells, or whose
own network comes out empty, gets the configured fallback -- the network of all cells pooled ("pooled"), no network
("skip"), or an error ("error") -- and the summary says which. Within a type the
subnetworks are bootstraps (ARACNe-AP) or, as in GREmLN, Louvain/Leiden
sub-clusters, consolidated by `aracne.consensus`. Genes constant within a type
carry no information there, and genes detected in only a handful of its cells
(fewer than max(min_informative_cells, min_gene_fraction * n)) give spurious MI:
both are excluded from that type's network and counted in the summary.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from grn_jax.graphs import aracne, mutual_info, rank_network
from grn_jax.types import GeneNetwork

POOLED = "__pooled__"
FALLBACKS = ("pooled", "skip", "error")
SUBNETWORKS = ("bootstrap", "clusters")
CLUSTER_METHODS = ("leiden", "louvain")
METHODS = ("spearman", "pcor", "aracne")  # (partial) |Spearman| + FDR + DPI, or MI + null + DPI + bootstraps
ALL_CELLS = "all_cells"


def _infer_fn(method: str):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "aracne":
        return aracne.infer_network
    return functools.partial(rank_network.infer_rank_network, method=method)


@dataclasses.dataclass(frozen=True)
class CellTypeNetworks:
    """Networks keyed by cell type, one summary row per type, and the run's parameters."""

    networks: dict  # cell type -> GeneNetwork (a fallback type maps to the pooled network)
    summary: pd.DataFrame
    labels: np.ndarray  # the cell-type label of every cell used
    params: dict

    @property
    def own(self) -> list:
        """Cell types that got their own network."""
        return [str(t) for t in self.summary.loc[self.summary["network"] == "own", "cell_type"]]

    @property
    def fell_back(self) -> list:
        """Cell types that use the pooled network of all cells."""
        return [str(t) for t in self.summary.loc[self.summary["network"] == "pooled", "cell_type"]]

    def report(self) -> str:
        """Lines for the log: regulators matched, and every type by name with the network it got."""
        p = self.params
        lines = [f"regulators: {p['n_regulators_in_data']} of {p['n_regulators_given']} given are genes of the data"
                 + (f" ({p['n_regulators_missing']} not found, first: {p['regulators_missing_first'][:5]})"
                    if p["n_regulators_missing"] else "") + f" [{p['regulator_source']}]",
                 f"{len(self.own)} of {len(self.summary)} cell types got their own network: {', '.join(self.own)}"]
        if self.fell_back:
            lines.append(f"{len(self.fell_back)} fell back to the pooled network of all {p['n_cells']} cells: "
                         + ", ".join(self.fell_back))
        skipped = [str(t) for t in self.summary.loc[self.summary["network"] == "none", "cell_type"]]
        if skipped:
            lines.append(f"{len(skipped)} got no network (fallback 'skip'): {', '.join(skipped)}")
        return "\n".join(lines)


def variable_genes(adata, n: int, layer: Optional[str] = None) -> list:
    """The `n` most variable genes (scanpy 'seurat' dispersion ranking of log1p CP10k), for `regulators="hvg:N"`."""
    import anndata as ad
    import scanpy as sc

    if not 1 <= n <= adata.n_vars:
        raise ValueError(f"hvg:{n} asks for {n} regulators but the data have {adata.n_vars} genes; "
                         f"use hvg:N with 1 <= N <= {adata.n_vars}")
    tmp = ad.AnnData(X=log_normalised(adata, layer).astype(np.float32))
    tmp.var_names = adata.var_names
    sc.pp.highly_variable_genes(tmp, n_top_genes=n, flavor="seurat")
    disp = np.nan_to_num(tmp.var["dispersions_norm"].to_numpy(np.float64), nan=-np.inf)
    flagged = np.flatnonzero(tmp.var["highly_variable"].to_numpy())
    flagged = flagged[np.lexsort((flagged, -disp[flagged]))][:n]  # ties at the cut: first by gene order
    return [str(g) for g in np.asarray(adata.var_names)[flagged]]


def parse_regulators(spec, adata, layer: Optional[str] = None) -> tuple[Optional[list], str]:
    """(regulator names, description) from a list, None (shipped human TFs), 'human', 'hvg:N' or a file path."""
    if spec is None or (isinstance(spec, str) and spec == "human"):
        from grn_jax.resources import human_tfs

        return human_tfs(), "shipped human TFs (1,639)"
    if isinstance(spec, str) and spec.startswith("hvg:"):
        try:
            n = int(spec[4:])
        except ValueError:
            raise ValueError(f"--regulators {spec!r}: expected hvg:N with an integer N (e.g. hvg:300)") from None
        return variable_genes(adata, n, layer), f"the {n} most variable genes (hvg:{n})"
    if isinstance(spec, str):
        from grn_jax.resources import read_gene_list

        return read_gene_list(spec), f"file {spec}"
    return [str(r) for r in spec], "given list"


def log_normalised(adata, layer: Optional[str] = None, target_sum: float = 1e4) -> sp.csr_matrix:
    """log1p(counts * target_sum / cell total) as CSR float64, via grn_jax.data.normalize."""
    from grn_jax.data.normalize import normalize_log1p

    if layer is not None and layer not in adata.layers:
        raise ValueError(f"layer {layer!r} not in adata.layers (have {list(adata.layers)})")
    x = adata.layers[layer] if layer is not None else adata.X
    x = sp.csr_matrix(x, dtype=np.float64)
    if x.data.size and not np.all(np.isfinite(x.data)):
        bad = np.flatnonzero(~np.isfinite(x.data))[0]
        cell = int(np.searchsorted(x.indptr, bad, side="right") - 1)
        raise ValueError(f"{'layer ' + layer if layer else 'X'} has {int((~np.isfinite(x.data)).sum())} NaN/inf "
                         f"values; first at cell {adata.obs_names[cell]!r}, gene {adata.var_names[x.indices[bad]]!r}")
    if x.data.size and x.data.min() < 0:
        bad = int(np.argmin(x.data))
        cell = int(np.searchsorted(x.indptr, bad, side="right") - 1)
        raise ValueError(f"{'layer ' + layer if layer else 'X'} has negative values (first at cell "
                         f"{adata.obs_names[cell]!r}, gene {adata.var_names[x.indices[bad]]!r}); "
                         "pass the raw counts (e.g. --layer counts), not scaled data")
    return normalize_log1p(x, np.asarray(x.sum(axis=1)).ravel(), target_sum)


def cluster_cells(adata, *, method: str = "leiden", resolution: float = 1.0, layer: Optional[str] = None,
                  n_pcs: int = 30, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """Cluster labels (str [n_cells]) by Leiden or Louvain on a kNN graph of log-normalised PCs (scanpy)."""
    import anndata as ad
    import scanpy as sc

    if method not in CLUSTER_METHODS:
        raise ValueError(f"cluster method must be one of {CLUSTER_METHODS}, got {method!r}")
    if adata.n_obs < 3:
        raise ValueError(f"cannot cluster {adata.n_obs} cells")
    tmp = ad.AnnData(X=log_normalised(adata, layer).astype(np.float32))
    n_comps = int(max(1, min(n_pcs, tmp.n_obs - 1, tmp.n_vars - 1)))
    sc.pp.pca(tmp, n_comps=n_comps, random_state=seed)
    sc.pp.neighbors(tmp, n_neighbors=min(n_neighbors, tmp.n_obs - 1), n_pcs=n_comps, random_state=seed, method="gauss")
    if method == "leiden":
        sc.tl.leiden(tmp, resolution=resolution, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    else:
        sc.tl.louvain(tmp, resolution=resolution, flavor="igraph", directed=False, random_state=seed)
    return np.asarray(tmp.obs[method].astype(str))


def consensus_networks(networks: Sequence[GeneNetwork], genes: Sequence[str], regulators: Sequence[str],
                       fdr: float = 0.05, *, params: Optional[dict] = None) -> GeneNetwork:
    """Consolidate subnetworks (bootstraps, clusters, ...) by edge recurrence under a binomial null at FDR `fdr`."""
    if len(networks) < 2:
        raise ValueError(f"consensus needs at least 2 subnetworks, got {len(networks)}")
    genes = [str(g) for g in genes]
    reg_idx, _ = aracne.resolve_regulators(genes, regulators)
    gpos = {g: i for i, g in enumerate(genes)}
    rpos = {genes[r]: k for k, r in enumerate(reg_idx)}
    edges = np.zeros((len(networks), reg_idx.size, len(genes)), bool)
    mis = np.zeros(edges.shape)
    for b, net in enumerate(networks):
        ri = np.array([rpos.get(str(r), -1) for r in net.regulator], np.int64)
        gi = np.array([gpos.get(str(t), -1) for t in net.target], np.int64)
        ok = (ri >= 0) & (gi >= 0)
        if not ok.all():
            raise ValueError(f"subnetwork {b} has {int((~ok).sum())} edges outside the given genes/regulators")
        edges[b, ri, gi] = True
        mis[b, ri, gi] = net.mi
    cand = np.ones(edges.shape[1:], bool)
    cand[np.arange(reg_idx.size), reg_idx] = False
    cons = aracne.consensus(edges, mis, cand, fdr)
    r_i, g_i = np.nonzero(cons.keep_RxG)
    gene_arr = np.asarray(genes, dtype=object)
    p = {"method": "consensus", "n_subnetworks": len(networks), "fdr": fdr, "consensus_p0": cons.p0,
         "n_regulators": int(reg_idx.size),
         "n_edges": int(r_i.size), **(params or {})}
    return GeneNetwork(regulator=gene_arr[reg_idx[r_i]], target=gene_arr[g_i], mi=cons.mean_mi_RxG[r_i, g_i],
                       pvalue=cons.pvalue_RxG[r_i, g_i], params=p)


def _network_for_group(x_csr: sp.csr_matrix, genes: np.ndarray, regulators, cfg: aracne.AracneConfig, name: str,
                       subnetworks: str, min_cells: int, cluster_kw: dict, min_gene_fraction: float,
                       method: str = "aracne"):
    """Drop genes (nearly) constant in the group, then the method (one pass / bootstraps, or sub-cluster consensus)."""
    infer = _infer_fn(method)
    x = x_csr.toarray().astype(np.float32)
    k = max(cfg.min_informative_cells, int(np.ceil(min_gene_fraction * x.shape[0])))
    const = mutual_info.constant_columns(x, k)
    regs_present = set(regulators) & set(genes[~const])
    if not regs_present:
        raise ValueError(f"cell type {name!r}: no regulator is detected in >= {k} of its {x.shape[0]} cells "
                         f"({int(const.sum())} of {len(genes)} genes are below that there)")
    x, g = x[:, ~const], genes[~const]
    info = {"min_informative_cells_used": k, "n_genes_excluded": int(const.sum()),
            "genes_excluded_first": [str(s) for s in genes[const][:20]]}
    if subnetworks == "bootstrap":
        net = infer(x, g, regulators, cfg, name=name)
        net.params.update(info)
        return net
    import anndata as ad

    sub = cluster_cells(ad.AnnData(X=sp.csr_matrix(np.expm1(x))), **cluster_kw)
    groups, counts = np.unique(sub, return_counts=True)
    big = groups[counts >= min_cells]
    if big.size < 2:
        raise ValueError(f"cell type {name!r}: {big.size} sub-cluster(s) with >= {min_cells} cells "
                         f"(sizes {dict(zip(groups.tolist(), counts.tolist()))}); the cluster consensus needs 2. "
                         "Use subnetworks='bootstrap', another subcluster_resolution or a smaller min_cells")
    one = dataclasses.replace(cfg, n_bootstraps=1, progress=False)
    subnets = []
    for c in big:  # a handful of sub-clusters, each one full ARACNe run
        rows = sub == c
        keep = ~mutual_info.constant_columns(x[rows], cfg.min_informative_cells)
        subnets.append(infer(x[rows][:, keep], g[keep], regulators, one, name=f"{name}/{c}"))
    net = consensus_networks(subnets, g, [r for r in regulators if r in regs_present], cfg.fdr, params={
        **cfg.to_params(), "subnetwork_method": method, "name": name, "n_cells": int(x.shape[0]),
        "subnetworks": "clusters",
        "subcluster_sizes": dict(zip(groups.tolist(), counts.tolist())), "subclusters_used": big.tolist(),
        "mi_threshold_per_subnetwork": [s.params.get("mi_threshold") for s in subnets]})
    net.params.update(info)
    return net


def infer_cell_type_networks(
    adata,
    *,
    cell_type_key: Optional[str] = None,
    regulators: Optional[Sequence[str]] = None,
    layer: Optional[str] = None,
    config: aracne.AracneConfig = aracne.AracneConfig(),
    min_cells: int = 50,
    fallback: str = "pooled",
    subnetworks: str = "bootstrap",
    cluster_method: str = "leiden",
    resolution: float = 1.0,
    subcluster_resolution: float = 0.3,
    min_gene_fraction: float = 0.01,
    method: str = "pcor",
    all_cells: bool = False,
) -> CellTypeNetworks:
    """A network of every cell type of `adata` (counts in X or `layer`), by `method`.

    method="pcor" (default): partial Spearman of log1p CP10k given each gene's
    <= 10 most correlated other regulators, BH at config.fdr, DPI (`rank_network`);
    "spearman": the same on plain |Spearman|; "aracne": copula/adaptive MI, permutation null, DPI,
    bootstrap consensus (`aracne.infer_network`). `regulators`: names, a file,
    "human" (default, the shipped human TF list) or "hvg:N" (the N most variable
    genes). `all_cells`: one network of all cells (no labels, no clustering).
    Without `cell_type_key`, cell types are `cluster_method` clusters at `resolution`.
    Per type, genes detected in fewer than max(config.min_informative_cells,
    min_gene_fraction * cells) of its cells are excluded (and counted);
    with subnetworks="clusters" each type is sub-clustered at
    `subcluster_resolution` and sub-clusters of >= min_cells cells each give a
    subnetwork for the consensus (GREmLN A.1). Types below
    `min_cells` get `fallback`. Raises ValueError on bad input (missing key,
    NaN, negative counts, no regulator in the data, a network that came out
    empty) naming what is wrong.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if subnetworks not in SUBNETWORKS:
        raise ValueError(f"subnetworks must be one of {SUBNETWORKS}, got {subnetworks!r}")
    if not 0.0 <= min_gene_fraction < 1.0:
        raise ValueError(f"min_gene_fraction must be in [0, 1), got {min_gene_fraction}")
    if min_cells < 8:
        raise ValueError(f"min_cells must be >= 8 (ARACNe needs cells to estimate MI), got {min_cells}")
    _infer_fn(method)
    if all_cells and cell_type_key is not None:
        raise ValueError(f"all_cells (--all-cells) makes one network of all cells; drop cell_type_key "
                         f"{cell_type_key!r} (--label-key) or all_cells")
    regulators, regulator_source = parse_regulators(regulators, adata, layer)
    genes = np.asarray(adata.var_names.astype(str))
    reg_idx, missing = aracne.resolve_regulators(genes, regulators)
    regs = [str(genes[i]) for i in reg_idx]
    x = log_normalised(adata, layer)
    cluster_kw = dict(method=cluster_method, resolution=subcluster_resolution, layer=None, seed=config.seed)
    if all_cells:
        labels = np.full(adata.n_obs, ALL_CELLS, dtype=object).astype(str)
        label_source = "all cells (one network)"
    elif cell_type_key is None:
        labels = cluster_cells(adata, **{**cluster_kw, "layer": layer, "resolution": resolution})
        label_source = f"{cluster_method} clusters (resolution {resolution})"
    else:
        if cell_type_key not in adata.obs:
            raise ValueError(f"cell_type_key {cell_type_key!r} is not an obs column (have {list(adata.obs.columns)})")
        col = adata.obs[cell_type_key]
        if col.isna().any():
            first = adata.obs_names[np.flatnonzero(col.isna().to_numpy())[0]]
            raise ValueError(f"obs[{cell_type_key!r}] is missing for {int(col.isna().sum())} cells (first {first!r}); "
                             "label them or drop them first")
        labels = np.asarray(col.astype(str))
        label_source = f"obs[{cell_type_key!r}]"
    types, counts = np.unique(labels, return_counts=True)
    small = [t for t, c in zip(types, counts) if c < min_cells]
    if small and fallback == "error":
        raise ValueError(f"cell types with fewer than min_cells={min_cells} cells: "
                         f"{ {t: int(c) for t, c in zip(types, counts) if c < min_cells} }; "
                         "lower min_cells or choose fallback='pooled' or 'skip'")

    networks, rows = {}, []
    it = list(zip(types, counts))
    if config.progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="cell-type networks", unit="type")
    pooled = None
    for t, c in it:  # one ARACNe run per cell type (a handful), each vectorised inside
        t0 = time.perf_counter()
        reason = "below min_cells" if c < min_cells else None
        if reason is None:
            try:
                net = _network_for_group(x[labels == t], genes, regs, config, str(t), subnetworks, min_cells,
                                         cluster_kw, min_gene_fraction, method)
            except aracne.EmptyNetworkError as e:
                if fallback == "error":
                    raise
                reason = f"own network empty ({e})"
        if reason is None:
            networks[t] = net
            rows.append(dict(cell_type=t, n_cells=int(c), status="inferred", network="own", n_edges=net.num_edges,
                             n_regulators=net.params.get("n_regulators"), mi_threshold=net.params.get("mi_threshold"),
                             n_genes_excluded=net.params["n_genes_excluded"],
                             seconds=round(time.perf_counter() - t0, 3)))
            continue
        if fallback == "skip":
            rows.append(dict(cell_type=t, n_cells=int(c), status=f"skipped: {reason}", network="none", n_edges=0))
            continue
        if pooled is None:
            pooled = _network_for_group(x, genes, regs, config, POOLED, subnetworks, min_cells, cluster_kw,
                                        min_gene_fraction, method)
            networks[POOLED] = pooled
        networks[t] = pooled
        rows.append(dict(cell_type=t, n_cells=int(c), network="pooled", n_edges=pooled.num_edges,
                         status=f"fallback: pooled network of all {adata.n_obs} cells; {reason}",
                         mi_threshold=pooled.params.get("mi_threshold"),
                         n_genes_excluded=pooled.params["n_genes_excluded"]))
    if not any(isinstance(v, GeneNetwork) for v in networks.values()):
        raise ValueError(f"no network was inferred: every cell type was below min_cells={min_cells} or gave an "
                         f"empty network, and fallback='skip' ({ {t: int(c) for t, c in zip(types, counts)} })")
    params = {"method": method, "label_source": label_source, "min_cells": min_cells, "fallback": fallback,
              "subnetworks": subnetworks,
              "n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars), "layer": layer,
              "n_regulators_given": len(set(map(str, regulators))), "n_regulators_in_data": len(regs),
              "n_regulators_missing": len(missing), "regulators_missing_first": missing[:20],
              "regulator_source": regulator_source, "normalisation": "log1p(counts * 1e4 / cell total)",
              "min_gene_fraction": min_gene_fraction,
              "aracne": config.to_params()}
    summ = pd.DataFrame(rows)
    params["cell_types_own_network"] = [str(t) for t in summ.loc[summ["network"] == "own", "cell_type"]]
    params["cell_types_pooled_fallback"] = [str(t) for t in summ.loc[summ["network"] == "pooled", "cell_type"]]
    return CellTypeNetworks(networks=networks, summary=summ, labels=labels, params=params)
