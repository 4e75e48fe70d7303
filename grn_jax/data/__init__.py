"""grn_jax.data."""
