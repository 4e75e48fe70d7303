"""grn_jax.train."""
