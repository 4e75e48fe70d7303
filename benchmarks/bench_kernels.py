"""GDKA kernels: fused Pallas path vs the model's XLA path vs a dense-eig baseline, in one run.

Per sequence length S (default 1024, 2048, 4096), on per-cell random GRN subgraphs
(average degree ~2E/S, one-way edges, some masked slots, one padded cell):

  pallas     grn_jax.kernels: ELL build + fused Chebyshev diffusion + flash attention
             (`kernels.dispatch.pallas_gdka`, exactly what attention_impl="pallas" runs)
  xla        the model's attention_impl="xla": BCOO Chebyshev `diffuse` + dense masked softmax
  dense-eig  exact `U exp(-beta Lambda) U^T Q` (batched eigh) + the same dense attention

and each stage alone: the fused diffusion kernel (on a prebuilt ELL) vs the BCOO
`diffuse`, the flash kernel vs dense masked softmax attention.

Each is jitted; compile time is measured separately from the median of --repeats
runs. Forward outputs are checked against each other (normwise relative error,
tolerance from grn_jax.testing). Achieved FLOP/s and bandwidth use analytic
counts (diffusion 2*K*nnz*C + attention 4*B*H*S^2*D FLOPs; bytes = Q, K, V,
output, ELL and masks read/written once) against the device peak when known.

On CPU the Pallas kernels can only run in interpret mode, whose timings mean
nothing: `--quick` (the CPU default) records interpret-mode correctness and the
XLA/dense timings only. On a GPU the kernels are compiled (Triton) and timed.

    python benchmarks/bench_kernels.py            # GPU: speed; CPU: same as --quick
    python benchmarks/bench_kernels.py --quick    # small batch/heads, correctness of interpret mode
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from grn_jax.graphs import diffuse, diffuse_exact, heat_kernel_plan, normalized_laplacian
from grn_jax.kernels import (ChebyshevBlocks, DiffusionAttentionBlocks, FlashBlocks, chebyshev_diffusion,
                             ell_degree_bound, ell_from_laplacian, masked_flash_attention)
from grn_jax.kernels.dispatch import pallas_gdka
from grn_jax.models.attention import DiffusionContext, dot_product_attention
from grn_jax.models.attention import diffusion_attention as model_gdka
from grn_jax.testing import relative_error, tolerance

RESULTS = Path(__file__).parent / "results"

# Dense peak figures (FLOP/s for float32 non-tensor-core / bf16 tensor-core, bytes/s) by device kind.
PEAKS = {
    "H100": {"f32_flops": 67e12, "bf16_flops": 989e12, "bytes": 3.35e12},
    "H200": {"f32_flops": 67e12, "bf16_flops": 989e12, "bytes": 4.8e12},
    "A100": {"f32_flops": 19.5e12, "bf16_flops": 312e12, "bytes": 2.0e12},
}


def machine() -> dict:
    from grn_jax.machine import describe_machine

    return describe_machine()


def peak_for(device_kind: str):
    for key, val in PEAKS.items():
        if key in device_kind:
            return val
    return None


def random_graphs(rng, b: int, s: int, avg_degree: int, *, min_edges: int = 1, min_weight: float = 0.05,
                  keep: float = 0.95):
    """Per-cell random one-way edge lists over real gene positions (1..n-1); the last cell padded to 3/4 S.

    (senders, receivers, weights, edge mask, token mask); also used by gpu_check.py.
    """
    e = max(min_edges, avg_degree * s // 2)
    n_real = np.full(b, s)
    n_real[-1] = max(2, 3 * s // 4)
    snd = np.stack([rng.integers(1, n, e) for n in n_real]).astype(np.int32)
    rcv = np.stack([rng.integers(1, n, e) for n in n_real]).astype(np.int32)
    w = rng.uniform(min_weight, 1.0, (b, e)).astype(np.float32)
    em = rng.random((b, e)) < keep
    tm = np.arange(s)[None, :] < n_real[:, None]
    return snd, rcv, w, em, tm


def make_case(rng, b, s, h, d, avg_degree, dtype):
    """Random one-way edge lists over each cell's genes; the last cell is padded to 3/4 of S."""
    snd, rcv, w, em, tm = random_graphs(rng, b, s, avg_degree)
    q, k, v = (jnp.asarray(rng.normal(size=(b, s, h, d)), dtype) for _ in range(3))
    lap = normalized_laplacian(snd, rcv, w, em, num_nodes=s)
    cls = jnp.asarray((np.arange(s)[None, :] == 0) & tm)
    ctx = DiffusionContext(lap, jnp.asarray(tm), cls)
    width = ell_degree_bound(snd, rcv, em, s)
    nnz = 2 * int(em.sum())
    return q, k, v, jnp.asarray(tm), ctx, width, nnz


