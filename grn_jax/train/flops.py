"""FLOPs of a step counted from its jaxpr, with every loop body multiplied by its trip count.

XLA's `cost_analysis()` counts the body of a while loop once, so a scanned
layer stack, `grad_accum` micro-batches and the Chebyshev recurrence are all
undercounted (by ~12x on the shipped configs). Here the traced program itself
is walked: `scan` bodies count `length` times (a static `fori_loop` is a scan),
`cond` counts its most expensive branch, a `shard_map` body (local shapes) counts
once per shard, remat recomputation counts where it appears in the backward pass. Matrix products count 2 x M x N x K; elementwise
arithmetic and reductions count one FLOP per element (HloCostAnalysis' rule).
What cannot be counted (a `while_loop` of unknown trip count beyond its body
once, Pallas or FFI kernels) is listed in `uncounted`, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
from jax.extend import core as jcore

# One FLOP per output element (HloCostAnalysis counts transcendentals apart; here they are FLOPs too).
_ELEMENTWISE = frozenset({
    "add", "add_any", "sub", "mul", "div", "rem", "neg", "max", "min", "abs", "sign", "pow", "integer_pow",
    "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sqrt", "rsqrt", "cbrt", "erf", "erfc",
    "erf_inv", "sin", "cos", "tan", "atan2", "square", "reciprocal", "select_n", "clamp", "floor", "ceil",
    "round", "nextafter", "is_finite",
})
# One FLOP per input element.
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
                         "cumsum", "cumprod", "cummax", "cumlogsumexp", "reduce_precision"})
_OPAQUE = frozenset({"pallas_call", "ffi_call", "custom_call", "pure_callback", "io_callback"})


@dataclasses.dataclass
class FlopCount:
    """FLOPs of one call of a function: matmul (`dot`) and elementwise/reduction (`other`) parts."""

    dot: int = 0
    other: int = 0
    uncounted: dict = dataclasses.field(default_factory=dict)  # primitive -> occurrences

    @property
    def total(self) -> int:
        return self.dot + self.other

    def add(self, other: "FlopCount", times: int = 1) -> None:
        self.dot += times * other.dot
        self.other += times * other.other
        for k, v in other.uncounted.items():
            self.uncounted[k] = self.uncounted.get(k, 0) + times * v


def _size(aval) -> int:
    shape = getattr(aval, "shape", ())
    return int(math.prod(shape))


def _dot_flops(eqn) -> int:
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    (_, rc), (_, rb) = eqn.params["dimension_numbers"]
    free_rhs = math.prod(d for i, d in enumerate(rhs.shape) if i not in rc and i not in rb)
    return 2 * _size(lhs) * int(free_rhs)


def _sub_jaxprs(value) -> list:
    if isinstance(value, jcore.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jcore.Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def _manual_shards(params) -> int:
    """How many shards a shard_map body runs as: the product of its manual mesh axes' sizes."""
    mesh = params["mesh"]
    manual = params.get("newly_manual_axes", params.get("manual_axes"))  # JAX 0.10 / earlier spellings
    if manual is None:
        manual = set(mesh.axis_names) - set(params.get("auto", ()))
    return math.prod(dict(mesh.shape)[a] for a in manual)


def _count_jaxpr(jaxpr) -> FlopCount:
    out = FlopCount()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            out.dot += _dot_flops(eqn)
        elif name == "conv_general_dilated":  # not used by the models; counted as its output x window
            rhs = eqn.invars[1].aval
            out.dot += 2 * _size(eqn.outvars[0].aval) * int(math.prod(rhs.shape[1:]))
        elif name in _ELEMENTWISE:
            out.other += sum(_size(v.aval) for v in eqn.outvars)
        elif name in _REDUCTIONS:
            out.other += _size(eqn.invars[0].aval)
        elif name == "scan":
            out.add(_count_jaxpr(eqn.params["jaxpr"].jaxpr), times=int(eqn.params["length"]))
        elif name == "cond":
            branches = [_count_jaxpr(b.jaxpr) for b in eqn.params["branches"]]
            out.add(max(branches, key=lambda c: c.total))
        elif name == "while":
            out.add(_count_jaxpr(eqn.params["body_jaxpr"].jaxpr))
            out.add(_count_jaxpr(eqn.params["cond_jaxpr"].jaxpr))
            out.uncounted["while (body counted once)"] = out.uncounted.get("while (body counted once)", 0) + 1
        elif name == "shard_map":  # the body holds one shard's shapes: it runs once per shard of its manual axes
            out.add(_count_jaxpr(_sub_jaxprs(eqn.params["jaxpr"])[0]), times=_manual_shards(eqn.params))
        elif name in _OPAQUE:
            out.uncounted[name] = out.uncounted.get(name, 0) + 1
        else:  # pjit, remat, custom_jvp/vjp calls, ...: whatever sub-programs they hold
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    out.add(_count_jaxpr(sub))
    return out


def count_flops(fn, *args: Any, **kwargs: Any) -> FlopCount:
    """FLOPs of one call `fn(*args, **kwargs)` (arrays or ShapeDtypeStructs), for the global shapes.

    Traced (not compiled) with the XLA diffusion path, so the native CPU kernel's
    FFI call does not hide the Chebyshev recurrence. Divide by the device count
    for a per-device figure under an even SPMD split.
    """
    from grn_jax.graphs.diffusion import portable_impl  # noqa: PLC0415  (train -> graphs, one way)

    with portable_impl():
        closed = jax.make_jaxpr(fn)(*args, **kwargs)
    return _count_jaxpr(closed.jaxpr)
