"""The one compatibility shim of the project: jraph 0.0.6 on current JAX.

jraph 0.0.6 calls `jax.tree_map` and `jax.tree_leaves`, which JAX removed in
0.6. Import jraph through `import_jraph()` (or `from grn_jax._compat import
jraph`) so the aliases exist first; they point at `jax.tree.map` /
`jax.tree.leaves` and are only added when missing.
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


jraph = import_jraph()
