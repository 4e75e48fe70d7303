"""GPU readiness: every kernel against its reference, Pallas vs XLA speed and memory, GDKA vs vanilla steps.

The Python half of `benchmarks/gpu_check.sh` (which installs what is missing,
runs the `gpu`-marked tests and then these stages, each in its own process
under a time limit). Stages:

  kernels  each kernel (fused Chebyshev diffusion, flash attention with its Pallas
           and XLA backward, fused GDKA, the model's Pallas dispatch with
           padding, the native CPU diffusion where it builds) against its pure
           reference, forward and VJP, float32 and bfloat16, to
           `grn_jax.testing.tolerance(dtype)`  -> gpu_kernels.md / .json
  speed    Pallas vs XLA per sequence length: diffusion alone (fused kernel on a
           prebuilt ELL vs BCOO `diffuse`), attention alone (flash vs dense vs
           blocked, fwd+bwd), whole GDKA (fwd+bwd); compile time, median step,
           compiled temp memory                -> gpu_speed.md / .json
  step     one training step (value_and_grad of the masked-bin loss) of the
           gremln_base body: GDKA (xla | blocked | pallas) vs vanilla attention;
           median time, ratio to vanilla, temp memory  -> gpu_step.md / .json

`--lower-only` lowers every program of a stage for CUDA (`jax.export`, Triton
custom calls allowed) and stops before compiling: on a CPU machine this runs
everything up to `.compile()`, which is how the CPU suite checks this file
(tests/kernels/test_gpu_check.py). Memory is XLA's compiled allocation plan
(`memory_analysis()`: temp bytes), exact for the program and free of the
allocator's cache.

    python benchmarks/gpu_check.py kernels|speed|step [--quick] [--lower-only] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TRITON_TARGET = "__gpu$xla.gpu.triton"


class Programs:
    """Compiles (or, with lower_only, lowers for CUDA) and times jitted programs; one record per program."""

    def __init__(self, lower_only: bool, repeats: int):
        self.lower_only, self.repeats = lower_only, repeats

    def lower_for_cuda(self, fn, *args) -> dict:
        import jax  # noqa: PLC0415
        from jax import export  # noqa: PLC0415

        from grn_jax.graphs.diffusion import portable_impl  # noqa: PLC0415

        t0 = time.perf_counter()
        with portable_impl():  # "auto" diffusion is XLA there: this CPU's native kernel is no CUDA program
            exp = export.export(jax.jit(fn), platforms=["cuda"],
                                disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON_TARGET)])(*args)
        text = exp.mlir_module()
        return {"lowered_s": round(time.perf_counter() - t0, 3), "triton_calls": text.count(TRITON_TARGET)}

    def run(self, fn, *args) -> tuple[dict, object]:
        """(record, output); output is None under lower_only."""
        import jax  # noqa: PLC0415

        if self.lower_only:
            return self.lower_for_cuda(fn, *args), None
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        rec = {"compile_s": round(time.perf_counter() - t0, 3)}
        mem = compiled.memory_analysis()
        if mem is not None:
            rec["temp_mib"] = round(mem.temp_size_in_bytes / 2**20, 2)
            rec["args_mib"] = round(mem.argument_size_in_bytes / 2**20, 2)
        out = jax.block_until_ready(compiled(*args))  # warm-up
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - t0)
        rec["median_ms"] = round(1e3 * statistics.median(times), 4)
        return rec, out


def random_graphs(rng, b: int, s: int, avg_degree: int):
    """bench_kernels.random_graphs with this check's settings (>= 8 edges, weights >= 0.1, 90 % kept)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_kernels import random_graphs as make  # noqa: PLC0415

    return make(rng, b, s, avg_degree, min_edges=8, min_weight=0.1, keep=0.9)


def _gdka_inputs(rng, b, s, h, d, dtype, avg_degree=8, beta=1.0):
    import jax.numpy as jnp  # noqa: PLC0415

    from grn_jax.graphs import heat_kernel_plan, normalized_laplacian  # noqa: PLC0415
    from grn_jax.kernels import build_ell_laplacian, ell_degree_bound  # noqa: PLC0415
    from grn_jax.models.attention import DiffusionContext  # noqa: PLC0415

    snd, rcv, w, em, tm = random_graphs(rng, b, s, avg_degree)
    width = ell_degree_bound(snd, rcv, em, s, multiple=8)
    width = 1 << (width - 1).bit_length()  # Triton tiles: a power-of-two ELL width
    ell = build_ell_laplacian(snd, rcv, w, em, tm, width=width)
    lap = normalized_laplacian(snd, rcv, w, em, num_nodes=s)
    tm_j = jnp.asarray(tm)
    cls = tm_j & (jnp.arange(s) == 0)[None, :]
    ctx = DiffusionContext(lap, tm_j, cls)
    plan = heat_kernel_plan(beta)
    q, k, v, g = (jnp.asarray(rng.standard_normal((b, s, h, d)), dtype) for _ in range(4))
    return dict(ell=ell, ctx=ctx, plan=plan, mask=tm_j, q=q, k=k, v=v, g=g,
                coeffs=jnp.asarray(plan.as_array(), jnp.float32))


