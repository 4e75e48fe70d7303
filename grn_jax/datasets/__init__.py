"""grn_jax.datasets."""

from grn_jax.datasets.simulate import SimulatedData, simulate, simulate_to_dir  # noqa: E402,F401
from grn_jax.datasets.pbmc import pbmc68k  # noqa: E402,F401
