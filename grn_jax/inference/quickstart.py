"""The embed stage of `make quickstart`: the bundled PBMC cells through `embed`, plus a sanity figure.

`quickstart` runs the whole chain: data pipeline and tiny pretraining
(`grn_jax.train.quickstart`), then `quickstart_embed`.

After the quickstart's pretraining, the same 700 PBMCs are written to an .h5ad
(integer counts, as prepared) and embedded from the run directory with the
streaming `embed` path, each cell with its type's network from the data stage
(`out_dir/networks`, as in training). The printed figure is the leave-one-out
15-nearest-neighbour agreement of each cell's CLS and mean embeddings with its
`bulk_labels` cell type, beside the same figure for 50 PCs of log1p(CP10k) and
the chance level (the share of the most common type) — a quick look at whether
the embeddings carry biology, not a benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def knn_label_agreement(x_NxD: np.ndarray, labels: np.ndarray, k: int = 15) -> float:
    """Fraction of cells whose k nearest other cells (Euclidean) vote for their own label (majority)."""
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels).astype(str)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(x_NxD)
    idx = nn.kneighbors(x_NxD, return_distance=False)[:, 1:]
    classes, codes = np.unique(labels, return_inverse=True)
    votes = np.zeros((len(labels), len(classes)), np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(labels)), k), codes[idx].ravel()), 1)
    return float((votes.argmax(axis=1) == codes).mean())


def quickstart_embed(out_dir, run_dir, *, echo: Callable[[str], None] = print) -> dict:
    """Write the bundled PBMC counts to out_dir/pbmc68k_counts.h5ad, embed them, print the figure."""
    import anndata

    from grn_jax.datasets.pbmc import CELL_TYPE_KEY, pbmc68k
    from grn_jax.inference.embed import CLS_KEY, MEAN_KEY, embed
    from grn_jax.inference.checkpoint import load_pretrained
    from grn_jax.reporting import quickstart_graph
    from grn_jax.tasks.controls import random_init_model, unseen_mask
    from grn_jax.tasks.features import cell_embeddings

    out = Path(out_dir)
    counts = out / "pbmc68k_counts.h5ad"
    adata = pbmc68k()
    adata.uns.clear()  # h5ad cannot store every value type of the recovery report; counts only
    adata.write_h5ad(counts)
    embedded = out / "pbmc68k_embedded.h5ad"
    # graphs by kNN integration over the run's training cells: never the evaluated cell's own label
    graph = quickstart_graph(out, run_dir)
    echo(f"== embedding the {adata.n_obs} PBMCs with {run_dir} ==")
    report = embed(run_dir, counts, embedded, graph=graph, overwrite=True, progress=False, log=echo)
    echo(report.to_text())
    result = anndata.read_h5ad(embedded)
    # scored only on cells pretraining never saw (its validation cells), beside a random-init twin
    pre = load_pretrained(run_dir)
    unseen, _ = unseen_mask(pre, result.obs_names, None)
    labels = np.asarray(result.obs[CELL_TYPE_KEY]).astype(str)[unseen]
    k = int(min(15, max(1, unseen.sum() // 5)))
    agree = {key: knn_label_agreement(result.obsm[key][unseen], labels, k) for key in (CLS_KEY, MEAN_KEY)}
    twin = random_init_model(pre)
    emb, _ = cell_embeddings(twin, adata[unseen].copy(), graph=graph)
    agree["random_init mean (control)"] = knn_label_agreement(emb, labels, k)
    agree["pca50_log1p_cp10k (baseline)"] = knn_label_agreement(_pca_baseline(adata.X)[unseen], labels, k)
    chance = float(np.unique(labels, return_counts=True)[1].max() / len(labels))
    echo(f"{k}-NN cell-type agreement on the {int(unseen.sum())} cells pretraining never saw: "
         + ", ".join(f"{k_} {v:.3f}" for k_, v in agree.items()) + f"; most common type alone {chance:.3f}")
    return {"embedded": str(embedded), "knn_agreement": agree, "chance": chance, "report": report}


def _pca_baseline(counts, n_components: int = 50) -> np.ndarray:
    """50 principal components of log1p(CP10k): the usual scanpy representation, for comparison."""
    import scipy.sparse as sp
    from sklearn.decomposition import PCA

    x = sp.csr_matrix(counts, dtype=np.float64)
    tot = np.asarray(x.sum(axis=1)).ravel()
    x = (sp.diags(1e4 / np.maximum(tot, 1)) @ x).log1p().toarray()
    return PCA(n_components=min(n_components, *x.shape), random_state=0).fit_transform(x)


def quickstart(out_dir="quickstart_out", *, echo: Callable[[str], None] = print) -> dict:
    """`grn-jax quickstart`: data + tiny pretraining (`grn_jax.train.quickstart`), embed stage, evaluations + report."""
    from grn_jax.reporting import quickstart_report  # evaluations + `grn-jax report` of the tiny run
    from grn_jax.train.quickstart import quickstart as pretrain_quickstart

    result = pretrain_quickstart(out_dir, echo=echo)
    result["embed"] = quickstart_embed(out_dir, result["pretrain"].run_dir, echo=echo)
    result["report"] = quickstart_report(out_dir, result["pretrain"].run_dir, result["embed"]["embedded"],
                                         echo=echo)
    return result
