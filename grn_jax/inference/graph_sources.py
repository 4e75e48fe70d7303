"""Which regulatory graph new cells get at inference (`grn-jax embed` / `finetune`).

Three ways, chosen by `GraphSpec`:

- `network`: one network file for every cell (as `grn-jax prepare --network`);
- `networks_dir` + `cell_type_column`: the cell's own type's network, types known
  (as `grn-jax prepare --networks-dir`);
- `networks_dir` + `reference`: unseen cells whose type is unknown get the Bayesian
  kNN graph integration of GREmLN §4.2 (`grn_jax.graphs.integration`): a kNN type
  posterior fitted on the reference (training) cells labelled in DIR/labels.tsv,
  computed for the query chunk by chunk, then eq. 3 per cell.

A model trained with graphs must be given one, and a model trained without
graphs must not: either way the tokens would differ from training.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from grn_jax.data.graph_source import CellTypeNetworkSource, GraphSource, SingleNetworkSource
from grn_jax.data.ingest import CountsSource
from grn_jax.data.vocab import GeneVocab


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """How to give cells a graph; all None = no graph (only for models trained without one)."""

    network: Optional[str] = None
    networks_dir: Optional[str] = None
    cell_type_column: Optional[str] = None
    reference: Optional[str] = None
    reference_layer: Optional[str] = None
    knn_k: int = 15
    alpha: float = 0.05
    allow_empty_graph: bool = False  # accept networks with no edge between vocabulary genes (warns)

    @property
    def given(self) -> bool:
        return self.network is not None or self.networks_dir is not None

    def validate(self) -> "GraphSpec":
        if self.network and self.networks_dir:
            raise ValueError("graph: give either a network (one for all cells) or a networks folder, not both")
        if self.networks_dir and not (self.cell_type_column or self.reference):
            raise ValueError("graph: a networks folder needs either cell_type_column (types known) or reference "
                             "(the training .h5ad, for kNN graph integration of unseen cells)")
        if self.cell_type_column and self.reference:
            raise ValueError("graph: give cell_type_column (types known) or reference (types inferred), not both")
        if (self.cell_type_column or self.reference) and not self.networks_dir:
            raise ValueError("graph: cell_type_column/reference only apply with a networks folder")
        if self.knn_k < 1:
            raise ValueError(f"graph.knn_k must be >= 1, got {self.knn_k}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"graph.alpha must be in [0, 1), got {self.alpha}")
        return self


def check_graph_matches_training(spec: GraphSpec, training_graph, where: str) -> None:
    """Refuse a graph choice that cannot reproduce training's tokens (graph vs no graph)."""
    trained_with = training_graph not in (None, "none")
    if trained_with and not spec.given:
        raise ValueError(f"{where}: the model was trained with per-cell graphs but no graph was given; pass the "
                         "network(s) used in training (--network, or --networks-dir with --label-key (--graph-label-key in "
                         "finetune / eval annotation) or --reference for unseen cells)")
    if not trained_with and spec.given:
        raise ValueError(f"{where}: the model was trained without graphs; drop --network/--networks-dir")


def build_graph_source(spec: GraphSpec, vocab: GeneVocab, src: CountsSource, chunk_cells: int,
                       *, log: Callable[[str], None] = print) -> tuple[Optional[GraphSource], dict]:
    """(GraphSource over vocabulary ids for the cells of `src`, report)."""
    spec.validate()
    if not spec.given:
        return None, {"kind": "none"}
    if spec.network:
        from grn_jax.graphs.network_io import read_network

        source = SingleNetworkSource(read_network(spec.network), vocab.tokens)
        _check_edges(source, spec)
        return source, {"kind": "single network", "path": str(spec.network), **source.report}
    from grn_jax.graphs.network_dir import read_cell_type_networks

    nets, labels = read_cell_type_networks(spec.networks_dir)
    if spec.cell_type_column:
        if spec.cell_type_column not in src.obs.columns:
            raise ValueError(f"cell_type_column={spec.cell_type_column!r} is not an obs column of the data "
                             f"(columns: {list(src.obs.columns)[:20]})")
        types = np.asarray(src.obs[spec.cell_type_column]).astype(str)
        source = CellTypeNetworkSource(nets, types, vocab.tokens)
        _check_edges(source, spec)
        return source, {"kind": "cell-type networks", "networks_dir": str(spec.networks_dir),
                        "cell_type_column": spec.cell_type_column}
    return _integrated_source(spec, nets, labels, vocab, src, chunk_cells, log)


def _check_edges(source, spec: GraphSpec) -> None:
    from grn_jax.data.pipeline import check_graph_edges, network_edges_kept

    check_graph_edges(network_edges_kept(source), source, "network", spec.allow_empty_graph, "the cells")


