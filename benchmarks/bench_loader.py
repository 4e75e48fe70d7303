"""Host-side cost of the co-expression partner lookup in the data loader (issue 14).

Shards prepared with a co-expression partner table (`prepare(coexpr_partners=10)`, the
default) make `ShardStore.cell` look up each cell's partner pairs among its tokens
(`PartnerTable.cell_pairs`: a sparse submatrix of the vocabulary x vocabulary table),
which the edge-perturbation pool draws from. This measures, in the same run and on the
same store, reading + collating batches of cells with the lookup and without it (the
store's table detached), interleaved, median over repeats:

    .venv/bin/python benchmarks/bench_loader.py [--cells 2000] [--genes 2000] [--max-genes 255]

Writes benchmarks/results/loader.{md,json}. The figure to read is the ratio (the
machines are shared and noisy) and the per-batch milliseconds beside a training step's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--max-genes", type=int, default=255, help="gene tokens per cell (S - 1)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    from grn_jax.data.collate import collate
    from grn_jax.data.config import DataConfig, QCConfig, TokenizeConfig
    from grn_jax.data.pipeline import prepare
    from grn_jax.data.shards import ShardStore
    from grn_jax.datasets.simulate import simulate
    from grn_jax.machine import describe_machine
    from grn_jax.types import BinSpec

    sim = simulate(n_cells=args.cells, n_genes=args.genes, n_tfs=args.genes // 10, knockouts=0, seed=0)
    cfg = DataConfig(qc=QCConfig(min_counts=1, max_counts=None, min_genes=5),
                     tokenize=TokenizeConfig(n_bins=16, max_genes=args.max_genes)).validate()
    work = tempfile.mkdtemp(prefix="bench_loader_")
    prepare(sim.adata, os.path.join(work, "shards"), cfg, graph=sim.network, overwrite=True)
    store = ShardStore(os.path.join(work, "shards"))
    table = store.coexpression
    if table is None:
        raise SystemExit("prepare wrote no co-expression partner table; nothing to measure")
    spec = BinSpec(16)
    seq = (1 << int(np.ceil(np.log2(args.max_genes + 1))),)
    n_batches = len(store) // args.batch
    tokens = [len(store.cell(i)["gene_ids"]) for i in range(min(len(store), 256))]
    sample = store.cell(0)
    pairs = len(table.cell_pairs(sample["gene_ids"])[0])

    def run(with_table: bool) -> float:
        store.coexpression = table if with_table else None
        t0 = time.perf_counter()
        for k in range(n_batches):
            cells = [store.cell(i) for i in range(k * args.batch, (k + 1) * args.batch)]
            e = max(max(len(c["edge_src"]) for c in cells), 1)
            collate(cells, spec, seq, (1 << int(np.ceil(np.log2(e))),), batch_size=args.batch)
        return (time.perf_counter() - t0) / n_batches

    times = {True: [], False: []}
    run(True), run(False)  # warm-up (page cache, imports)
    for _ in range(args.repeats):
        for flag in (False, True):
            times[flag].append(run(flag))
    med = {k: statistics.median(v) for k, v in times.items()}
    m = describe_machine()
    out = {"command": "python benchmarks/bench_loader.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": m, "cells": len(store), "vocab": int(table.num_genes), "batch": args.batch,
           "median_tokens_per_cell": float(np.median(tokens)), "partner_pairs_cell0": pairs,
           "ms_per_batch_without": 1e3 * med[False], "ms_per_batch_with": 1e3 * med[True],
           "ratio": med[True] / med[False], "times_s": {"without": times[False], "with": times[True]}}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "loader.json.tmp"), "w") as f:
        json.dump(out, f, indent=2)
    os.replace(os.path.join(RESULTS, "loader.json.tmp"), os.path.join(RESULTS, "loader.json"))
    md = "\n".join([
        "# Data loader: the co-expression partner lookup's host cost", "",
        f"Command: `{out['command']}`. Written by benchmarks/bench_loader.py; do not edit by hand.", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, jax {m['jax']} (shared machine: read the ratio).", "",
        f"Simulated {args.cells} cells x {args.genes} genes, prepared with the default partner table "
        f"({out['vocab']} genes tracked), median {out['median_tokens_per_cell']:.0f} gene tokens per cell, "
        f"{pairs} partner pairs in cell 0. Per batch of {args.batch}: `ShardStore.cell` for each cell + `collate`, "
        f"median of {args.repeats} passes over {n_batches} batches, the two settings interleaved.", "",
        "| partner lookup | ms per batch | ratio |", "|---|---|---|",
        f"| off (table detached) | {out['ms_per_batch_without']:.2f} | 1 |",
        f"| on (default) | {out['ms_per_batch_with']:.2f} | **{out['ratio']:.2f}x** |", ""])
    with open(os.path.join(RESULTS, "loader.md.tmp"), "w") as f:
        f.write(md)
    os.replace(os.path.join(RESULTS, "loader.md.tmp"), os.path.join(RESULTS, "loader.md"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