# ----------------------------------------------------------------------------------------- kernels

def stage_kernels(args, progs: Programs) -> list:
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from grn_jax import kernels as K  # noqa: PLC0415
    from grn_jax.kernels import dispatch  # noqa: PLC0415
    from grn_jax.models.attention import diffusion_attention as model_gdka  # noqa: PLC0415
    from grn_jax.testing import relative_error, tolerance  # noqa: PLC0415

    s, h, d = (128, 2, 32) if args.quick else (512, 4, 64)
    rows = []

    def check(name, dtype, kernel_fn, ref_fn, operands):
        rec, got = progs.run(kernel_fn, *operands)
        row = {"kernel": name, "dtype": jnp.dtype(dtype).name, **rec}
        if got is not None:
            want = jax.jit(ref_fn)(*operands)
            errs = [relative_error(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))]
            tol = tolerance(dtype).rel
            row.update(max_rel_err=float(f"{max(errs):.3g}"), tol=tol,
                       ok=bool(all(e <= tol for e in errs)) and all(np.isfinite(e) for e in errs))
        rows.append(row)
        print(json.dumps(row), flush=True)

    def fwd_vjp(f, n_diff):
        def run(*ops):
            out, vjp = jax.vjp(lambda *x: f(*x, *ops[n_diff:-1]), *ops[:n_diff])
            return out, vjp(ops[-1].astype(out.dtype))
        return run

    blocks = K.DiffusionAttentionBlocks()
    for dtype in (jnp.float32,) if args.quick else (jnp.float32, jnp.bfloat16):
        x = _gdka_inputs(np.random.default_rng(0), 2, s, h, d, dtype)
        q_c = x["q"].reshape(2, s, h * d)
        g_c = x["g"].reshape(2, s, h * d)
        check("chebyshev_diffusion", dtype,
              fwd_vjp(lambda q, e, c: K.chebyshev_diffusion(q, e, c, block=blocks.diffusion), 1),
              fwd_vjp(K.chebyshev_diffusion_reference, 1), (q_c, x["ell"], x["coeffs"], g_c))
        for bwd in ("pallas", "xla"):
            fb = K.FlashBlocks(backward=bwd)
            check(f"masked_flash_attention (backward={bwd})", dtype,
                  fwd_vjp(lambda q, k, v, m: K.masked_flash_attention(q, k, v, m, block=fb), 3),
                  fwd_vjp(K.masked_attention_reference, 3), (x["q"], x["k"], x["v"], x["mask"], x["g"]))
        check("diffusion_attention (fused GDKA)", dtype,
              fwd_vjp(lambda q, k, v, m, e, c: K.diffusion_attention(q, k, v, m, e, c, block=blocks), 3),
              fwd_vjp(K.diffusion_attention_reference, 3),
              (x["q"], x["k"], x["v"], x["mask"], x["ell"], x["coeffs"], x["g"]))
        # The model's dispatch: S and the head dim not powers of two (padded inside), vs the model's XLA path.
        y = _gdka_inputs(np.random.default_rng(1), 2, s - 11, h, d - 16, dtype)
        plan = y["plan"]
        check("pallas_gdka (model dispatch, padded S and head dim)", dtype,
              lambda q, k, v, m, c: model_gdka(q, k, v, m, c, plan, impl="pallas")[0],
              lambda q, k, v, m, c: model_gdka(q, k, v, m, c, plan, impl="xla")[0],
              (y["q"], y["k"], y["v"], y["mask"], y["ctx"]))
    rows.append(_native_check(args))
    print(json.dumps(rows[-1]), flush=True)
    return rows


