"""Bundled real data: scanpy's `pbmc68k_reduced` with its integer counts recovered.

scanpy ships 700 PBMCs x 765 genes whose `raw.X` is log1p of counts normalised
to 1e4 per cell (using the cell's full-transcriptome total in `obs.n_counts`).
Inverting that, `rint(expm1(raw.X) * n_counts / 1e4)`, gives back integer
counts; we check the values before rounding are integral to within
`max_deviation` and record the deviation in `uns["grn_jax"]`.
"""

from __future__ import annotations

import anndata
import numpy as np
import scipy.sparse as sp

CELL_TYPE_KEY = "cell_type"


def pbmc68k(max_deviation: float = 0.25) -> anndata.AnnData:
    """700 PBMCs x 765 genes, integer counts (CSR int32) in X, `obs["cell_type"]` from `bulk_labels`.

    `uns["grn_jax"]["count_recovery"]` reports how far the recovered values were
    from integers before rounding (max and 99.9th percentile of |x - rint(x)|).
    Raises ValueError if any value is further than `max_deviation` from an
    integer (the bundled file is not what this function expects).
    """
    try:
        import scanpy as sc
    except ImportError as e:  # pragma: no cover - scanpy is in the [data] and [test] extras
        raise ImportError("pbmc68k() needs scanpy: pip install 'grn-jax[data]'") from e
    src = sc.datasets.pbmc68k_reduced()
    if src.raw is None or "n_counts" not in src.obs or "bulk_labels" not in src.obs:
        raise ValueError("scanpy's pbmc68k_reduced lacks raw / obs.n_counts / obs.bulk_labels; cannot recover counts")
    log_norm = sp.csr_matrix(src.raw.X, dtype=np.float64)
    n_counts = np.asarray(src.obs["n_counts"], np.float64)
    rows = np.repeat(np.arange(log_norm.shape[0]), np.diff(log_norm.indptr))
    values = np.expm1(log_norm.data) * n_counts[rows] / 1e4
    rounded = np.rint(values)
    dev = np.abs(values - rounded)
    worst = int(np.argmax(dev)) if dev.size else 0
    if dev.size and dev[worst] > max_deviation:
        raise ValueError(f"recovered counts are not integral: cell {int(rows[worst])}, gene "
                         f"{src.raw.var_names[log_norm.indices[worst]]!r} gives {values[worst]:.4f}; "
                         f"the bundled pbmc68k_reduced differs from the expected log1p(CP10k) encoding")
    counts = sp.csr_matrix((rounded.astype(np.int32), log_norm.indices.copy(), log_norm.indptr.copy()),
                           shape=log_norm.shape)
    counts.eliminate_zeros()
    obs = src.obs[["bulk_labels", "n_counts", "louvain"]].copy()
    obs[CELL_TYPE_KEY] = obs["bulk_labels"].astype(str).astype("category")
    adata = anndata.AnnData(X=counts, obs=obs, var=src.raw.var.copy())
    adata.uns["grn_jax"] = {
        "source": "scanpy.datasets.pbmc68k_reduced (raw.X)",
        "count_recovery": {
            "formula": "rint(expm1(raw.X) * obs.n_counts / 1e4)",
            "max_abs_deviation": float(dev.max()) if dev.size else 0.0,
            "p999_abs_deviation": float(np.quantile(dev, 0.999)) if dev.size else 0.0,
            "values_rounded_to_zero": int((rounded == 0).sum()),
        },
    }
    return adata
