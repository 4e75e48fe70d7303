"""A tiny pretraining run on simulated data (known GRN, knockouts, cell types) for the task tests.

30 genes, one sequence bucket (32) and one edge bucket (64): every jitted
function compiles once per batch size. Checkpoints hold freshly initialised
parameters (written exactly as `pretrain` writes them): the tests check the
tasks' plumbing, metrics and baselines, not that a model is good.
"""

from __future__ import annotations

from pathlib import Path

from tests.inference._run import save_initial_checkpoint

SEQ, EDGES = 32, 64


def data_config():
    from grn_jax.data import DataConfig, QCConfig, TokenizeConfig

    return DataConfig(qc=QCConfig(min_counts=0, max_counts=None, min_genes=1),
                      tokenize=TokenizeConfig(n_bins=8, max_genes=SEQ - 1, max_edges=EDGES, seq_buckets=(SEQ,),
                                              edge_buckets=(EDGES,)))


def simulated(n_cells: int = 160, seed: int = 0):
    from grn_jax.datasets import simulate

    return simulate(n_cells=n_cells, n_genes=30, n_tfs=6, n_cell_types=3, knockouts=3, knockout_fraction=0.5,
                    seed=seed)


def pretraining_cells(n_cells: int = 160, seed: int = 1):
    """Other simulated cells (same genes, names `pre0..`) to pretrain on, so every cell of `simulated()` is unseen."""
    adata = simulated(n_cells=n_cells, seed=seed).adata
    adata.obs_names = [f"pre{i}" for i in range(adata.n_obs)]
    return adata


def make_run(root: Path, sim, *, attention: str = "diffusion", name: str = "run", model: dict | None = None,
             train_adata=None, val_fraction: float = 0.0) -> dict:
    """Shards from `train_adata` (default `sim.adata`; `sim`'s true network as every cell's graph) and an
    initial checkpoint; `val_fraction` of the shards' cells are the run's validation split."""
    from grn_jax.config import build_run_config
    from grn_jax.data import prepare
    from grn_jax.graphs.network_io import write_network

    root = Path(root)
    net_path = root / "net.tsv"
    if not net_path.exists():
        write_network(sim.network, net_path)
    shards = root / "shards"
    if not (shards / "manifest.json").exists():  # runs of one root share the tokenised cells
        prepare(sim.adata if train_adata is None else train_adata, shards, data_config(), graph=sim.network,
                overwrite=True)
    cfg = build_run_config({
        "name": name, "data": {"shards": str(shards), "shuffle": False},
        "model": {"preset": "tiny", "n_bins": 8, "d_model": 16, "n_layers": 1, "n_heads": 2, "mlp_dim": 16,
                  "attention": attention, **(model or {})},
        "train": {"run_dir": str(root / name), "steps": 1, "batch_size": 8, "eval_every": 0,
                  "checkpoint_every": 1, "tensorboard": False, "progress": False, "async_checkpoint": False,
                  "val_fraction": val_fraction},
        "mesh": {"data": -1},
    })
    save_initial_checkpoint(cfg)
    return {"run": root / name, "network": net_path, "config": cfg}
