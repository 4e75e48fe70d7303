"""Masked edge prediction on held-out cells (papers/gremln.txt §4.3, Figures 3-4, Table 2).

For each cell of the (held-out) data, tokenised exactly as in training with its
regulatory graph: 15 % of its undirected edges are hidden (each cell's choice drawn
from its own seeded generator, so it never depends on batch-mates) and the frozen
model runs on the *incomplete* graph. Candidate pairs are the hidden edges
(label 1) and as many random gene pairs of the same cell that are not edges of its
full graph (label 0). The predictor f(i, j, Ã, H_i, H_j) is a logistic regression
on [H_i * H_j, |H_i - H_j|, deg_Ã(i) + deg_Ã(j), deg_Ã(i) * deg_Ã(j), common
Ã-neighbours], trained on the pairs of a random part of the cells and scored on the
pairs of the others (disjoint cells): AUROC and average precision with percentile
bootstrap intervals over test cells.

Node features H, one method each, all on the same pairs:
- `grn_jax`: the checkpoint's final hidden state of each gene token;
- `vanilla`: the same for a vanilla-attention checkpoint (the graph ablation);
- `expression`: raw expression — the gene's log-normalised value in the cell and its
  expression profile over the training cells, reduced by PCA to the model width;
- `graph_only`: no node features (the Ã terms alone): what the embeddings add;
- `random_init`: the checkpoint's architecture and seed at initialisation
  (`grn_jax.tasks.controls`): what pretraining added.

Only cells pretraining never trained on are evaluated, and no cell's graph is chosen
by an obs label (pooled network or GREmLN kNN graph integration).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional, Union

import anndata
import jax
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve, roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from grn_jax.inference.checkpoint import Pretrained
from grn_jax.inference.graph_sources import GraphSpec
from grn_jax.tasks.controls import (RANDOM_INIT, check_label_free_graph, check_reference_disjoint,
                                    random_init_model, unseen_mask)
from grn_jax.tasks.features import load_checkpoint, read_data
from grn_jax.tasks.metrics import bootstrap_ci, ranking_scores
from grn_jax.tasks.results import TaskResult
from grn_jax.tasks.splits import check_disjoint


@dataclasses.dataclass
class MaskedCell:
    """One cell's tokens, its full and observed (incomplete) graphs and its candidate pairs.

    Positions are 1-based token positions; pairs are (p, q) with p < q.
    """

    row: int  # dataset row
    gene_ids: np.ndarray  # int32 [n] vocabulary ids of positions 1..n
    values: np.ndarray  # float32 [n] normalised log1p expression (0 for neighbour tokens)
    observed: np.ndarray  # int [m, 2] undirected edges kept
    positives: np.ndarray  # int [h, 2] hidden edges
    negatives: np.ndarray  # int [h', 2] non-edges
    hidden: dict  # {method: float32 [u, D]} hidden states at `positions` only (memory: u << n)
    mean: dict  # {method: float32 [D]} mean hidden state over positions 1..n (the cell embedding)

    @property
    def positions(self) -> np.ndarray:
        """Sorted token positions that occur in a candidate pair."""
        return np.unique(np.concatenate([self.positives, self.negatives]).ravel())

    def node_matrix(self, method: str) -> np.ndarray:
        """[n, D] hidden states of positions 1..n, zero where no candidate pair needs them."""
        h = self.hidden[method]
        out = np.zeros((len(self.gene_ids), h.shape[1]), np.float32)
        out[self.positions - 1] = h
        return out


def undirected_pairs(senders, receivers) -> np.ndarray:
    """Unique (min, max) position pairs of a directed edge list, self-loops dropped ([m, 2], sorted)."""
    s, r = np.asarray(senders), np.asarray(receivers)
    keep = s != r
    pairs = np.stack([np.minimum(s, r)[keep], np.maximum(s, r)[keep]], axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def mask_cell_edges(pairs: np.ndarray, n_tokens: int, fraction: float, rng: np.random.Generator):
    """(observed pairs, hidden pairs, negative pairs) of one cell, or None when it has < 2 edges.

    At least one edge is hidden; negatives are drawn uniformly from the gene
    pairs that are not edges of the full graph (fewer if the cell has fewer).
    """
    m = len(pairs)
    if m < 2:
        return None
    n_hide = max(1, int(round(fraction * m)))
    perm = rng.permutation(m)
    hidden, observed = pairs[np.sort(perm[:n_hide])], pairs[np.sort(perm[n_hide:])]
    negatives = _non_edges(pairs, n_tokens, n_hide, rng)
    return observed, hidden, negatives


def hide_pairs(senders: np.ndarray, receivers: np.ndarray, edge_mask: np.ndarray, hidden: np.ndarray,
               n_tokens: int) -> np.ndarray:
    """One cell's `edge_mask` [E] with every edge over a hidden pair switched off, in either direction.

    `hidden`: [h, 2] 1-based position pairs (p < q); edges whose ends lie outside 0..n_tokens + 1
    (padding slots) are left as they are. Used on every graph the model reads (the cell-type
    graph and, for hybrid checkpoints, the cell-specific one), so a hidden edge reaches neither.
    """
    hide = np.zeros((n_tokens + 2, n_tokens + 2), bool)
    hide[hidden[:, 0], hidden[:, 1]] = True
    lo, hi = np.minimum(senders, receivers), np.maximum(senders, receivers)
    inside = (lo >= 0) & (hi <= n_tokens + 1)
    over_hidden = np.zeros(len(edge_mask), bool)
    over_hidden[inside] = hide[lo[inside], hi[inside]]
    return np.asarray(edge_mask, bool) & ~over_hidden


def _non_edges(pairs: np.ndarray, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to k distinct uniform random pairs (p < q) of positions 1..n that are not in `pairs`."""
    codes = set((pairs[:, 0] * (n + 1) + pairs[:, 1]).tolist())
    total = n * (n - 1) // 2
    if total - len(codes) <= 4 * k:  # few candidates: enumerate them all
        iu = np.stack(np.triu_indices(n, k=1), axis=1) + 1
        cand = iu[~np.isin(iu[:, 0] * (n + 1) + iu[:, 1], list(codes))]
        take = min(k, len(cand))
        return cand[np.sort(rng.choice(len(cand), size=take, replace=False))] if take else cand[:0]
    found: dict = {}
    while len(found) < k:  # rejection sampling: O(k) memory for long cells
        a, b = rng.integers(1, n + 1, size=(2, 4 * k))
        for p, q in zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()):
            c = p * (n + 1) + q
            if p != q and c not in codes and c not in found:
                found[c] = (p, q)
                if len(found) == k:
                    break
    return np.array(sorted(found.values()), dtype=np.int64).reshape(-1, 2)


