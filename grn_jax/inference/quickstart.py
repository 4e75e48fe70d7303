"""The embed stage of `make quickstart`: the bundled PBMC cells through `embed`, plus a sanity figure.

After the quickstart's pretraining, the same 700 PBMCs are written to an .h5ad
(integer counts, as prepared) and embedded from the run directory with the
streaming `embed` path. The printed figure is the leave-one-out 15-nearest-
neighbour agreement of each cell's mean embedding with its `bulk_labels` cell
type, beside the chance level (the share of the most common type) — a quick
look at whether the embeddings carry biology, not a benchmark.
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
    from grn_jax.inference.embed import MEAN_KEY, embed

    out = Path(out_dir)
    counts = out / "pbmc68k_counts.h5ad"
    adata = pbmc68k()
    adata.uns.clear()  # h5ad cannot store every value type of the recovery report; counts only
    adata.write_h5ad(counts)
    embedded = out / "pbmc68k_embedded.h5ad"
    echo(f"== embedding the {adata.n_obs} PBMCs with {run_dir} ==")
    report = embed(run_dir, counts, embedded, overwrite=True, progress=False, log=echo)
    echo(report.to_text())
    result = anndata.read_h5ad(embedded)
    labels = np.asarray(result.obs[CELL_TYPE_KEY]).astype(str)
    agree = knn_label_agreement(result.obsm[MEAN_KEY], labels)
    chance = float(np.unique(labels, return_counts=True)[1].max() / len(labels))
    echo(f"15-NN cell-type agreement of the mean embedding: {agree:.3f} (most common type alone: {chance:.3f})")
    return {"embedded": str(embedded), "knn_agreement": agree, "chance": chance, "report": report}