def _native_check(args) -> dict:
    """The native CPU diffusion (an FFI call on the host) vs the XLA path, on the CPU device."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from grn_jax.graphs import diffuse, heat_kernel_plan, normalized_laplacian  # noqa: PLC0415
    from grn_jax.kernels import native_build  # noqa: PLC0415
    from grn_jax.kernels.cpu_diffusion import cpu_diffuse  # noqa: PLC0415
    from grn_jax.testing import relative_error, tolerance  # noqa: PLC0415

    row = {"kernel": "cpu_diffuse (native, host CPU)", "dtype": "float32"}
    if args.lower_only:
        return {**row, "skipped": "CPU-only kernel: checked by the CPU suite (tests/kernels/test_cpu_diffusion.py)"}
    reason = native_build.unavailable_reason()
    if reason is not None:
        return {**row, "skipped": reason}
    from grn_jax.graphs.diffusion import _coo_reference_vjp_data  # noqa: PLC0415

    with jax.default_device(jax.devices("cpu")[0]):
        rng = np.random.default_rng(2)
        snd, rcv, w, em, tm = random_graphs(rng, 2, 256, 8)
        lap = normalized_laplacian(snd, rcv, w, em, num_nodes=256)
        q = jnp.asarray(rng.standard_normal((2, 256, 64)), jnp.float32)
        tm = jnp.asarray(tm)
        cls = tm & (jnp.arange(256) == 0)[None, :]
        plan = heat_kernel_plan(1.0)
        want = diffuse(lap, q, plan, node_mask_BxS=tm, passthrough_mask_BxS=cls, impl="xla")
        got = cpu_diffuse(lap.data, lap.indices[..., 0], lap.indices[..., 1], q, tm & ~cls, cls,
                          jnp.asarray(plan.as_array(), jnp.float32), _coo_reference_vjp_data)
    err = relative_error(got, want)
    return {**row, "max_rel_err": float(f"{err:.3g}"), "tol": tolerance(jnp.float32).rel,
            "ok": bool(err <= tolerance(jnp.float32).rel)}


# ------------------------------------------------------------------------------------------- speed

def stage_speed(args, progs: Programs) -> list:
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from grn_jax import kernels as K  # noqa: PLC0415
    from grn_jax.graphs import diffuse  # noqa: PLC0415
    from grn_jax.kernels.dispatch import pallas_gdka  # noqa: PLC0415
    from grn_jax.models.attention import blocked_attention, dot_product_attention  # noqa: PLC0415
    from grn_jax.models.attention import diffusion_attention as model_gdka  # noqa: PLC0415

    b, h, d = (2, 2, 32) if args.quick else (4, 8, 64)
    seq_lens = args.seq_lens or ([128] if args.quick else [1024, 2048, 4096])
    dtype = jnp.dtype(args.dtype)
    rows = []

    def grad_of(f):  # fwd+bwd w.r.t. q, k, v of <f(q, k, v), g>
        def run(q, k, v, g, *rest):
            out, vjp = jax.vjp(lambda *x: f(*x, *rest), q, k, v)
            return vjp(g.astype(out.dtype))
        return run

    for s in seq_lens:
        x = _gdka_inputs(np.random.default_rng(s), b, s, h, d, dtype)
        plan, ctx, mask = x["plan"], x["ctx"], x["mask"]
        qkvg = (x["q"], x["k"], x["v"], x["g"])
        c = h * d
        cases = {
            ("diffusion fwd", "pallas"): (lambda q, e, co: K.chebyshev_diffusion(q, e, co), (
                x["q"].reshape(b, s, c), x["ell"], x["coeffs"])),
            ("diffusion fwd", "xla"): (lambda q, cx: diffuse(cx.laplacian, q, plan, node_mask_BxS=cx.node_mask_BxS,
                                                             passthrough_mask_BxS=cx.passthrough_mask_BxS,
                                                             impl="xla"), (x["q"].reshape(b, s, c), ctx)),
            ("attention fwd+bwd", "pallas"): (grad_of(lambda q, k, v, m: K.masked_flash_attention(q, k, v, m)),
                                              (*qkvg, mask)),
            ("attention fwd+bwd", "xla"): (grad_of(lambda q, k, v, m: dot_product_attention(q, k, v, m)[0]),
                                           (*qkvg, mask)),
            ("attention fwd+bwd", "blocked"): (grad_of(lambda q, k, v, m: blocked_attention(q, k, v, m)),
                                               (*qkvg, mask)),
            ("GDKA fwd+bwd", "pallas"): (grad_of(lambda q, k, v, m, cx: pallas_gdka(
                q, k, v, m, cx.laplacian, cx.node_mask_BxS, cx.passthrough_mask_BxS, plan)), (*qkvg, mask, ctx)),
            ("GDKA fwd+bwd", "xla"): (grad_of(lambda q, k, v, m, cx: model_gdka(q, k, v, m, cx, plan, impl="xla")[0]),
                                      (*qkvg, mask, ctx)),
            ("GDKA fwd+bwd", "blocked"): (grad_of(
                lambda q, k, v, m, cx: model_gdka(q, k, v, m, cx, plan, impl="blocked")[0]), (*qkvg, mask, ctx)),
        }
        for (what, impl), (fn, operands) in cases.items():
            row = {"S": s, "B": b, "H": h, "D": d, "dtype": dtype.name, "what": what, "impl": impl}
            try:
                rec, _ = progs.run(fn, *operands)
                row.update(rec)
            except Exception as err:  # noqa: BLE001  (one failing program must not hide the others)
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# -------------------------------------------------------------------------------------------- step

def stage_step(args, progs: Programs) -> list:
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_model import realistic_batch, step_fn  # noqa: PLC0415

    from grn_jax.models import build_model, gremln_base, tiny  # noqa: PLC0415

    batch_size, seq_lens = (2, [64]) if args.quick else (8, args.seq_lens or [1024])
    variants = [("vanilla", "xla"), ("vanilla", "blocked"), ("diffusion", "xla"), ("diffusion", "blocked"),
                ("diffusion", "pallas")]
    rows = []
    for s in seq_lens:
        cfg0 = tiny(gene_vocab_size=256) if args.quick else gremln_base()
        batch = jax.device_put(realistic_batch(np.random.default_rng(0), batch_size, s, cfg0.gene_vocab_size,
                                               cfg0.n_bins))
        for attention, impl in variants:
            fields = dict(attention=attention, attention_impl=impl, attention_dropout_rate=0.0)
            cfg = tiny(gene_vocab_size=256, **fields) if args.quick else gremln_base(**fields)
            model = build_model(cfg)
            row = {"S": s, "B": batch_size, "attention": attention, "impl": impl,
                   "model": "tiny" if args.quick else "gremln_base"}
            try:
                params = jax.eval_shape(lambda k: model.init({"params": k}, batch, deterministic=True),
                                        jax.random.key(0))["params"]
                if not progs.lower_only:
                    params = jax.jit(lambda k: model.init({"params": k}, batch, deterministic=True))(
                        jax.random.key(0))["params"]
                rec, _ = progs.run(step_fn(model), params, batch)
                row.update(rec)
            except Exception as err:  # noqa: BLE001
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
        base = next((r for r in rows if r["S"] == s and r["attention"] == "vanilla" and r["impl"] == "xla"
                     and "median_ms" in r), None)
        for r in rows:
            if base and r["S"] == s and "median_ms" in r:
                r["ratio_to_vanilla_xla"] = round(r["median_ms"] / base["median_ms"], 3)
    return rows


# ---------------------------------------------------------------------------------------- reports

def render(stage: str, rows: list, meta: dict) -> str:
    lines = [f"# GPU check: {stage}", "", f"Command: `{meta['command']}`", "",
             f"Machine: {meta['device']} | jax {meta['jax']} | backend {meta['backend']}"
             + (" | LOWER-ONLY (nothing compiled or run)" if meta["lower_only"] else ""), ""]
    if not rows:
        return "\n".join(lines + ["(no rows)", ""])
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    lines.append("| " + " | ".join(keys) + " |")
    lines.append("|" + "---|" * len(keys))
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    return "\n".join(lines) + "\n"


STAGES = {"kernels": stage_kernels, "speed": stage_speed, "step": stage_step}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke run; the CPU test uses this)")
    ap.add_argument("--lower-only", action="store_true",
                    help="lower every program for CUDA and stop before compiling (works on a CPU machine)")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="speed stage dtype")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(RESULTS), help="results folder (gpu_<stage>.md / .json)")
    args = ap.parse_args(argv)

    import jax  # noqa: PLC0415  (after parsing: --help needs no JAX)

    if not args.lower_only and jax.default_backend() != "gpu":
        ap.error(f"the {args.stage} stage needs a GPU (backend is {jax.default_backend()!r}); "
                 f"pass --lower-only to lower for CUDA here")
    restore = None
    if args.lower_only:  # the model's Pallas dispatch refuses a CPU backend; lowering for CUDA is what we ask
        from grn_jax.kernels import dispatch  # noqa: PLC0415

        restore = dispatch.pallas_unavailable_reason
        dispatch.pallas_unavailable_reason = lambda **kw: None
    progs = Programs(args.lower_only, args.repeats)
    try:
        # float32 means float32 everywhere (XLA's GPU default for float32 dots is TF32).
        with jax.default_matmul_precision("highest" if args.dtype == "float32" else "default"):
            rows = STAGES[args.stage](args, progs)
    finally:
        if restore is not None:
            dispatch.pallas_unavailable_reason = restore
    dev = jax.devices()[0]
    meta = {"device": getattr(dev, "device_kind", str(dev)), "jax": jax.__version__, "backend": jax.default_backend(),
            "lower_only": args.lower_only,
            "command": " ".join(["python benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu_{args.stage}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / f"gpu_{args.stage}.md").write_text(render(args.stage, rows, meta))
    failed = [r for r in rows if r.get("ok") is False or "error" in r]
    print(f"wrote {out / f'gpu_{args.stage}.md'}: {len(rows)} rows, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
