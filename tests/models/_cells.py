"""Hand-built cells and padded TokenBatches for the model tests, plus numpy oracles."""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from grn_jax.types import GENE_CLS, GENE_PAD, BinSpec, GraphBatch, TokenBatch


@dataclasses.dataclass
class Cell:
    """One cell: gene ids and bins of its gene tokens (no CLS), edges over gene indices 0..n-1."""

    genes: list
    bins: list
    edges: list  # (sender_gene_index, receiver_gene_index, weight)
    cell_edges: list = dataclasses.field(default_factory=list)
    loss: list = dataclasses.field(default_factory=list)  # gene indices whose bin is masked
    targets: dict = dataclasses.field(default_factory=dict)

    def permuted(self, perm) -> "Cell":
        """Reorder gene tokens: new token i is old token perm[i]; edges relabelled."""
        inv = np.argsort(perm)
        relabel = [(int(inv[s]), int(inv[r]), w) for s, r, w in self.edges]
        relabel_c = [(int(inv[s]), int(inv[r]), w) for s, r, w in self.cell_edges]
        return Cell([self.genes[p] for p in perm], [self.bins[p] for p in perm], relabel, relabel_c,
                    [int(inv[i]) for i in self.loss], {int(inv[k]): v for k, v in self.targets.items()})


def make_batch(cells, seq_len: int, num_edges: int, n_bins: int, *, cell_graph: bool = False) -> TokenBatch:
    """Pad `cells` into a TokenBatch: CLS at 0, genes at 1..n, PAD after; edges at positions +1."""
    spec = BinSpec(n_bins)
    b = len(cells)
    gene_ids = np.full((b, seq_len), GENE_PAD, np.int32)
    bins = np.full((b, seq_len), spec.pad_id, np.int32)
    targets = np.zeros((b, seq_len), np.int32)
    loss_mask = np.zeros((b, seq_len), bool)
    token_mask = np.zeros((b, seq_len), bool)

    def graph(edge_lists):
        snd = np.zeros((b, num_edges), np.int32)
        rcv = np.zeros((b, num_edges), np.int32)
        w = np.zeros((b, num_edges), np.float32)
        m = np.zeros((b, num_edges), bool)
        for i, edges in enumerate(edge_lists):
            assert len(edges) <= num_edges
            for e, (s, r, wt) in enumerate(edges):
                snd[i, e], rcv[i, e], w[i, e], m[i, e] = s + 1, r + 1, wt, True
        return GraphBatch(senders=snd, receivers=rcv, weights=w, edge_mask=m)

    for i, c in enumerate(cells):
        n = len(c.genes)
        assert n + 1 <= seq_len
        gene_ids[i, 0], bins[i, 0], token_mask[i, : n + 1] = GENE_CLS, spec.cls_id, True
        gene_ids[i, 1: n + 1] = c.genes
        bins[i, 1: n + 1] = c.bins
        for g in c.loss:
            targets[i, g + 1] = c.targets.get(g, c.bins[g])
            bins[i, g + 1] = spec.mask_id
            loss_mask[i, g + 1] = True
    return TokenBatch(gene_ids=gene_ids, bins=bins, targets=targets, loss_mask=loss_mask, token_mask=token_mask,
                      graph=graph([c.edges for c in cells]),
                      cell_graph=graph([c.cell_edges for c in cells]) if cell_graph else None)


def random_cell(rng: np.random.Generator, n_genes: int, vocab: int, n_bins: int, n_edges: int,
                n_cell_edges: int = 0) -> Cell:
    genes = rng.choice(np.arange(3, vocab), size=n_genes, replace=False).tolist()
    bins = rng.integers(0, n_bins, size=n_genes).tolist()

    def edges(k):
        out = []
        while len(out) < k:
            s, r = rng.integers(0, n_genes, size=2)
            if s != r:
                out.append((int(s), int(r), float(rng.uniform(0.2, 2.0))))
        return out

    return Cell(genes, bins, edges(n_edges), edges(n_cell_edges))


def dense_laplacian_np(n: int, edges) -> np.ndarray:
    """L = I - D^-1/2 (W + W^T) D^-1/2 over n nodes, self-loops dropped, isolated L_ii = 1 (float64)."""
    w = np.zeros((n, n))
    for s, r, wt in edges:
        if s != r:
            w[s, r] += wt
    a = w + w.T
    d = a.sum(1)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    return np.eye(n) - inv[:, None] * a * inv[None, :]


def heat_kernel_np(n: int, edges, beta: float) -> np.ndarray:
    """exp(-beta L) by scipy.linalg.expm (the exact reference)."""
    return scipy.linalg.expm(-beta * dense_laplacian_np(n, edges))