def _models_agree(pre: Pretrained, other: Pretrained) -> None:
    if other.vocab != pre.vocab or other.model_config.n_bins != pre.model_config.n_bins:
        raise ValueError(f"edge prediction: the vanilla checkpoint {other.run_dir} has another vocabulary or bin "
                         f"count than {pre.run_dir}; both must tokenise cells identically to share the pairs")


def masked_cells(pre: Pretrained, adata: anndata.AnnData, *, graph: GraphSpec, others: Optional[dict] = None,
                 mask_fraction: float = 0.15, batch_size: int = 32, seed: int = 0,
                 progress: bool = True) -> tuple[list, dict]:
    """Tokenise every cell as in training, hide edges, run the frozen model(s) on the incomplete graph.

    `others`: {method: Pretrained} run on the very same tokens and incomplete graphs.
    Returns (MaskedCell list, counts of the cells left out and why).
    """
    from grn_jax.data.ingest import open_counts
    from grn_jax.inference.graph_sources import (build_cell_graph_source, build_graph_source,
                                                 check_graph_matches_training)
    from grn_jax.inference.embed import progress_bar
    from grn_jax.inference.model_fn import batch_arrays, call_rows, jitted_inference_fn
    from grn_jax.inference.tokens import TrainingTokenizer

    if not 0.0 < mask_fraction < 1.0:
        raise ValueError(f"edge prediction: mask_fraction must be in (0, 1), got {mask_fraction}")
    if not graph.given:
        raise ValueError("edge prediction needs the cells' regulatory graph; pass the network(s) used in training")
    tok = TrainingTokenizer.from_record(pre.tokenization, pre.vocab)
    check_graph_matches_training(graph, pre.tokenization.get("graph"), f"checkpoint {pre.run_dir}")
    models = {"grn_jax": pre, **(others or {})}
    for other in models.values():
        _models_agree(pre, other)
    # hybrid checkpoints (GRNFormer's two scales) read a cell-specific graph too: built for the new cells as in
    # `embed` (AUCell against training's thresholds), and the hidden edges are switched off in it as well
    cell_graph_of = {m: TrainingTokenizer.from_record(p.tokenization, p.vocab).with_cell_graph
                     for m, p in models.items()}
    needs_cell_graph = [m for m, flag in cell_graph_of.items() if flag]
    if needs_cell_graph and not tok.with_cell_graph:
        raise ValueError(f"edge prediction: the checkpoint(s) {needs_cell_graph} use cell-specific graphs but "
                         f"{pre.run_dir} does not; compare checkpoints of the same graph scales, or pass the hybrid "
                         "one first")
    fns = {m: jitted_inference_fn(p.model_config, cell_graph_of[m]) for m, p in models.items()}
    ingest = tok.ingest_config(backed=False, cell_type_column=None)
    src = open_counts(adata, ingest)
    col_ids, _ = tok.column_map(src)
    gsrc, _ = build_graph_source(graph, pre.vocab, src, 4096, log=lambda m: None)
    csrc = None
    if tok.with_cell_graph:
        csrc, _ = build_cell_graph_source(graph, pre.tokenization.get("cell_graph"), pre.vocab, src, 4096, gsrc,
                                          log=lambda m: None)
    cells, counts = [], {"cells": int(src.n_cells), "cells_without_tokens": 0, "cells_with_fewer_than_2_edges": 0,
                         "cells_with_fewer_negatives": 0}
    bar = progress_bar(int(src.n_cells), progress)
    for start, block in src.chunks(4096):
        t = tok.tokenize(block, start, col_ids, src, ingest=ingest, graph_source=gsrc, cell_graph_source=csrc)
        counts["cells_without_tokens"] += int((t.lengths == 0).sum())
        for batch, pos in tok.batches(t, call_rows(batch_size)):
            tb = batch.tokens
            g, cg = tb.graph, tb.cell_graph
            edge_mask = np.array(g.edge_mask)
            cell_edge_mask = None if cg is None else np.array(cg.edge_mask)
            pending = []
            for r in range(len(pos)):  # host-side masking, one seeded generator per cell
                n = int(tb.token_mask[r].sum()) - 1
                if n == 0:
                    continue  # counted as a cell without tokens above
                valid = g.edge_mask[r]
                pairs = undirected_pairs(g.senders[r][valid], g.receivers[r][valid])
                row = int(batch.cell_index[r])
                res = mask_cell_edges(pairs, n, mask_fraction, np.random.default_rng([seed, row]))
                if res is None:
                    counts["cells_with_fewer_than_2_edges"] += 1
                    continue
                observed, hidden, negatives = res
                counts["cells_with_fewer_negatives"] += int(len(negatives) < len(hidden))
                edge_mask[r] = hide_pairs(g.senders[r], g.receivers[r], edge_mask[r], hidden, n)
                if cg is not None:
                    cell_edge_mask[r] = hide_pairs(cg.senders[r], cg.receivers[r], cell_edge_mask[r], hidden, n)
                i = int(pos[r])
                a, b = int(t.token_ptr[i]), int(t.token_ptr[i + 1])
                pending.append((r, MaskedCell(row, t.gene_ids[a:b].copy(), t.values[a:b].copy(), observed, hidden,
                                              negatives, {}, {})))
            masked = tb.replace(graph=g.replace(edge_mask=edge_mask))
            if cg is not None:
                masked = masked.replace(cell_graph=cg.replace(edge_mask=cell_edge_mask))
            for m, fn in fns.items():
                _, mean_BxD, hidden_BxSxD = jax.device_get(fn(models[m].params,
                                                              *batch_arrays(masked, cell_graph_of[m])))
                for r, cell in pending:
                    h_NxD = np.asarray(hidden_BxSxD[r, 1:len(cell.gene_ids) + 1], np.float32)
                    cell.hidden[m] = h_NxD[cell.positions - 1]
                    cell.mean[m] = np.asarray(mean_BxD[r], np.float32)  # the model's own mean pooling
            cells += [c for _, c in pending]
            bar.update(len(pos))
    bar.close()
    src.close()
    return cells, counts


