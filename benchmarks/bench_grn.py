"""GRN inference benchmark: quality against a simulated ground truth, time and peak memory.

    .venv/bin/python benchmarks/bench_grn.py            # full (~3 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_grn.py --quick    # smaller sizes (~1 min)

Quality (simulator with known network, one cell type, several seeds): AUPR and
early precision (EP = precision in the top k = |true edges|; EPR = EP / random)
of the ARACNe pipeline (threshold + DPI + bootstrap consensus, and a single run),
beside two baselines ranked over every (TF, gene) pair in the same run: Pearson
|r| of log-normalised expression and copula MI without threshold/DPI. A pair of
TFs counts as true in either direction (MI has no direction). Pipeline edges are
scored by their MI; pairs it did not keep score 0 (tied last).

Speed/memory (each case in a fresh subprocess so peak RSS is its own): the
per-cell-type pipeline on the bundled PBMC data (700 cells x 765 genes, 10
types), and one network on a simulated 20k-cell x 2k-gene matrix (200 TFs);
the MI-matrix baseline is the ARACNe-AP adaptive-partitioning estimator on the
same cells. JIT compile time of the JAX kernels is measured separately
(`lower().compile()` at the case's shapes) and timings are medians of repeats.

Writes benchmarks/results/grn.md and grn.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ----------------------------------------------------------------------------- helpers


def _machine() -> dict:
    from grn_jax.machine import describe_machine

    return describe_machine()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _median_time(fn, repeats: int) -> tuple[float, list]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), [round(t, 4) for t in times]


def _lognorm(counts):
    x = np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts, np.float64)
    tot = x.sum(axis=1, keepdims=True)
    return np.log1p(x / np.maximum(tot, 1) * 1e4)


# ----------------------------------------------------------------------------- quality


def _scores_to_metrics(score_RxG, truth_RxG, cand_RxG, rest_RxG=None) -> dict:
    """AUPR/EP of a score matrix; for a sparse network, `rest_RxG` (MI) also ranks the pairs it did not keep
    below all of its edges (`aupr_full`); for a full ranking `aupr_full` = `aupr`."""
    from sklearn.metrics import average_precision_score

    y, s = truth_RxG[cand_RxG], score_RxG[cand_RxG]
    full = s if rest_RxG is None else np.where(s > 0, s + rest_RxG[cand_RxG].max() + 1.0, rest_RxG[cand_RxG])
    k = int(y.sum())
    rand = k / y.size
    order = np.argsort(-s, kind="stable")
    top = order[:k]
    top = top[s[top] > 0]  # a sparse network contributes only the edges it kept
    ep = float(y[top].mean()) if top.size else 0.0
    return {"aupr": float(average_precision_score(y, s)), "aupr_full": float(average_precision_score(y, full)),
            "aupr_random": rand, "early_precision": ep,
            "epr": ep / rand, "n_scored": int((s > 0).sum())}


def quality(seeds, n_cells, n_genes, n_bootstraps, with_adaptive) -> dict:
    from grn_jax.datasets import simulate
    from grn_jax.graphs import AracneConfig, constant_columns, copula_scores, gaussian_copula_mi, infer_network

    rows = {}
    for seed in seeds:
        sim = simulate(n_cells=n_cells, n_genes=n_genes, n_cell_types=1, knockouts=0, seed=seed)
        x = _lognorm(sim.adata.X)
        keep = ~constant_columns(x, AracneConfig().min_informative_cells)
        x = x[:, keep]
        genes = np.asarray(sim.adata.var_names[keep])
        tfs = [g for g in sim.adata.var_names[sim.adata.var.is_tf] if g in set(genes)]
        gpos = {g: i for i, g in enumerate(genes)}
        reg = np.array([gpos[t] for t in tfs])
        truth = np.zeros((len(tfs), len(genes)), bool)
        tpos = {t: k for k, t in enumerate(tfs)}
        for r, t in zip(sim.network.regulator, sim.network.target):
            if r in tpos and t in gpos:
                truth[tpos[r], gpos[t]] = True
                if t in tpos:
                    truth[tpos[t], gpos[r]] = True
        cand = np.ones_like(truth)
        cand[np.arange(len(tfs)), reg] = False

        xc = x - x.mean(0)
        xc /= np.linalg.norm(xc, axis=0)
        methods = {"pearson |r| (all pairs)": np.abs(xc[:, reg].T @ xc)}
        z = copula_scores(x)
        methods["copula MI, no threshold/DPI (all pairs)"] = gaussian_copula_mi(z[:, reg], z)
        timings = {}

        def net_scores(cfg, label):
            t0 = time.perf_counter()
            net = infer_network(x, genes, tfs, cfg)
            timings[label] = round(time.perf_counter() - t0, 3)
            s = np.zeros_like(truth, float)
            s[[tpos[r] for r in net.regulator], [gpos[t] for t in net.target]] = net.mi
            return s

        methods[f"ARACNe: threshold + DPI + {n_bootstraps}-bootstrap consensus"] = net_scores(
            AracneConfig(n_bootstraps=n_bootstraps, seed=seed), "aracne_consensus")
        methods["ARACNe: threshold + DPI, single run"] = net_scores(AracneConfig(n_bootstraps=1, seed=seed),
                                                                     "aracne_single")
        methods["MI threshold only (no DPI), single run"] = net_scores(
            AracneConfig(n_bootstraps=1, dpi=False, seed=seed), "threshold_only")
        if with_adaptive and seed == seeds[0]:
            methods["ARACNe-AP estimator (adaptive partitioning), threshold + DPI, single run"] = net_scores(
                AracneConfig(estimator="adaptive", n_bootstraps=1, n_null_pairs=5000, seed=seed), "aracne_ap_single")
        mi_all = np.asarray(methods["copula MI, no threshold/DPI (all pairs)"], float)
        for name, s in methods.items():
            rest = None if "all pairs" in name else mi_all
            rows.setdefault(name, []).append(_scores_to_metrics(np.asarray(s, float), truth, cand, rest))
        rows.setdefault("_timings_s", []).append(timings)
        rows.setdefault("_data", []).append({"seed": seed, "cells": n_cells, "genes": int(len(genes)),
                                             "tfs": len(tfs), "true_edges": int(truth[cand].sum())})
    return rows


# ----------------------------------------------------------------------------- speed cases (subprocess)


def _compile_time(n_cells, n_regs, n_genes, block=512) -> float:
    """AOT lower+compile of the copula-MI and DPI kernels at the bucketed shapes a run uses."""
    import jax
    import jax.numpy as jnp

    from grn_jax.graphs import aracne as ar
    from grn_jax.graphs import mutual_info as mi

    g_pad = mi.bucket(n_genes)
    blk = min(block, g_pad)
    g_pad = -(-g_pad // blk) * blk
    f32 = jnp.float32
    t0 = time.perf_counter()
    mi._gc_mi_blocks.lower(jax.ShapeDtypeStruct((mi.bucket(n_cells), mi.bucket(n_regs, minimum=8)), f32),
                           jax.ShapeDtypeStruct((mi.bucket(n_cells), g_pad), f32),
                           jax.ShapeDtypeStruct((), f32), blk).compile()
    ar._dpi_witness.lower(jax.ShapeDtypeStruct((mi.bucket(n_regs, minimum=8), mi.bucket(n_genes + 1)), f32),
                          jax.ShapeDtypeStruct((mi.bucket(n_regs, minimum=8),), jnp.int32)).compile()
    return time.perf_counter() - t0


def case_pbmc(n_bootstraps: int, repeats: int) -> dict:
    from grn_jax.datasets import pbmc68k
    from grn_jax.graphs import AracneConfig, infer_cell_type_networks
    from grn_jax.graphs import mutual_info as mi
    from grn_jax.resources import human_tfs

    adata = pbmc68k()
    tfs = human_tfs()
    cfg = AracneConfig(n_bootstraps=n_bootstraps)
    res = None

    def run():
        nonlocal res
        res = infer_cell_type_networks(adata, cell_type_key="cell_type", regulators=tfs, config=cfg, min_cells=30)

    cold, _ = _median_time(run, 1)  # first run in this process: includes every JIT compile
    med, times = _median_time(run, repeats)
    # MI-matrix baseline on all 700 cells: copula (matmul) vs adaptive partitioning (ARACNe-AP).
    x = _lognorm(adata.X)
    x = x[:, ~mi.constant_columns(x)]
    reg = np.flatnonzero(np.isin(np.asarray(adata.var_names[~mi.constant_columns(_lognorm(adata.X))]), tfs))
    t_gc, _ = _median_time(lambda: mi.gaussian_copula_mi(mi.copula_scores(x)[:, reg], mi.copula_scores(x)), repeats)
    ranks = mi.rank_transform(x, ties="random")
    t_ap, _ = _median_time(lambda: mi.adaptive_partition_mi_matrix(ranks, reg), 1)
    summ = res.summary
    return {"case": "pbmc68k per-cell-type", "cells": adata.n_obs, "genes": adata.n_vars,
            "regulators": int(reg.size), "cell_types": int(len(summ)),
            "inferred": int((summ["status"] == "inferred").sum()),
            "fallback": int(summ["status"].str.startswith("fallback").sum()),
            "edges_per_type": dict(zip(summ["cell_type"], summ["n_edges"].astype(int))),
            "bootstraps": n_bootstraps, "pipeline_cold_s (incl. JIT compiles)": round(cold, 3),
            "pipeline_warm_s_median": round(med, 3), "pipeline_warm_s_all": times,
            "mi_matrix_copula_s": round(t_gc, 4),
            "mi_matrix_adaptive_s": round(t_ap, 3), "mi_pairs": int(reg.size * x.shape[1]),
            "peak_rss_mib": round(_peak_rss_mib(), 1)}


def case_large(n_cells: int, n_genes: int, n_bootstraps: int, ap_regs: int) -> dict:
    from grn_jax.datasets import simulate
    from grn_jax.graphs import AracneConfig, infer_network
    from grn_jax.graphs import mutual_info as mi

    t0 = time.perf_counter()
    sim = simulate(n_cells=n_cells, n_genes=n_genes, n_cell_types=1, knockouts=0, seed=0)
    sim_s = time.perf_counter() - t0
    x = _lognorm(sim.adata.X).astype(np.float32)
    keep = ~mi.constant_columns(x, AracneConfig().min_informative_cells)
    x, genes = x[:, keep], list(sim.adata.var_names[keep])
    tfs = [g for g in sim.adata.var_names[sim.adata.var.is_tf] if g in set(genes)]
    rss_data = _peak_rss_mib()
    compile_s = _compile_time(n_cells, len(tfs), len(genes))
    t0 = time.perf_counter()
    net = infer_network(x, genes, tfs, AracneConfig(n_bootstraps=n_bootstraps))
    pipe_s = time.perf_counter() - t0
    z = mi.copula_scores(x)
    reg = np.flatnonzero(np.isin(genes, tfs))
    t_scores, _ = _median_time(lambda: mi.copula_scores(x), 1)
    t_gc, _ = _median_time(lambda: mi.gaussian_copula_mi(z[:, reg], z), 3)
    ranks = mi.rank_transform(x, ties="random")
    t_ap, _ = _median_time(lambda: mi.adaptive_partition_mi_matrix(ranks, reg[:ap_regs]), 1)
    return {"case": f"simulated {n_cells} x {n_genes}, one network", "cells": n_cells, "genes": len(genes),
            "regulators": len(tfs), "bootstraps": n_bootstraps, "edges": net.num_edges,
            "simulate_s": round(sim_s, 2), "pipeline_s": round(pipe_s, 2), "jit_compile_s": round(compile_s, 3),
            "copula_scores_s": round(t_scores, 3), "mi_matrix_copula_s": round(t_gc, 3),
            "mi_pairs_copula": int(len(reg) * len(genes)),
            "mi_adaptive_s_for_regs": round(t_ap, 2), "mi_adaptive_regs": int(min(ap_regs, len(reg))),
            "mi_pairs_adaptive": int(min(ap_regs, len(reg)) * len(genes)),
            "peak_rss_mib_after_data": round(rss_data, 1), "peak_rss_mib": round(_peak_rss_mib(), 1)}


def _subprocess_case(args: list) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
    if out.returncode != 0:
        raise RuntimeError(f"case {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# GRN inference benchmark (`benchmarks/bench_grn.py`)", "",
             f"Command: `{report['command']}`  ", f"Machine: {m['cpu']}, {m['cores']} cores, jax {m['jax']} "
             f"({m['backend']}), numpy {m['numpy']}, python {m['python']}  ",
             f"Date: {report['date']}  ", f"Total wall time: {report['total_s']:.0f} s", "",
             "## Quality on simulated data with a known network", ""]
    q = report["quality"]
    d = q["_data"]
    lines.append(f"{len(d)} seed(s); {d[0]['cells']} cells, ~{d[0]['genes']} genes, {d[0]['tfs']} TFs, "
                 f"~{d[0]['true_edges']} true edges; mean (min-max) over seeds. EPR = early precision / random.")
    lines.append("AUPR: pairs a network did not keep score 0 (tied last); AUPR full: they are ranked by copula MI "
                 "below all of the network's edges (a complete ranking, comparable with the all-pairs baselines).")
    lines += ["", "| method | AUPR | AUPR full | AUPR random | early precision | EPR | pairs scored |",
              "|---|---|---|---|---|---|---|"]
    for name, rows in q.items():
        if name.startswith("_"):
            continue

        def f(key, fmt="{:.3f}"):
            v = [r[key] for r in rows]
            return fmt.format(np.mean(v)) + (f" ({fmt.format(min(v))}-{fmt.format(max(v))})" if len(v) > 1 else "")

        lines.append(f"| {name} | {f('aupr')} | {f('aupr_full')} | {f('aupr_random')} | {f('early_precision')} | {f('epr', '{:.1f}')} "
                     f"| {f('n_scored', '{:.0f}')} |")
    lines += ["", f"Pipeline seconds per seed: {q['_timings_s']}", "", "## Time and peak memory", ""]
    for c in report["speed"]:
        lines.append(f"### {c['case']}")
        lines.append("")
        for k, v in c.items():
            if k != "case":
                lines.append(f"- {k}: {v}")
        lines.append("")
    lines += ["Notes: timings were taken on a shared machine while other jobs ran; they are noisy and should be "
              "re-run on a quiet machine. `jit_compile_s` is measured separately (AOT lower+compile at the run's "
              "shapes); the pipeline timings then hit the compile cache. `peak_rss_mib` is the case subprocess's "
              "peak resident memory (includes the Python/JAX runtime, ~0.5 GiB)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (~1 min)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--case-args", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--out", default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    if args.case:
        kw = json.loads(args.case_args)
        res = case_pbmc(**kw) if args.case == "pbmc" else case_large(**kw)
        print(json.dumps(res, default=str))
        return 0

    t0 = time.perf_counter()
    if args.quick:
        qkw = dict(seeds=[0], n_cells=1000, n_genes=200, n_bootstraps=10, with_adaptive=True)
        large = dict(n_cells=5000, n_genes=1000, n_bootstraps=3, ap_regs=2)
        pbmc = dict(n_bootstraps=5, repeats=1)
    else:
        qkw = dict(seeds=[0, 1, 2], n_cells=2000, n_genes=300, n_bootstraps=20, with_adaptive=True)
        large = dict(n_cells=20_000, n_genes=2000, n_bootstraps=5, ap_regs=1)
        pbmc = dict(n_bootstraps=20, repeats=3)
    report = {"command": "python benchmarks/bench_grn.py" + (" --quick" if args.quick else ""),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": _machine()}
    report["quality"] = quality(**qkw)
    report["speed"] = [_subprocess_case(["--case", "pbmc", "--case-args", json.dumps(pbmc)]),
                       _subprocess_case(["--case", "large", "--case-args", json.dumps(large)])]
    report["total_s"] = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    name = "grn_quick" if args.quick else "grn"
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(_markdown(report))
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
