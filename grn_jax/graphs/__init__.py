"""grn_jax.graphs."""