def pair_features(node_NxF: Optional[np.ndarray], observed: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """[H_p * H_q, |H_p - H_q|, deg_p + deg_q, deg_p * deg_q, common neighbours] of `pairs` (1-based positions).

    Degrees and common neighbours are in the observed graph Ã; `node_NxF` None
    gives the graph terms only.
    """
    n = (node_NxF.shape[0] if node_NxF is not None else int(max(observed.max(initial=0), pairs.max(initial=0))))
    adj = np.zeros((n + 1, n + 1), np.float64)
    if len(observed):
        adj[observed[:, 0], observed[:, 1]] = adj[observed[:, 1], observed[:, 0]] = 1.0
    deg = adj.sum(1)
    p, q = pairs[:, 0], pairs[:, 1]
    common = (adj[p] * adj[q]).sum(1)
    graph_terms = np.stack([deg[p] + deg[q], deg[p] * deg[q], common], axis=1)
    if node_NxF is None:
        return graph_terms
    h = np.concatenate([np.zeros((1, node_NxF.shape[1])), np.asarray(node_NxF, np.float64)])  # position 0 = CLS
    return np.concatenate([h[p] * h[q], np.abs(h[p] - h[q]), graph_terms], axis=1)


def expression_node_features(cells: list, train_cells: np.ndarray, vocab_size: int, dim: int) -> list:
    """Per cell [n, 1 + dim]: the gene's value in the cell and its PCA profile over the training cells."""
    prof = np.zeros((vocab_size, len(train_cells)))
    for j, ci in enumerate(train_cells):  # host-side scatter of ragged tokens
        prof[cells[ci].gene_ids, j] = cells[ci].values
    seen = prof.any(axis=1)
    k = max(1, min(dim, int(seen.sum()) - 1, len(train_cells) - 1))
    emb = np.zeros((vocab_size, k))
    if seen.sum() > k:
        emb[seen] = PCA(n_components=k, random_state=0).fit_transform(prof[seen])
    return [np.concatenate([c.values[:, None].astype(np.float64), emb[c.gene_ids]], axis=1) for c in cells]


class _LazyNodes:
    """nodes[i] = cell i's [n, D] node matrix, built on demand (one cell in memory at a time)."""

    def __init__(self, cells: list, method: str):
        self.cells, self.method = cells, method

    def __getitem__(self, i: int) -> np.ndarray:
        return self.cells[i].node_matrix(self.method)


def _dataset(cells: list, idx: np.ndarray, nodes):
    xs, ys, groups = [], [], []
    for i in idx:
        c = cells[i]
        pairs = np.concatenate([c.positives, c.negatives])
        xs.append(pair_features(None if nodes is None else nodes[i], c.observed, pairs))
        ys.append(np.r_[np.ones(len(c.positives)), np.zeros(len(c.negatives))])
        groups.append(np.full(len(pairs), c.row))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)


