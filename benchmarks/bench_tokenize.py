"""Tokenisation throughput: the vectorised pipeline vs a per-cell `np.quantile` loop, in one run.

What is timed (cells/s, median of --repeats runs):
  ours      ingest (CSR row chunks) + validate + QC + normalise(1e6)+log1p + rank-bin +
            top-max_genes + token arrays (`grn_jax.data` pieces, no shards written)
  ours+io   the full `prepare` (adds shard writing and the content hash)
  ours+grn  `ours` plus each cell's subgraph of the ground-truth network (simulated data)
  baseline  the straightforward loop of the public GREmLN tokenizer: per cell, densify
            the row, QC, normalise, np.quantile edges, digitize, argsort for the top genes
  loader    grain loader + collate (padded TokenBatch) reading the prepared shards

The baseline runs on the first --baseline-cells cells (its cost is linear in cells),
ours on all cells. Outputs are checked to agree (bins equal except where float
rounding of an np.quantile edge bites; see grn_jax.data.binning). No JIT is involved,
so there is no compile time to separate.

    python benchmarks/bench_tokenize.py            # PBMC + 100k simulated cells (~2-3 min)
    python benchmarks/bench_tokenize.py --quick    # PBMC + 20k simulated cells
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from grn_jax.data import (DataConfig, IngestConfig, QCConfig, ShardStore, SingleNetworkSource, TokenizeConfig,
                          check_block, make_loader, open_counts, prepare, qc_cells, tokenize_block)
from grn_jax.data.pipeline import _to_vocab_columns
from grn_jax.data.vocab import GeneVocab

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    from grn_jax.machine import describe_machine

    return describe_machine()


def ours(adata, cfg: DataConfig, graph=None) -> tuple[int, int]:
    """In-memory pipeline without shard writing; returns (cells kept, tokens)."""
    src = open_counts(adata, cfg.ingest)
    vocab = GeneVocab(src.gene_names)
    col_ids = vocab.lookup(src.gene_names)
    totals = np.zeros(src.n_cells)
    n_expr = np.zeros(src.n_cells, np.int64)
    blocks = []
    for start, block in src.chunks(cfg.shards.chunk_cells):
        check_block(block, start, src.cell_names, src.gene_names, expect_counts=True)
        totals[start:start + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
        n_expr[start:start + block.shape[0]] = np.diff(block.indptr)
        blocks.append((start, block))
    keep = qc_cells(totals, n_expr, cfg.qc).keep
    gsrc = SingleNetworkSource(graph, vocab.tokens) if graph is not None else None
    kept = tokens = 0
    for start, block in blocks:
        rows = np.flatnonzero(keep[start:start + block.shape[0]])
        vb = _to_vocab_columns(block if len(rows) == block.shape[0] else block[rows], col_ids, len(vocab))
        t = tokenize_block(vb, totals[start + rows], start + rows, cfg.tokenize, graph_source=gsrc)
        kept += t.num_cells
        tokens += int(t.token_ptr[-1])
    return kept, tokens


def baseline(X: sp.csr_matrix, cfg: DataConfig, n_cells: int) -> tuple[int, list]:
    """Per-cell loop: the approach of the public GREmLN tokenizer."""
    q, tok = cfg.qc, cfg.tokenize
    levels = np.linspace(0, 1, tok.n_bins)[1:-1]
    out = []
    for i in range(n_cells):
        row = X[i].toarray().ravel().astype(np.float64)
        total = row.sum()
        expressed = np.flatnonzero(row)
        if (q.min_counts is not None and total < q.min_counts) or (q.max_counts is not None and total > q.max_counts):
            continue
        if len(expressed) < q.min_genes:
            continue
        norm = np.log1p(row * (tok.target_sum / total))
        vals = norm[expressed]
        edges = np.quantile(vals, levels)
        bins = 1 + np.digitize(vals, edges, right=True)
        top = np.argsort(vals, kind="stable")[-tok.max_genes:]
        genes = np.sort(expressed[top])
        out.append((i, genes, bins[np.searchsorted(expressed, genes)]))
    return len(out), out


def _median_time(fn, repeats, cpu_out: list | None = None):
    """Median wall time (and, into cpu_out, median process CPU time: robust on a shared machine)."""
    times, cpus, result = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if cpu_out is not None:
        cpu_out.append(statistics.median(cpus))
    return statistics.median(times), times, result


def check_agreement(X, cfg, base_out) -> dict:
    """Bins of ours vs baseline on the baseline's cells."""
    n = max(i for i, _, _ in base_out) + 1
    vocab_cols = np.arange(X.shape[1]) + 3
    block = _to_vocab_columns(sp.csr_matrix(X[:n]), vocab_cols, X.shape[1] + 3)
    t = tokenize_block(block, np.asarray(X[:n].sum(axis=1)).ravel(), np.arange(n), cfg.tokenize)
    same = total = 0
    for i, genes, bins in base_out:
        a, b = t.token_ptr[i], t.token_ptr[i + 1]
        if not np.array_equal(t.gene_ids[a:b] - 3, genes):
            return {"genes_equal": False, "cell": int(i)}
        same += int((t.bins[a:b] == bins).sum())
        total += len(bins)
    return {"genes_equal": True, "bins_equal_fraction": same / max(total, 1), "tokens_compared": total}


