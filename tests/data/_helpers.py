"""Small synthetic inputs for the data-pipeline tests."""

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp


def toy_adata(n_cells=60, n_genes=40, density=0.5, seed=0, n_types=3, max_count=30) -> anndata.AnnData:
    rng = np.random.default_rng(seed)
    dense = rng.integers(1, max_count, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    obs = pd.DataFrame({"cell_type": [f"t{i % n_types}" for i in range(n_cells)]},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame({"ensembl": [f"ENSG{i:05d}" for i in range(n_genes)]}, index=[f"g{i}" for i in range(n_genes)])
    return anndata.AnnData(X=sp.csr_matrix(dense.astype(np.float32)), obs=obs, var=var)