def edge_scores(cells: list, *, test_fraction: float = 0.3, n_boot: int = 200, level: float = 0.95,
                seed: int = 0, expression_dim: int = 16) -> tuple[dict, dict]:
    """Fit the pair predictor per method on training cells, score test cells: {method: {auroc, ap}} + curves."""
    if len(cells) < 4:
        raise ValueError(f"edge prediction: {len(cells)} cells with >= 2 edges; need >= 4 to split")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(cells))
    n_test = min(len(cells) - 2, max(2, int(round(test_fraction * len(cells)))))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    check_disjoint([cells[i].row for i in train], [cells[i].row for i in test])
    node_sets = {m: _LazyNodes(cells, m) for m in cells[0].hidden}
    node_sets["expression"] = expression_node_features(cells, train, int(max(c.gene_ids.max() for c in cells)) + 1,
                                                       expression_dim)
    node_sets["graph_only"] = None
    table, curves = {}, {}
    for m, nodes in node_sets.items():
        x_tr, y_tr, _ = _dataset(cells, train, nodes)
        x_te, y_te, g_te = _dataset(cells, test, nodes)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        score = clf.fit(x_tr, y_tr).predict_proba(x_te)[:, 1]
        point = ranking_scores(y_te, score)
        row = {}
        for name, fn in (("auroc", _auroc), ("ap", _ap)):
            lo, hi, used = bootstrap_ci(fn, y_te, score, g_te, n_boot=n_boot, level=level, seed=seed)
            row[name] = {"value": point[name], "ci": [lo, hi], "bootstrap_used": used}
        table[m] = row
        fpr, tpr, _ = roc_curve(y_te, score)
        prec, rec, _ = precision_recall_curve(y_te, score)
        curves[m] = {"roc": _thin(fpr, tpr), "pr": _thin(rec, prec)}
    details = {"curves": curves, "train_cells": int(len(train)), "test_cells": int(len(test)),
               "test_pairs": int(len(y_te)), "test_positives": int(y_te.sum())}
    return table, details


