"""grn_jax.datasets."""

from grn_jax.datasets.simulate import SimulatedData, simulate  # noqa: E402,F401
from grn_jax.datasets.pbmc import pbmc68k  # noqa: E402,F401
