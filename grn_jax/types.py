"""Shared types: the token-batch contract, bin/gene special tokens, gene networks.

Everything downstream (models, training, kernels) speaks these types, so they
live at the bottom of the dependency graph and import nothing from grn_jax.
The contract is documented in README.md ("Data contract") and DESIGN.md.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from flax import struct

# Gene vocabulary special tokens: fixed ids at the start of every vocabulary.
GENE_PAD, GENE_MASK, GENE_CLS = 0, 1, 2
GENE_SPECIAL_TOKENS = ("<pad>", "<mask>", "<cls>")


@dataclasses.dataclass(frozen=True)
class BinSpec:
    """Expression-bin token ids for `n_bins` expression bins.

    Bin 0 = not expressed, 1..n_bins-1 = per-cell quantiles of expressed genes;
    MASK, PAD and CLS follow the expression bins so the bin vocabulary is
    `n_bins + 3` wide and the bin-prediction head predicts `n_bins` classes.
    """

    n_bins: int = 100

    def __post_init__(self):
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2 (bin 0 + at least one expressed bin), got {self.n_bins}")

    @property
    def mask_id(self) -> int:
        return self.n_bins

    @property
    def pad_id(self) -> int:
        return self.n_bins + 1

    @property
    def cls_id(self) -> int:
        return self.n_bins + 2

    @property
    def vocab_size(self) -> int:
        return self.n_bins + 3


@struct.dataclass
class GraphBatch:
    """A batch of per-cell graphs over token positions (static edge budget E).

    senders/receivers index token positions 1..S-1 of their own cell (never the
    CLS at position 0); padded edge slots have `edge_mask == False` and weight 0.
    Edges may be given one way (regulator -> target): the Laplacian symmetrises.
    """

    senders: np.ndarray  # int32 [B, E]
    receivers: np.ndarray  # int32 [B, E]
    weights: np.ndarray  # float32 [B, E]
    edge_mask: np.ndarray  # bool [B, E]


@struct.dataclass
class TokenBatch:
    """The token-batch contract (DESIGN.md, "Data contract").

    All arrays have static, bucketed shapes [B, S] / [B, E]. `graph` is the
    cell-type GRN restricted to the cell's tokens (GREmLN); `cell_graph` is the
    optional cell-specific GRN (GRNFormer's second scale); `coexpr_graph` the
    optional dataset co-expression partner pairs among the cell's tokens, the pool
    co-expression edge perturbation draws from in training (never message-passed).
    """

    gene_ids: np.ndarray  # int32 [B, S]; position 0 is CLS
    bins: np.ndarray  # int32 [B, S]; expression bin or MASK/PAD/CLS id
    targets: np.ndarray  # int32 [B, S]; true bins where loss_mask
    loss_mask: np.ndarray  # bool [B, S]
    token_mask: np.ndarray  # bool [B, S]; CLS + genes
    graph: GraphBatch
    cell_graph: Optional[GraphBatch] = None
    coexpr_graph: Optional[GraphBatch] = None

    @property
    def batch_size(self) -> int:
        return int(self.gene_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.gene_ids.shape[1])


def validate_token_batch(batch: TokenBatch) -> None:
    """Raise ValueError naming the first field whose shape or dtype breaks the contract."""
    b, s = np.shape(batch.gene_ids)
    want = {
        "gene_ids": ((b, s), np.int32),
        "bins": ((b, s), np.int32),
        "targets": ((b, s), np.int32),
        "loss_mask": ((b, s), np.bool_),
        "token_mask": ((b, s), np.bool_),
    }
    for name, (shape, dtype) in want.items():
        arr = getattr(batch, name)
        if tuple(np.shape(arr)) != shape or np.dtype(arr.dtype) != np.dtype(dtype):
            raise ValueError(
                f"TokenBatch.{name} must be {np.dtype(dtype).name}{list(shape)}, "
                f"got {np.dtype(arr.dtype).name}{list(np.shape(arr))}")
    for gname in ("graph", "cell_graph", "coexpr_graph"):
        g = getattr(batch, gname)
        if g is None:
            continue
        e = np.shape(g.senders)[1] if np.ndim(g.senders) == 2 else -1
        gwant = {"senders": np.int32, "receivers": np.int32, "weights": np.float32, "edge_mask": np.bool_}
        for name, dtype in gwant.items():
            arr = getattr(g, name)
            if tuple(np.shape(arr)) != (b, e) or np.dtype(arr.dtype) != np.dtype(dtype):
                raise ValueError(
                    f"TokenBatch.{gname}.{name} must be {np.dtype(dtype).name}[{b}, E], "
                    f"got {np.dtype(arr.dtype).name}{list(np.shape(arr))}")


@dataclasses.dataclass(frozen=True)
class GeneNetwork:
    """A directed, weighted gene network in the ARACNe output format.

    Columns `regulator, target, mi, pvalue` (mi doubles as the edge weight).
    `params` records what made it (method, thresholds, seeds) and travels with
    every file written from it.
    """

    regulator: np.ndarray  # str [E]
    target: np.ndarray  # str [E]
    mi: np.ndarray  # float [E]
    pvalue: np.ndarray  # float [E]
    params: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        n = len(self.regulator)
        for name in ("target", "mi", "pvalue"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"GeneNetwork.{name} has {len(getattr(self, name))} entries, regulator has {n}")

    @property
    def num_edges(self) -> int:
        return len(self.regulator)

    @property
    def genes(self) -> np.ndarray:
        return np.unique(np.concatenate([np.asarray(self.regulator), np.asarray(self.target)]))
