"""Does the graph reach the computation? Coverage, density and diffusion strength of per-cell graphs.

`GraphDiagnostics` accumulates cells chunk by chunk (edges as 1-based token
positions, as the tokeniser and the shards store them) and reports:

- the fraction of gene tokens with at least one edge, and cells with none;
- edges per cell (median, p10, p90);
- cell types that share the pooled network instead of their own (named);
- on a seeded sample of cells, the spectrum of each cell's normalised Laplacian
  (DESIGN.md convention: symmetrised W + W^T, self-loops dropped, isolated
  genes have L_ii = 1), from which
    * the relative change of GDKA's queries, ||exp(-beta L)Q - exp(-beta)Q|| / ||Q||,
      in expectation over Gaussian queries: sqrt(sum_lambda (e^{-beta lambda} -
      e^{-beta})^2 / n_gene_tokens), pooled over the sample. Near 0 means GDKA is
      vanilla attention with queries scaled by e^{-beta};
    * the smallest non-zero eigenvalue lambda_min of each cell, and the GREmLN
      default beta = 1 / lambda_min (papers/gremln.txt A.5; `beta_from_lambda_min`).
Isolated genes contribute eigenvalue 1 exactly, e^{-beta} - e^{-beta} = 0, so the
spectra are computed over each cell's non-isolated genes only (dense `eigvalsh`).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

# dense eigvalsh work allowed per summary, in n^3 units: 32 cells of 1024 connected genes
# (~10 s on one core); a sample of bigger graphs is cut short, but never below MIN_SPECTRA cells
SPECTRUM_BUDGET = 32 * 1024**3
MIN_SPECTRA = 4
# eigenvalues below this count as zero (one per connected component); float64 eigvalsh of a
# normalised Laplacian is accurate to ~1e-13 here
ZERO_EIGENVALUE = 1e-8


def laplacian_spectrum(src, dst, weight) -> np.ndarray:
    """Eigenvalues (float64, ascending) of the normalised Laplacian over the non-isolated nodes of one graph."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    w = np.asarray(weight, np.float64)
    keep = (src != dst) & (w != 0)
    src, dst, w = src[keep], dst[keep], w[keep]
    if len(src) == 0:
        return np.zeros(0)
    nodes, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
    n = len(nodes)
    a = np.zeros((n, n))
    np.add.at(a, (inv[: len(src)], inv[len(src):]), w)
    a = a + a.T
    d = a.sum(axis=1)
    s = 1.0 / np.sqrt(d)
    lap = np.eye(n) - s[:, None] * a * s[None, :]
    return np.linalg.eigvalsh(lap)


def lambda_min_nonzero(eigs: np.ndarray) -> float:
    """Smallest eigenvalue above `ZERO_EIGENVALUE` (nan for a graph without edges)."""
    nz = eigs[eigs > ZERO_EIGENVALUE]
    return float(nz.min()) if len(nz) else float("nan")


def beta_from_lambda_min(lambda_mins: Sequence[float]) -> float:
    """GREmLN's default diffusion rate, 1 / lambda_min, with lambda_min the median over cells with edges."""
    lm = np.asarray([x for x in lambda_mins if np.isfinite(x)], np.float64)
    if len(lm) == 0:
        raise ValueError("diffusion_beta: auto needs cells with edges, but no sampled cell has any; "
                         "give a number (e.g. model.diffusion_beta=0.1) or a graph with edges")
    return float(1.0 / np.median(lm))


def shared_network_types(networks: Mapping) -> list:
    """Cell types whose network object is shared with another key (fallback types share the pooled one)."""
    groups: dict = {}
    for t, net in networks.items():
        groups.setdefault(id(net), []).append(str(t))
    pooled_key = "__pooled__"  # grn_jax.graphs.celltype_networks.POOLED
    return sorted(t for g in groups.values() if len(g) > 1 for t in g if t != pooled_key)