def timed(fn, args, repeats):
    """(compile seconds, median run seconds, output) of jit(fn)(*args)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return compile_s, statistics.median(runs), out


def triton_lowering(fn, *args) -> list[str]:
    """Names of the Triton kernels in `fn` lowered for CUDA (jax.export; the backend check is bypassed)."""
    import re

    from jax import export

    import grn_jax.kernels.dispatch as dispatch

    real = dispatch.pallas_unavailable_reason
    dispatch.pallas_unavailable_reason = lambda **kw: None
    try:
        exp = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=[
            export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*args)
    finally:
        dispatch.pallas_unavailable_reason = real
    return sorted(re.findall(r'name = "([a-z_]+)", num_stages', exp.mlir_module()))


def run(args) -> dict:
    on_gpu = jax.default_backend() == "gpu"
    quick = args.quick or not on_gpu
    interpret = not on_gpu
    b, h, d = (1, 2, 32) if quick else (args.batch, args.heads, args.head_dim)
    dtype = jnp.dtype(args.dtype)
    plan = heat_kernel_plan(args.beta)
    k_terms = len(plan.coeffs)
    blocks = DiffusionAttentionBlocks(ChebyshevBlocks(block_cols=64, block_rows=32, block_degree=8),
                                      FlashBlocks(block_q=64, block_k=64))
    info = machine()
    peak = peak_for(info["device"])
    rows = []
    for s in args.seq_lens:
        rng = np.random.default_rng(s)
        q, k, v, tm, ctx, width, nnz = make_case(rng, b, s, h, d, args.avg_degree, dtype)
        width = -(-width // 8) * 8

        def f_pallas(q, k, v, tm, ctx):
            return pallas_gdka(q, k, v, tm, ctx.laplacian, ctx.node_mask_BxS, ctx.passthrough_mask_BxS, plan,
                               width=width, block=blocks, interpret=interpret)

        def f_xla(q, k, v, tm, ctx):
            return model_gdka(q, k, v, tm, ctx, plan, impl="xla")[0]

        def f_dense(q, k, v, tm, ctx):
            qd = diffuse_exact(ctx.laplacian, q.reshape(b, s, h * d), args.beta, node_mask_BxS=ctx.node_mask_BxS,
                               passthrough_mask_BxS=ctx.passthrough_mask_BxS).reshape(b, s, h, d)
            return dot_product_attention(qd.astype(q.dtype), k, v, tm)[0]

        a = (q, k, v, tm, ctx)
        row = {"S": s, "B": b, "H": h, "D": d, "K": k_terms - 1, "ell_width": width, "nnz_per_batch": nnz,
               "dtype": str(dtype)}
        c_x, t_x, out_x = timed(f_xla, a, args.repeats)
        row.update(xla_compile_s=c_x, xla_ms=t_x * 1e3)
        c_p, t_p, out_p = timed(f_pallas, a, 1 if interpret else args.repeats)
        row.update(pallas_compile_s=c_p, pallas_ms=None if interpret else t_p * 1e3,
                   pallas_interpret=interpret)
        if s <= (args.max_dense_s or (2048 if quick else 4096)):
            c_d, t_d, out_d = timed(f_dense, a, max(1, args.repeats // 3))
            row.update(dense_compile_s=c_d, dense_ms=t_d * 1e3,
                       rel_err_xla_vs_dense=relative_error(out_x, out_d),
                       rel_err_pallas_vs_dense=relative_error(out_p, out_d))
        # The two stages alone: fused diffusion vs BCOO `diffuse`; flash vs dense masked attention.
        ell = ell_from_laplacian(ctx.laplacian, ctx.node_mask_BxS, ctx.passthrough_mask_BxS, width=width)
        coeffs = jnp.asarray(plan.as_array(), jnp.float32)

        def f_diff_pallas(q, ell):
            return chebyshev_diffusion(q.reshape(b, s, h * d), ell, coeffs, block=blocks.diffusion,
                                       interpret=interpret)

        def f_diff_xla(q, ctx):
            return diffuse(ctx.laplacian, q.reshape(b, s, h * d), plan, node_mask_BxS=ctx.node_mask_BxS,
                           passthrough_mask_BxS=ctx.passthrough_mask_BxS)

        def f_attn_pallas(q, k, v, tm):
            return masked_flash_attention(q, k, v, tm, block=blocks.attention, interpret=interpret)

        def f_attn_xla(q, k, v, tm):
            return dot_product_attention(q, k, v, tm)[0]

        reps = 1 if interpret else args.repeats
        for stage, fp, fx, ap, ax in (("diffusion", f_diff_pallas, f_diff_xla, (q, ell), (q, ctx)),
                                      ("attention", f_attn_pallas, f_attn_xla, (q, k, v, tm), (q, k, v, tm))):
            _, tp, op = timed(fp, ap, reps)
            _, tx, ox = timed(fx, ax, args.repeats)
            row[f"{stage}_xla_ms"] = tx * 1e3
            row[f"{stage}_pallas_ms"] = None if interpret else tp * 1e3
            row[f"{stage}_rel_err"] = relative_error(op, ox)
        if interpret:  # no GPU: at least show the GPU program lowers (Pallas -> Triton IR), nothing compiled
            row["triton_kernels_lowered"] = triton_lowering(
                lambda *x: pallas_gdka(*x, plan, width=width, block=blocks, interpret=False),
                q, k, v, tm, ctx.laplacian, ctx.node_mask_BxS, ctx.passthrough_mask_BxS)
        tol = tolerance(dtype).rel
        row["rel_err_pallas_vs_xla"] = relative_error(out_p, out_x)
        row["tolerance"] = tol
        row["pallas_matches_xla"] = row["rel_err_pallas_vs_xla"] <= tol
        flops = 2.0 * (k_terms - 1) * nnz * h * d + 4.0 * b * h * s * s * d
        nbytes = (5 * b * s * h * d) * dtype.itemsize + b * s * width * 8 + 2 * b * s
        row.update(model_flops=flops, model_bytes=nbytes)
        for name in ("xla", "pallas"):
            ms = row.get(f"{name}_ms")
            if ms:
                row[f"{name}_flops_per_s"] = flops / (ms / 1e3)
                row[f"{name}_bytes_per_s"] = nbytes / (ms / 1e3)
                if peak:
                    pk = peak["bf16_flops"] if dtype == jnp.bfloat16 else peak["f32_flops"]
                    row[f"{name}_frac_peak_flops"] = row[f"{name}_flops_per_s"] / pk
                    row[f"{name}_frac_peak_bytes"] = row[f"{name}_bytes_per_s"] / peak["bytes"]
        if row.get("pallas_ms"):
            row["speedup_pallas_vs_xla"] = row["xla_ms"] / row["pallas_ms"]
        rows.append(row)
        print(json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return {"machine": info, "quick": quick, "interpret": interpret, "beta": args.beta, "repeats": args.repeats,
            "avg_degree": args.avg_degree, "peak": peak, "rows": rows}


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kernels.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    lines = ["# GDKA kernels: Pallas (fused diffusion + flash attention) vs XLA path vs dense eig", "",
             f"Machine: {m['cpu']} ({m['cores']} cores), device {m['device']} x{m['n_devices']}, backend "
             f"{m['backend']}, jax {m['jax']}, {m['platform']}.",
             f"beta = {result['beta']}, average degree ~{result['avg_degree']}, median of {result['repeats']} runs; "
             "compile time separate. Written by `python benchmarks/bench_kernels.py"
             + (" --quick`." if result["quick"] else "`."), ""]
    if result["interpret"]:
        lines += ["**No GPU: the Pallas kernels ran in interpret mode.** Only their correctness is recorded "
                  "(interpret-mode time is meaningless and not reported); XLA and dense-eig timings are CPU "
                  "timings on a shared, busy machine. The GPU program was lowered for CUDA (Pallas -> Triton "
                  "IR, not compiled): kernels " + ", ".join(sorted(set(result["rows"][0].get(
                      "triton_kernels_lowered", [])))) + ".", ""]
    lines += ["| S | B×H×D | K | ELL R | pallas ms | xla ms | dense-eig ms | speed-up | rel err pallas/xla | "
              "rel err pallas/dense | compile s (pallas/xla) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    for r in result["rows"]:
        verdict = "ok" if r["pallas_matches_xla"] else "FAIL"
        lines.append(
            f"| {r['S']} | {r['B']}×{r['H']}×{r['D']} | {r['K']} | {r['ell_width']} "
            f"| {fmt(r.get('pallas_ms'), '.2f')} | {r['xla_ms']:.2f} | {fmt(r.get('dense_ms'), '.2f')} "
            f"| {fmt(r.get('speedup_pallas_vs_xla'), '.2f')} "
            f"| {r['rel_err_pallas_vs_xla']:.1e} {verdict} (tol {r['tolerance']:.0e}) "
            f"| {fmt(r.get('rel_err_pallas_vs_dense'), '.1e')} | {r['pallas_compile_s']:.1f}/{r['xla_compile_s']:.1f} |")
    lines += ["", "Stages alone (fused Chebyshev diffusion vs BCOO `diffuse`; flash vs dense masked attention):", "",
              "| S | diffusion pallas ms | diffusion xla ms | rel err | attention pallas ms | attention xla ms "
              "| rel err |",
              "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['S']} | {fmt(r.get('diffusion_pallas_ms'), '.2f')} | {r['diffusion_xla_ms']:.2f} | "
                     f"{r['diffusion_rel_err']:.1e} | {fmt(r.get('attention_pallas_ms'), '.2f')} | "
                     f"{r['attention_xla_ms']:.2f} | {r['attention_rel_err']:.1e} |")
    if any(r.get("xla_flops_per_s") for r in result["rows"]):
        lines += ["", "Achieved (analytic FLOPs and minimum bytes / median time):", ""]
        for r in result["rows"]:
            parts = []
            for name in ("pallas", "xla"):
                if r.get(f"{name}_flops_per_s"):
                    p = (f"{name} {r[f'{name}_flops_per_s'] / 1e9:.3g} GFLOP/s, "
                         f"{r[f'{name}_bytes_per_s'] / 1e9:.3g} GB/s")
                    if f"{name}_frac_peak_flops" in r:
                        p += (f" ({r[f'{name}_frac_peak_flops']:.1%} of peak FLOP/s, "
                              f"{r[f'{name}_frac_peak_bytes']:.1%} of peak bandwidth)")
                    parts.append(p)
            lines.append(f"- S={r['S']}: " + "; ".join(parts))
    (RESULTS / "kernels.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small batch/heads; the only mode without a GPU")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--avg-degree", type=int, default=8)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--max-dense-s", type=int, default=None,
                   help="skip the O(S^3) eig baseline above this S (default: 2048 in --quick, else 4096)")
    args = p.parse_args()
    # float32 means float32 on every path (XLA's GPU default for float32 dots is TF32).
    with jax.default_matmul_precision("highest" if args.dtype == "float32" else "default"):
        result = run(args)
    write(result)
    print(f"wrote {RESULTS / 'kernels.md'} and {RESULTS / 'kernels.json'}")


if __name__ == "__main__":
    main()
