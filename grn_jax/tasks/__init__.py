"""grn_jax.tasks."""
