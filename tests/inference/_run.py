"""A tiny pretraining run directory for the inference tests: toy counts -> shards -> checkpoint.

One sequence bucket (32) and one edge bucket (32), so every jitted function
compiles once per batch size. The network lists edges one way; gene g0..g19 form
a chain. Cells 0..N-1 have 6..20 expressed genes.
"""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from grn_jax.types import GeneNetwork

N_CELLS, N_GENES = 20, 30
SEQ = 32


def toy_adata(n_cells: int = N_CELLS, seed: int = 0, gene_names=None) -> anndata.AnnData:
    rng = np.random.default_rng(seed)
    genes = gene_names if gene_names is not None else [f"g{i}" for i in range(N_GENES)]
    dense = np.zeros((n_cells, len(genes)), np.float32)
    for i in range(n_cells):
        k = 6 + (i * 7) % 15
        cols = rng.choice(len(genes), size=k, replace=False)
        dense[i, cols] = rng.integers(1, 40, size=k)
    obs = pd.DataFrame({"cell_type": [f"t{i % 2}" for i in range(n_cells)]},
                       index=[f"cell{i}" for i in range(n_cells)])
    return anndata.AnnData(X=sp.csr_matrix(dense), obs=obs, var=pd.DataFrame(index=list(genes)))


def toy_network() -> GeneNetwork:
    reg = np.array([f"g{i}" for i in range(19)])
    tgt = np.array([f"g{i + 1}" for i in range(19)])
    return GeneNetwork(reg, tgt, np.linspace(0.5, 2.0, 19), np.zeros(19), {"method": "toy chain"})


def data_config():
    from grn_jax.data import DataConfig, QCConfig, TokenizeConfig

    return DataConfig(qc=QCConfig(min_counts=0, max_counts=None, min_genes=1),
                      tokenize=TokenizeConfig(n_bins=8, max_genes=SEQ - 1, max_edges=32, seq_buckets=(SEQ,),
                                              edge_buckets=(32,)))


def run_config(root: Path, *, attention: str = "diffusion", steps: int = 1):
    from grn_jax.config import build_run_config

    return build_run_config({
        "name": "toy",
        "data": {"shards": str(root / "shards"), "shuffle": False},
        "model": {"preset": "tiny", "n_bins": 8, "d_model": 16, "n_layers": 1, "n_heads": 2, "mlp_dim": 16,
                  "attention": attention},
        "train": {"run_dir": str(root / "run"), "steps": steps, "batch_size": 8, "eval_every": 0,
                  "checkpoint_every": 1, "tensorboard": False, "progress": False, "async_checkpoint": False,
                  "val_fraction": 0.0},
        "mesh": {"data": -1},
    })


def save_initial_checkpoint(cfg, step: int = 1, vocab: dict | None = None) -> None:
    """Write a checkpoint exactly as `pretrain` does (same Checkpointer, items, config and tokenisation
    record) holding freshly initialised parameters: the inference tests need a real run directory, not
    a trained model, and this skips compiling a training step."""
    import jax

    from grn_jax.config import resolve_vocab_size
    from grn_jax.models import build_model, example_batch
    from grn_jax.train import sharding as sh
    from grn_jax.train.checkpoint import Checkpointer
    from grn_jax.train.data import open_train_data
    from grn_jax.train.optim import make_optimizer
    from grn_jax.train.state import init_sharded_state

    data = open_train_data(cfg, process_index=0, process_count=1, log=lambda m: None)
    cfg = resolve_vocab_size(cfg, data.vocab_size)
    model = build_model(cfg.model)
    batch = example_batch(cfg.model, batch_size=1, seq_len=8, num_edges=8)
    mesh = sh.make_mesh(cfg.mesh)
    init = init_sharded_state(lambda r: model.init({"params": r}, batch, deterministic=True)["params"],
                              make_optimizer(cfg.train), mesh, jax.random.key(cfg.train.seed))
    run_dir = Path(cfg.train.run_dir)
    ckpt = Checkpointer(run_dir / "checkpoints", every=1, async_save=False)
    ckpt.save(step, init.state, data_state={}, config={**cfg.to_dict(), "tokenization": data.tokenization},
              vocab=data.vocab if vocab is None else vocab, force=True)
    ckpt.close()


def make_run(root: Path, *, attention: str = "diffusion", pretrain_steps: int = 0) -> dict:
    """Prepare shards and make a run directory (initial checkpoint, or `pretrain_steps` real steps)."""
    from grn_jax.data import prepare
    from grn_jax.graphs.network_io import write_network

    root = Path(root)
    adata = toy_adata()
    net_path = root / "net.tsv"
    write_network(toy_network(), net_path)
    prepare(adata, root / "shards", data_config(), graph=toy_network(), overwrite=True)
    cfg = run_config(root, attention=attention, steps=max(pretrain_steps, 1))
    if pretrain_steps:
        from grn_jax.train.loop import pretrain

        pretrain(cfg, log=lambda msg: None)
    else:
        save_initial_checkpoint(cfg)
    h5ad = root / "cells.h5ad"
    adata.write_h5ad(h5ad)
    return {"run": root / "run", "shards": root / "shards", "network": net_path, "h5ad": h5ad, "adata": adata}
