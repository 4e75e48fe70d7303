"""grn_jax.datasets."""
