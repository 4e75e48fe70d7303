"""Pallas kernels (installed as `grn_jax.kernels`), each beside a pure-jnp reference."""
