"""The device mesh and the ONE table mapping logical axis names to mesh axes.

Models name logical axes only (`grn_jax.axes`); this file decides where they
live: cells over data x fsdp, parameters and optimiser state over fsdp, heads
and MLP width over tensor. JAX's SPMD partitioner does the rest. Inside one
batch shard (train.deterministic_reductions) `PER_SHARD_AXIS_RULES` is the
same table less the batch axes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from grn_jax import axes
from grn_jax.train.config import MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_MESH_AXES = ("data", "fsdp")

# Logical -> mesh rules, in priority order (flax assigns each mesh axis at most
# once per array, first rule wins: an activation [batch, genes, embed] puts
# batch on (data, fsdp) and leaves embed unsharded; a parameter [vocab, embed]
# puts embed on fsdp).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    (axes.BATCH, BATCH_MESH_AXES),
    (axes.HEADS, "tensor"),
    (axes.MLP, "tensor"),
    (axes.EMBED, "fsdp"),
    (axes.GENES, None),
    (axes.HEAD_DIM, None),
    (axes.VOCAB, None),
    (axes.EDGES, None),
    (axes.CLASSES, None),
)


def _without_batch_axes(target):
    names = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    kept = tuple(n for n in names if n not in BATCH_MESH_AXES)
    return None if not kept else (kept[0] if len(kept) == 1 else kept)


# The table inside one batch shard (`grn_jax.train.step` with train.deterministic_reductions): data and fsdp
# are already split by the shard_map around the computation, so no logical axis may name them there;
# heads / mlp keep tensor.
PER_SHARD_AXIS_RULES: tuple[tuple[str, Any], ...] = tuple(
    (name, _without_batch_axes(target)) for name, target in LOGICAL_AXIS_RULES)


def resolve_mesh_shape(cfg: MeshConfig, n_devices: int) -> dict:
    """Mesh axis sizes with the -1 entry filled so that their product is `n_devices`."""
    sizes = cfg.as_dict()
    known = math.prod(s for s in sizes.values() if s != -1)
    fill = [k for k, s in sizes.items() if s == -1]
    if fill:
        if n_devices % known:
            raise ValueError(
                f"mesh: fixed axes {sizes} multiply to {known}, which does not divide the {n_devices} "
                f"available devices; choose sizes whose product divides {n_devices}")
        sizes[fill[0]] = n_devices // known
    elif known != n_devices:
        raise ValueError(
            f"mesh: {sizes} needs {known} devices but {n_devices} are available; "
            f"set one axis to -1 to fill, or change the sizes")
    return sizes


def make_mesh(cfg: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A Mesh with axes (data, fsdp, tensor) over `devices` (default: all devices, all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    if len(devices) == len(jax.devices()):
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    else:
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def logical_to_sharding(logical_specs: Any, mesh: Mesh) -> Any:
    """Map a tree of logical PartitionSpecs to NamedShardings on `mesh` with the rules table."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


@contextlib.contextmanager
def rules_in_force(mesh: Optional[Mesh] = None):
    """Context in which `nn.with_logical_constraint` is live: the rules table, and `mesh` as the abstract mesh.

    Flax turns a logical constraint into `lax.with_sharding_constraint` only
    when axis rules are set AND a mesh is in context; without both every
    activation annotation in `grn_jax.models` is silently a no-op. With
    `mesh=None` only the rules are set (a mesh the caller has entered is used).
    """
    with contextlib.ExitStack() as stack:
        if mesh is not None:
            stack.enter_context(jax.sharding.use_abstract_mesh(mesh.abstract_mesh))
        stack.enter_context(nn.logical_axis_rules(LOGICAL_AXIS_RULES))
        yield


def with_rules(fn, mesh: Optional[Mesh] = None):
    """`fn` traced inside `rules_in_force(mesh)`: wrap a step before `jax.jit` so its activations are sharded.

    The contexts are entered inside the traced call (not around `jax.jit`), so
    a re-trace for a new shape or a later `.lower()` sees them too.
    """
    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with rules_in_force(mesh):
            return fn(*args, **kwargs)
    return traced


@contextlib.contextmanager
def per_shard_rules_in_force():
    """`PER_SHARD_AXIS_RULES` in force: for code inside a shard_map that is manual over the batch axes."""
    with nn.logical_axis_rules(PER_SHARD_AXIS_RULES):
        yield


def fit_sharding_to_shape(sharding: NamedSharding, shape: Sequence[int]) -> tuple[NamedSharding, int]:
    """Drop mesh axes from dimensions they do not divide (e.g. a 3-wide bias on tensor=2).

    Such dimensions are replicated instead; returns (sharding, number of dimensions dropped).
    """
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    mesh_shape = sharding.mesh.shape
    fitted, dropped = [], 0
    for dim, entry in zip(shape, spec):
        names = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
        size = math.prod(mesh_shape[n] for n in names)
        keep = size <= 1 or dim % size == 0
        fitted.append(entry if keep else None)
        dropped += not keep
    return NamedSharding(sharding.mesh, P(*fitted)), dropped


