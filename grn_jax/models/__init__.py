"""grn_jax.models."""
