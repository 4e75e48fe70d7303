"""Tiny prepared shards for end-to-end training tests: random counts + a random GRN through `prepare`."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import scipy.sparse as sp

from grn_jax.data.config import DataConfig, IngestConfig, QCConfig, ShardConfig, TokenizeConfig
from grn_jax.data.pipeline import prepare
from grn_jax.types import GeneNetwork

N_CELLS, N_GENES, N_BINS = 96, 24, 8


def make_shards(out_dir: Path, seed: int = 0) -> Path:
    """Prepare N_CELLS random cells over N_GENES genes (GRN of 40 random edges) into `out_dir`."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(1.0, 3.0, size=(1, N_GENES))
    x = rng.poisson(lam, size=(N_CELLS, N_GENES)).astype(np.float32)
    genes = [f"G{i}" for i in range(N_GENES)]
    adata = anndata.AnnData(X=sp.csr_matrix(x))
    adata.var_names = genes
    adata.obs_names = [f"c{i}" for i in range(N_CELLS)]
    src = rng.integers(0, N_GENES, 40)
    dst = (src + rng.integers(1, N_GENES, 40)) % N_GENES
    net = GeneNetwork(regulator=np.array(genes)[src], target=np.array(genes)[dst],
                      mi=rng.uniform(0.1, 1.0, 40), pvalue=np.zeros(40))
    cfg = DataConfig(ingest=IngestConfig(), qc=QCConfig(min_counts=1, max_counts=None, min_genes=2),
                     tokenize=TokenizeConfig(n_bins=N_BINS, max_genes=N_GENES, min_seq_bucket=16,
                                             min_edge_bucket=16),
                     shards=ShardConfig(cells_per_shard=64)).validate()
    prepare(adata, out_dir, cfg, graph=net, overwrite=True, dataset_name="tests/train random counts")
    return Path(out_dir)