FSDP_FALLBACK_MIN_ELEMENTS = 1 << 14  # parameters at least this big are always split over fsdp somewhere


def add_fsdp_fallback(sharding: NamedSharding, shape: Sequence[int]) -> NamedSharding:
    """Split a large parameter that its annotations leave whole over `fsdp` along its largest fitting dimension.

    The rules shard parameters over fsdp through their `embed` dimension; a
    table without one (e.g. [vocab, mlp]) would otherwise be replicated on every
    fsdp rank. The largest dimension whose size the combined axes divide takes
    fsdp (after any axis it already has); small parameters stay as they are.
    """
    mesh = sharding.mesh
    n = mesh.shape.get("fsdp", 1)
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    used = {a for e in spec if e is not None for a in ((e,) if isinstance(e, str) else e)}
    if n <= 1 or "fsdp" in used or math.prod(shape) < FSDP_FALLBACK_MIN_ELEMENTS:
        return sharding
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        names = () if spec[dim] is None else ((spec[dim],) if isinstance(spec[dim], str) else tuple(spec[dim]))
        if shape[dim] % (math.prod(mesh.shape[a] for a in names) * n) == 0:
            spec[dim] = names + ("fsdp",) if names else "fsdp"
            return NamedSharding(mesh, P(*spec))
    return sharding


def param_shardings(abstract_boxed_params: Any, mesh: Mesh) -> tuple[Any, int]:
    """NamedShardings for (unboxed) parameters from the logical annotations of boxed abstract params.

    Returns (shardings, n_unfitted): parameters without annotations are
    replicated; n_unfitted counts dimensions left replicated because the mesh
    axis does not divide them.
    """
    specs = nn.get_partition_spec(abstract_boxed_params)
    shardings = logical_to_sharding(specs, mesh)
    shapes = nn.unbox(abstract_boxed_params)
    n_unfitted = 0
    out = []
    flat_s, treedef = jax.tree_util.tree_flatten(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    flat_p = treedef.flatten_up_to(shapes)
    flat_logical = treedef.flatten_up_to(specs)
    paths = [jax.tree_util.keystr(k, simple=True, separator="/")
             for k, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]]
    unfit: dict = {}
    for s, p, logical, path in zip(flat_s, flat_p, flat_logical, paths):
        fitted, dropped = fit_sharding_to_shape(s, p.shape)
        n_unfitted += dropped
        out.append(add_fsdp_fallback(fitted, p.shape))
        if dropped:
            for dim, (want, got) in enumerate(zip(list(s.spec) + [None] * len(p.shape), fitted.spec)):
                if want is not None and got is None:
                    name = logical[dim] if logical is not None and dim < len(logical) else None
                    unfit.setdefault((name, p.shape[dim], want), []).append(path)
    for (name, size, mesh_axes), params in unfit.items():
        warnings.warn(unfit_message(name, size, mesh_axes, mesh, params), stacklevel=2)
    return jax.tree_util.tree_unflatten(treedef, out), n_unfitted


_CONFIG_FIELD = {axes.HEADS: "model.n_heads", axes.MLP: "model.mlp_dim", axes.EMBED: "model.d_model",
                 axes.HEAD_DIM: "model.d_model / model.n_heads"}


def unfit_message(logical_name, size: int, mesh_axes, mesh: Mesh, params: Sequence[str]) -> str:
    """The warning for a parameter dimension that its mesh axis does not divide (it is replicated instead)."""
    names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    n = math.prod(mesh.shape[a] for a in names)
    axis_text = " x ".join(f"{a}={mesh.shape[a]}" for a in names)
    field = _CONFIG_FIELD.get(logical_name)
    fix = (f"choose {field} divisible by {n}, or change mesh.{names[0]}" if field
           else f"or change mesh.{names[0]}")
    shown = ", ".join(params[:3]) + (f" and {len(params) - 3} more" if len(params) > 3 else "")
    return (f"sharding: dimension {logical_name!r} of size {size} is not divisible by mesh axis {axis_text}; "
            f"{len(params)} parameter(s) ({shown}) keep it replicated on that axis (no memory saving there); {fix}")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (cell) dimension over data x fsdp; everything else local."""
    return NamedSharding(mesh, P(BATCH_MESH_AXES))


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
    """A tree of `batch_sharding(mesh)` matching `batch` (e.g. a TokenBatch)."""
    s = batch_sharding(mesh)
    return jax.tree_util.tree_map(lambda _: s, batch)


def n_batch_shards(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_MESH_AXES)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assemble this host's numpy batch slice into globally sharded jax Arrays.

    On one host the local batch is the global batch; on many hosts each host
    passes only the cells it read (its data shard).
    """
    s = batch_sharding(mesh)
    if jax.process_count() == 1:  # slice on the host: no per-device slicing programs to compile
        return jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x), s), local_batch)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(s, np.asarray(x)), local_batch)
