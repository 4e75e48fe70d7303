"""grn_jax.inference."""
