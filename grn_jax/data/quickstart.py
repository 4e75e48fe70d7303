"""The data half of `make quickstart`: bundled PBMC counts -> shards, plus a printed summary.

Later stages (pretrain -> embed -> evaluate) build on `quickstart_data`, which
returns the prepared folder and its summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from grn_jax.data.config import DataConfig, IngestConfig, QCConfig, TokenizeConfig
from grn_jax.data.graph_source import GraphSource
from grn_jax.data.pipeline import format_summary, prepare

# pbmc68k_reduced keeps only 765 (highly variable) genes, so recovered totals are
# 342-1,654 UMIs and cells express 183-409 of the genes: GREmLN's defaults (>= 1,000
# UMIs, >= 500 genes) would drop nearly every cell. These bounds keep cells with at
# least 300 UMIs and 150 expressed genes over the 765 genes.
PBMC_QC = QCConfig(min_counts=300, max_counts=100_000, keep_middle=None, min_genes=150)


def quickstart_config() -> DataConfig:
    """The data config the quickstart uses on the bundled PBMC data."""
    return DataConfig(ingest=IngestConfig(cell_type_column="cell_type"), qc=PBMC_QC,
                      tokenize=TokenizeConfig(n_bins=100, max_genes=511)).validate()


def quickstart_data(out_dir, *, networks: bool = True, graph: Optional[GraphSource] = None,
                    overwrite: bool = True) -> tuple[Path, dict]:
    """Prepare the bundled PBMC data into `out_dir/shards`; return (shards folder, summary).

    networks=True infers one ARACNe network per cell type (GREmLN; types with too
    few cells get the pooled network), writes them to `out_dir/networks` and puts
    each cell's subgraph into the tokens; `graph` overrides that with a given source.
    """
    from grn_jax.datasets.pbmc import pbmc68k

    adata = pbmc68k()
    out_dir = Path(out_dir)
    network_report = None
    if graph is None and networks:
        from grn_jax.graphs import infer_cell_type_networks, write_cell_type_networks

        inferred = infer_cell_type_networks(adata, cell_type_key="cell_type")
        write_cell_type_networks(inferred, out_dir / "networks", cell_names=list(adata.obs_names))
        graph = inferred.networks
        network_report = {"folder": str(out_dir / "networks"), "cell_types": len(inferred.summary),
                          "method": inferred.params["method"], "own_network": inferred.own,
                          "pooled_fallback": inferred.fell_back,
                          "edges": {t: int(inferred.networks[t].num_edges) for t in inferred.own}}
    shards = out_dir / "shards"
    summary = prepare(adata, shards, quickstart_config(), graph=graph, overwrite=overwrite,
                      dataset_name="pbmc68k_reduced (scanpy), counts recovered")
    summary["count_recovery"] = adata.uns["grn_jax"]["count_recovery"]
    summary["networks"] = network_report
    return shards, summary


def quickstart(out_dir, *, networks: bool = True, echo=print) -> dict:
    """Run the data pipeline on the bundled PBMC data, print the summary, return it."""
    _, summary = quickstart_data(out_dir, networks=networks)
    rec = summary["count_recovery"]
    echo("== grn-jax quickstart: data pipeline on bundled PBMC data ==")
    echo(f"count recovery   {rec['formula']}: max |x - rint(x)| = {rec['max_abs_deviation']:.4f}")
    if summary["networks"]:
        net = summary["networks"]
        e = net["edges"]
        fb = net["pooled_fallback"]
        echo(f"networks         {net['method']} per cell type: {len(e)} of {net['cell_types']} types got their own "
             f"network ({min(e.values(), default=0)}-{max(e.values(), default=0)} edges each)"
             + (f", {len(fb)} fell back to the pooled network ({', '.join(fb)})" if fb else "")
             + f", in {net['folder']}")
    echo(format_summary(summary))
    return summary
