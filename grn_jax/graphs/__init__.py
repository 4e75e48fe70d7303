"""grn_jax.graphs."""

# --- graph core (issue 3): Laplacians, Chebyshev heat-kernel diffusion, exact references ---
from grn_jax.graphs.chebyshev import (  # noqa: E402
    ChebyshevPlan, chebyshev_coefficients, chebyshev_plan, fixed_order_heat_kernel_plan,
    heat_kernel_coefficients_closed_form, heat_kernel_plan, truncation_order)
from grn_jax.graphs.diffusion import chebyshev_apply, diffuse, shifted_matmul  # noqa: E402
from grn_jax.graphs.exact import apply_dense_filter, diffuse_exact, filter_matrix  # noqa: E402
from grn_jax.graphs.laplacian import dense_laplacian, graph_report, normalized_laplacian  # noqa: E402
# --- end graph core ---