def _integrated_source(spec: GraphSpec, nets: dict, labels, vocab: GeneVocab, src: CountsSource,
                       chunk_cells: int, log) -> tuple[GraphSource, dict]:
    """kNN graph integration (GREmLN §4.2) with the query posterior computed chunk by chunk."""
    from grn_jax.data.ingest import read_h5ad
    from grn_jax.graphs.celltype_networks import POOLED
    from grn_jax.graphs.integration import (ExpressionEmbedding, IntegratedNetworkSource, KnnTypePosterior,
                                            edge_exclusion)

    nets = {t: n for t, n in nets.items() if t != POOLED}
    excl = edge_exclusion(nets)
    ref = read_h5ad(spec.reference, what="--reference file")
    lab = labels.set_index("cell")["cell_type"]
    known = ref.obs_names.isin(lab.index)
    if not known.any():
        raise ValueError(f"none of the {ref.n_obs} cells of reference {spec.reference!r} is in "
                         f"{spec.networks_dir}/labels.tsv; pass the .h5ad the networks were inferred from")
    ref = ref[known]
    x = ref.layers[spec.reference_layer] if spec.reference_layer else ref.X
    ref_labels = lab.loc[ref.obs_names].to_numpy().astype(str)
    no_net = sorted(set(ref_labels) - set(excl.types))
    if no_net:
        raise ValueError(f"reference cell types {no_net[:5]} have no network in {spec.networks_dir}")
    emb = ExpressionEmbedding(x, list(ref.var_names))
    knn = KnnTypePosterior(emb.train_features, ref_labels, k=min(spec.knn_k, len(ref_labels)), types=excl.types)
    posterior = np.zeros((src.n_cells, len(excl.types)))
    align = None
    for start, block in src.chunks(chunk_cells):  # bounded memory: one chunk of query cells at a time
        feats, align = emb.transform(block, src.gene_names)
        posterior[start:start + block.shape[0]] = knn.posterior(feats)
    report = {"kind": "kNN graph integration (GREmLN 4.2)", "networks_dir": str(spec.networks_dir),
              "reference": str(spec.reference), "reference_cells": int(len(ref_labels)), "k": knn.k,
              "alpha": spec.alpha, "gene_alignment": align,
              "mean_max_posterior": float(posterior.max(axis=1).mean()) if len(posterior) else 0.0}
    log(f"graph: kNN integration over {len(excl.types)} cell-type networks, {len(ref_labels)} reference cells, "
        f"mean max posterior {report['mean_max_posterior']:.3f}")
    return IntegratedNetworkSource(excl, posterior, vocab.tokens, alpha=spec.alpha, report=report), report


def build_cell_graph_source(spec: GraphSpec, record, vocab: GeneVocab, src: CountsSource, chunk_cells: int,
                            graph_source: Optional[GraphSource], *, log: Callable[[str], None] = print
                            ) -> tuple[GraphSource, dict]:
    """Cell-specific graphs (GRNFormer's second scale) for new cells, from the thresholds fitted in training.

    record: the checkpoint's `tokenization["cell_graph"]` (the prepared shards' cell-graph
    report, which carries `thresholds`). Each new cell is scored with AUCell over the
    vocabulary genes and compared with the thresholds of the type it is assigned
    *without its label*: with kNN graph integration (`reference`), the type of largest
    kNN posterior (ties: the first type in sorted order); with `cell_type_column`, the
    declared column (the same column that picks its cell-type network; `eval` refuses
    it as a label leak); thresholds fitted on one pooled group apply to every cell.
    The networks are the training ones (`networks_dir`, or `network` for a pooled fit).
    """
    from grn_jax.graphs.cell_specific import POOLED, CellSpecificNetworkSource, apply_thresholds, vocab_gene_columns
    from grn_jax.graphs.integration import IntegratedNetworkSource

    rec = (record or {}).get("thresholds") if isinstance(record, dict) else None
    if not rec:
        raise ValueError("the checkpoint uses cell-specific graphs but its tokenisation record has no fitted "
                         "thresholds (shards prepared before they were saved); re-run `grn-jax prepare` and pretrain")
    fitted = sorted(rec["types"])
    if spec.network:
        from grn_jax.graphs.network_io import read_network

        net = read_network(spec.network)
        nets = {t: net for t in fitted}
    elif spec.networks_dir:
        from grn_jax.graphs.network_dir import read_cell_type_networks

        nets, _ = read_cell_type_networks(spec.networks_dir)
    else:
        raise ValueError("cell-specific graphs need the training networks; pass --network or --networks-dir")
    if fitted == [POOLED]:
        types = np.full(src.n_cells, POOLED)
        how = "one pooled fit"
    elif spec.cell_type_column:
        types = np.asarray(src.obs[spec.cell_type_column]).astype(str)
        how = f"declared column {spec.cell_type_column!r}"
    elif isinstance(graph_source, IntegratedNetworkSource):
        post = graph_source.posterior
        types = np.asarray(graph_source.exclusion.types).astype(str)[np.argmax(post, axis=1)]
        how = "kNN integration's most probable type"
    else:
        raise ValueError(f"the checkpoint's cell-specific thresholds are per cell type ({fitted[:5]}); a new cell's "
                         "type must be predicted without its label: pass --networks-dir with --reference (kNN "
                         "graph integration)")
    genes = list(vocab.genes)
    parts = [vocab_gene_columns(block, vocab, src.gene_names) for _, block in src.chunks(chunk_cells)]
    import scipy.sparse as sp

    x = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, len(genes)))
    grns = apply_thresholds(x, genes, nets, rec, types)
    report = {"kind": "cell-specific (AUCell against training thresholds)", "type_assignment": how, **grns.report}
    log(f"cell graph: AUCell of {src.n_cells} cells against training thresholds; types by {how}: "
        f"{grns.report['assigned_types']}")
    return CellSpecificNetworkSource(grns, vocab.tokens), report
