"""grn_jax.resources."""