class GraphDiagnostics:
    """Accumulate cells' graphs (`add`), then `summary(beta)`; spectra on a seeded sample of `sample_cells`."""

    def __init__(self, sample_cells: int = 32, seed: int = 0):
        if sample_cells < 1:
            raise ValueError(f"sample_cells must be >= 1, got {sample_cells}")
        self.sample_cells = sample_cells
        self._rng = np.random.default_rng(seed)
        self._lengths, self._edges, self._covered = [], [], []
        self._sample: list = []  # (priority, n_tokens, src, dst, weight); the lowest priorities are kept

    def add(self, lengths, ptr, src, dst, weight) -> None:
        """Cells with `lengths[i]` gene tokens and edges `src/dst[ptr[i]:ptr[i+1]]` (positions 1..lengths[i])."""
        lengths = np.asarray(lengths, np.int64)
        ptr = np.asarray(ptr, np.int64)
        src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
        c = len(lengths)
        if len(ptr) != c + 1:
            raise ValueError(f"ptr has {len(ptr)} entries for {c} cells; expected {c + 1}")
        rows = np.repeat(np.arange(c), np.diff(ptr))
        width = int(lengths.max(initial=0)) + 2
        ends = np.unique(np.concatenate([rows * width + src, rows * width + dst]))
        covered = np.bincount(ends // width, minlength=c) if len(ends) else np.zeros(c, np.int64)
        self._lengths.append(lengths)
        self._edges.append(np.diff(ptr))
        self._covered.append(covered)
        pri = self._rng.random(c)
        cut = sorted(p for p, *_ in self._sample)[self.sample_cells - 1] if len(self._sample) >= self.sample_cells \
            else np.inf
        for i in np.flatnonzero(pri < cut):
            a, b = ptr[i], ptr[i + 1]
            self._sample.append((float(pri[i]), int(lengths[i]), src[a:b], dst[a:b], np.asarray(weight)[a:b]))
        self._sample = sorted(self._sample, key=lambda x: x[0])[: self.sample_cells]

    def summary(self, beta: Optional[float] = None, fell_back: Sequence[str] = ()) -> dict:
        if not self._lengths:
            raise ValueError("GraphDiagnostics.summary: no cells were added")
        lengths, edges, covered = (np.concatenate(x) for x in (self._lengths, self._edges, self._covered))
        tokens = int(lengths.sum())
        p10, p50, p90 = (float(v) for v in np.percentile(edges, [10, 50, 90]))
        spectra, work = [], 0
        for _, n, s, d, w in self._sample:  # in priority order: a uniform sample whatever the cut
            nodes = len(np.unique(np.concatenate([s, d]))) if len(s) else 0
            if len(spectra) >= MIN_SPECTRA and work + nodes**3 > SPECTRUM_BUDGET:
                break
            work += nodes**3
            spectra.append((n, laplacian_spectrum(s, d, w)))
        lmin = [lambda_min_nonzero(e) for _, e in spectra]
        finite = np.asarray([x for x in lmin if np.isfinite(x)])
        out = {
            "cells": int(len(lengths)),
            "gene_tokens": tokens,
            "gene_tokens_with_edge_fraction": float(covered.sum() / max(tokens, 1)),
            "cells_without_edges": int((edges == 0).sum()),
            "edges_per_cell": {"median": p50, "p10": p10, "p90": p90, "mean": float(edges.mean())},
            "fell_back_to_pooled": sorted(str(t) for t in fell_back),
            "sample_cells": len(spectra),
            "lambda_min_nonzero": ({"median": float(np.median(finite)), "p10": float(np.percentile(finite, 10)),
                                    "p90": float(np.percentile(finite, 90)), "cells": int(len(finite))}
                                   if len(finite) else None),
            "beta_auto": beta_from_lambda_min(lmin) if len(finite) else None,
        }
        if beta is not None:
            out["diffusion"] = {"beta": float(beta),
                                "query_rel_change": diffusion_rel_change([e for _, e in spectra],
                                                                         [n for n, _ in spectra], beta)}
        return out


def diffusion_rel_change(spectra: Sequence[np.ndarray], n_tokens: Sequence[int], beta: float) -> float:
    """E ||exp(-beta L)Q - exp(-beta)Q|| / ||Q|| over Gaussian Q, pooled over cells (n_tokens gene tokens each)."""
    num = sum(float(np.sum((np.exp(-beta * e) - np.exp(-beta)) ** 2)) for e in spectra)
    den = float(sum(n_tokens))
    return float(np.sqrt(num / den)) if den else 0.0


def format_graph_diagnostics(d: dict, what: str = "graph") -> str:
    """Log lines for a `GraphDiagnostics.summary`."""
    e = d["edges_per_cell"]
    lines = [f"{what}: {100 * d['gene_tokens_with_edge_fraction']:.1f} % of {d['gene_tokens']} gene tokens have an "
             f"edge; {d['cells_without_edges']} of {d['cells']} cells have none; edges per cell median "
             f"{e['median']:g} (p10 {e['p10']:g}, p90 {e['p90']:g})"]
    if d["fell_back_to_pooled"]:
        lines.append(f"{what}: {len(d['fell_back_to_pooled'])} cell type(s) use the pooled network, not their own: "
                     + ", ".join(d["fell_back_to_pooled"]))
    lm = d.get("lambda_min_nonzero")
    if lm:
        lines.append(f"{what}: smallest non-zero Laplacian eigenvalue median {lm['median']:.3g} (p10 {lm['p10']:.3g},"
                     f" p90 {lm['p90']:.3g}) over {lm['cells']} sampled cells; 1/lambda_min = {d['beta_auto']:.3g}")
    if "diffusion" in d:
        df = d["diffusion"]
        note = "  (GDKA ~ vanilla attention at temperature e^beta)" if df["query_rel_change"] < 0.05 else ""
        lines.append(f"{what}: at beta {df['beta']:g}, ||exp(-beta L)Q - exp(-beta)Q|| / ||Q|| = "
                     f"{df['query_rel_change']:.4f} (random queries, {d['sample_cells']} cells){note}")
    return "\n".join(lines)
