"""The compatibility shims of the project: jraph 0.0.6 on current JAX; shard_map across JAX versions.

jraph 0.0.6 calls `jax.tree_map` and `jax.tree_leaves`, which JAX removed in
0.6. Import jraph through `import_jraph()` (or `from grn_jax._compat import
jraph`, resolved on first use) so the aliases exist first; they point at
`jax.tree.map` / `jax.tree.leaves` and are only added when missing.

`shard_map` and `get_abstract_mesh` are the spellings of JAX 0.10 and 0.11
(`jax.shard_map`, `jax.sharding.get_abstract_mesh`), with the older
`jax.experimental.shard_map.shard_map` (whose replication check is `check_rep`)
as the fallback, so `grn_jax.kernels` runs on either line.
"""

from __future__ import annotations

import jax

_ALIASES = {
    "tree_map": jax.tree.map,
    "tree_leaves": jax.tree.leaves,
    "tree_flatten": jax.tree.flatten,
    "tree_unflatten": jax.tree.unflatten,
    "tree_structure": jax.tree.structure,
}


def install_jax_tree_aliases() -> list[str]:
    """Add the removed `jax.tree_*` names; returns the names it had to add."""
    added = []
    for name, fn in _ALIASES.items():
        if not hasattr(jax, name):
            setattr(jax, name, fn)
            added.append(name)
    return added


def import_jraph():
    """Import jraph with the aliases in place."""
    install_jax_tree_aliases()
    import jraph as _jraph  # noqa: PLC0415  (must follow the aliases)

    return _jraph


def __getattr__(name: str):
    # `from grn_jax._compat import jraph` imports jraph only then: the kernels' shard_map shim
    # below must not need jraph (the GPU machine's image has none).
    if name == "jraph":
        value = import_jraph()
        globals()["jraph"] = value
        return value
    raise AttributeError(f"module 'grn_jax._compat' has no attribute {name!r}")


def shard_map(fn, *, mesh, in_specs, out_specs, check_vma: bool = True, axis_names=None):
    """`jax.shard_map(fn, mesh=..., in_specs=..., out_specs=..., check_vma=..., axis_names=...)` on any supported JAX.

    `axis_names`: the mesh axes the body is manual over (default all); the others stay automatic.
    """
    if hasattr(jax, "shard_map"):
        extra = {} if axis_names is None else {"axis_names": frozenset(axis_names)}
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma, **extra)
    from jax.experimental.shard_map import shard_map as _legacy  # noqa: PLC0415  (JAX < 0.7)

    extra = {} if axis_names is None else {"auto": frozenset(mesh.axis_names) - frozenset(axis_names)}
    return _legacy(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=check_vma, **extra)


def get_abstract_mesh():
    """The mesh in context (`jax.set_mesh` / `jax.sharding.use_abstract_mesh`), or None when there is none."""
    getter = getattr(jax.sharding, "get_abstract_mesh", None)
    if getter is None:
        return None
    mesh = getter()
    return None if mesh is None or mesh.empty else mesh