def _auroc(y, s):
    return ranking_scores(y, s)["auroc"]


def _ap(y, s):
    return ranking_scores(y, s)["ap"]


def _thin(x, y, n: int = 200) -> list:
    idx = np.unique(np.linspace(0, len(x) - 1, min(n, len(x))).astype(int))
    return [[float(x[i]), float(y[i])] for i in idx]


def evaluate_edge_prediction(checkpoint: Union[str, Path, Pretrained], data: Union[str, Path, anndata.AnnData], *,
                             graph: GraphSpec, vanilla: Union[str, Path, Pretrained, None] = None,
                             mask_fraction: float = 0.15, test_fraction: float = 0.3, n_boot: int = 200,
                             max_cells: Optional[int] = 1000,
                             level: float = 0.95, batch_size: int = 32, seed: int = 0, random_init: bool = True,
                             pretraining_cells=None, log: Callable[[str], None] = print) -> TaskResult:
    """Masked edge prediction (module docstring); returns a `TaskResult` named "edge_prediction".

    `max_cells`: evaluate a seeded random sample of at most this many cells (the pair
    dataset grows with cells x edges); None = all. The rest are counted as not sampled.
    `pretraining_cells`: names of the cells the checkpoint trained on, when its shards
    are not at hand (default: read from the run). `random_init=False` drops that row.
    """
    check_label_free_graph(graph, "edge prediction")
    adata = read_data(data)
    pre = load_checkpoint(checkpoint)
    unseen, seen_report = unseen_mask(pre, adata.obs_names, pretraining_cells)
    if not unseen.any():
        raise ValueError(f"edge prediction: all {adata.n_obs} cells of the data were in the pretraining set of "
                         f"{pre.run_dir}; evaluate on cells it never saw")
    if not unseen.all():
        log(f"edge prediction: {int((~unseen).sum())} of {adata.n_obs} cells were in the pretraining set; left out")
        adata = adata[unseen].copy()
    check_reference_disjoint(graph, adata.obs_names, "edge prediction")
    n_all = adata.n_obs
    if max_cells is not None and n_all > max_cells:
        pick = np.sort(np.random.default_rng([seed, 1]).choice(n_all, max_cells, replace=False))
        adata = adata[pick].copy()
    van = load_checkpoint(vanilla)
    others = {} if van is None else {"vanilla": van}
    if random_init:
        others[RANDOM_INIT] = random_init_model(pre)
    cells, counts = masked_cells(pre, adata, graph=graph, others=others or None,
                                 mask_fraction=mask_fraction, batch_size=batch_size, seed=seed)
    counts["cells_used"] = len(cells)
    counts["cells_not_sampled"] = int(n_all - adata.n_obs)
    counts["cells_seen_in_pretraining"] = seen_report["cells_seen_in_pretraining"]
    log(f"edge prediction: {len(cells)} cells with edges to hide ({counts['cells_with_fewer_than_2_edges']} with "
        f"fewer than 2 edges and {counts['cells_without_tokens']} without tokens left out)")
    table, details = edge_scores(cells, test_fraction=test_fraction, n_boot=n_boot, level=level, seed=seed,
                                 expression_dim=pre.model_config.d_model)
    settings = {"checkpoint": pre.run_dir, "vanilla": None if van is None else van.run_dir,
                "mask_fraction": mask_fraction, "test_fraction": test_fraction, "n_boot": n_boot, "level": level,
                "max_cells": max_cells, "random_init": bool(random_init), "pretraining_cells": seen_report,
                "seed": seed, "predictor": "standardise + logistic regression on [H_i*H_j, |H_i-H_j|, Ã degree "
                "sum/product, common Ã-neighbours]", "ci": "percentile bootstrap over test cells"}
    return TaskResult("edge_prediction", {"held_out_cells": table}, counts, settings, details)