def bench_dataset(name, adata, cfg, repeats, baseline_cells, graph=None, loader_batches=50) -> dict:
    X = sp.csr_matrix(adata.X)
    n = adata.n_obs
    nb = min(n, baseline_cells)
    cpu = []
    t_ours, ours_all, (kept, tokens) = _median_time(lambda: ours(adata, cfg), repeats, cpu)
    t_base, base_all, (kept_b, base_out) = _median_time(lambda: baseline(X, cfg, nb), 1 if nb > 5000 else repeats,
                                                        cpu)
    row = {"dataset": name, "cells": n, "genes": adata.n_vars, "nnz_per_cell": X.nnz / n, "cells_kept": kept,
           "tokens": tokens, "ours_s": t_ours, "ours_runs_s": ours_all, "ours_cells_per_s": n / t_ours,
           "baseline_cells": nb, "baseline_s": t_base, "baseline_cells_per_s": nb / t_base,
           "agreement": check_agreement(X, cfg, base_out)}
    row["speedup"] = row["ours_cells_per_s"] / row["baseline_cells_per_s"]
    row.update(ours_cpu_s=cpu[0], baseline_cpu_s=cpu[1], ours_cells_per_cpu_s=n / cpu[0],
               baseline_cells_per_cpu_s=nb / cpu[1])
    row["speedup_cpu"] = row["ours_cells_per_cpu_s"] / row["baseline_cells_per_cpu_s"]
    if graph is not None:
        t_g, _, _ = _median_time(lambda: ours(adata, cfg, graph), repeats)
        row.update(ours_grn_s=t_g, ours_grn_cells_per_s=n / t_g, network_edges=graph.num_edges)
    with tempfile.TemporaryDirectory() as tmp:
        t_io, _, summary = _median_time(lambda: prepare(adata, Path(tmp) / "s", cfg, overwrite=True), 1)
        row.update(prepare_s=t_io, prepare_cells_per_s=n / t_io)
        store = ShardStore(Path(tmp) / "s")
        it = make_loader(store, 64, seed=0, process_index=0, process_count=1)
        next(it)
        t0 = time.perf_counter()
        for _ in range(loader_batches):
            next(it)
        dt = time.perf_counter() - t0
        row.update(loader_cells_per_s=64 * loader_batches / dt, loader_batch=64)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k simulated cells instead of 100k")
    ap.add_argument("--cells", type=int, default=None, help="simulated cells (default 100k, 20k with --quick)")
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--baseline-cells", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "tokenize"))
    args = ap.parse_args(argv)
    n_sim = args.cells or (20_000 if args.quick else 100_000)

    from grn_jax.datasets import pbmc68k, simulate

    rows = []
    pbmc_cfg = DataConfig(ingest=IngestConfig(), qc=QCConfig(min_counts=300, min_genes=150),
                          tokenize=TokenizeConfig(max_genes=511))
    rows.append(bench_dataset("pbmc68k_reduced (700 x 765)", pbmc68k(), pbmc_cfg, args.repeats, args.baseline_cells))
    print(json.dumps(rows[-1], indent=1, default=float))
    t0 = time.perf_counter()
    sim = simulate(n_cells=n_sim, n_genes=args.genes, n_cell_types=5, seed=0)
    t_sim = time.perf_counter() - t0
    sim_cfg = DataConfig(qc=QCConfig(min_counts=1000, max_counts=100_000, min_genes=200),
                         tokenize=TokenizeConfig(max_genes=511))
    rows.append(bench_dataset(f"simulated ({n_sim} x {args.genes})", sim.adata, sim_cfg, args.repeats,
                              args.baseline_cells, graph=sim.network))
    rows[-1]["simulate_s"] = t_sim
    print(json.dumps(rows[-1], indent=1, default=float))

    mach = machine()
    busy = mach["load_average_1min"] > 0.5 * (mach["cores"] or 1)
    note = (f"1-min load average {mach['load_average_1min']} on {mach['cores']} cores at the end of the run"
            + (": the machine was busy, timings are noisy" if busy else ""))
    result = {"benchmark": "tokenize", "machine": mach, "args": vars(args), "rows": rows, "note": note}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
    m = result["machine"]
    lines = [
        "# Tokenisation throughput (`benchmarks/bench_tokenize.py`)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, numpy {m['numpy']}, jax {m['jax']} ({m['backend']}); "
        f"command: `python benchmarks/bench_tokenize.py{' --quick' if args.quick else ''}`.",
        "Medians of repeats; the baseline (per-cell np.quantile loop) runs on the first "
        f"{args.baseline_cells} cells. No JIT, so no compile time. {result['note']}. The CPU-time speedup "
        "(process_time of each side) is the steadier figure on a busy machine.",
        "",
        "| dataset | cells | nnz/cell | ours cells/s | baseline cells/s | speedup (wall) | speedup (CPU time) | "
        "ours+GRN cells/s | prepare (with shards) cells/s | loader cells/s | bins equal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ag = r["agreement"]
        lines.append(
            f"| {r['dataset']} | {r['cells']} | {r['nnz_per_cell']:.0f} | {r['ours_cells_per_s']:,.0f} | "
            f"{r['baseline_cells_per_s']:,.0f} | {r['speedup']:.1f}x | {r['speedup_cpu']:.1f}x | "
            f"{r.get('ours_grn_cells_per_s', float('nan')):,.0f} | {r['prepare_cells_per_s']:,.0f} | "
            f"{r['loader_cells_per_s']:,.0f} | {ag.get('bins_equal_fraction', 0):.6f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
