"""`grn-jax report RUN_DIR`: one markdown + HTML page on a pretraining run and its evaluations.

Why: a run is judged by its curves and by what its embeddings do downstream; this
puts both on one page, with every figure a PNG file beside the report.

Sources (each section renders from what exists and says how to produce what does not):
- training curves: `RUN_DIR/metrics.jsonl` (train loss per step; val loss and
  masked-bin accuracy) — required;
- UMAP of cell embeddings coloured by cell type: an .h5ad written by `grn-jax embed`
  (`obsm['X_grn_mean']`, or `embedding_key`), labels in `obs[label_key]` (scanpy);
- evaluation tables and figures: `<task>.json` files written by `grn-jax eval`
  (`TaskResult`) in `eval_dir` (default `RUN_DIR/eval`): confusion matrices
  (annotation), ROC / PR curves (edge prediction), the TF attention distribution
  (attention); every other task's table is rendered as well.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from grn_jax._io import atomic_path, atomic_write_text, check_out_dir, read_json

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
TASK_ORDER = ("annotation", "edge_prediction", "probe", "reverse_perturbation", "perturbation_response", "attention")


# ---------------------------------------------------------------- document blocks -> markdown / HTML


@dataclasses.dataclass
class Doc:
    """A report as a list of blocks, rendered identically to markdown and to HTML."""

    blocks: list = dataclasses.field(default_factory=list)

    def heading(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def para(self, text: str):
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]):
        self.blocks.append(("table", list(header), [list(r) for r in rows]))

    def image(self, file_name: str, alt: str):
        self.blocks.append(("img", file_name, alt))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                out.append("\n".join(["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
                                     + ["| " + " | ".join(r) + " |" for r in b[2]]))
            else:
                out.append(f"![{b[2]}]({b[1]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
               "body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}</style></head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(c)}</th>" for c in b[1])
                body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            else:
                out.append(f"<p><img src='{e(b[1])}' alt='{e(b[2])}'></p>")
        out.append("</body></html>")
        return "\n".join(out)


def fmt_cell(cell) -> str:
    """A TaskResult metric cell as text: 'mean ± sd (n)', 'value [lo, hi]' or a number."""
    if isinstance(cell, dict) and "mean" in cell:
        return f"{cell['mean']:.3f} ± {cell['sd']:.3f}"
    if isinstance(cell, dict) and "value" in cell:
        lo, hi = cell.get("ci", (math.nan, math.nan))
        return f"{cell['value']:.3f} [{lo:.3f}, {hi:.3f}]"
    if isinstance(cell, float):
        return f"{cell:.3g}" if abs(cell) < 1e-3 and cell != 0 else f"{cell:.3f}"
    return "–" if cell is None else str(cell)


# ---------------------------------------------------------------- figures (matplotlib, Agg)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path) -> None:
    """PNG written atomically (temp + rename), like every other file the report writes."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def plot_training_curves(train: list, val: list, path: Path) -> None:
    """Train loss per step (and val loss, masked-bin accuracy at each validation) to a PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    if val:
        axes[0].plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
        se = [r.get("val_accuracy_se", 0.0) for r in val]
        axes[1].errorbar([r["step"] for r in val], [r["val_accuracy"] for r in val], yerr=se, fmt="o-",
                         color="C2", capsize=3, label="model (± 1 SE)")
        for key, name, style in (("val_gene_mode_accuracy", "each gene's most common bin", "--"),
                                 ("val_majority_bin_accuracy", "majority bin", ":")):
            if key in val[-1]:
                axes[1].axhline(val[-1][key], ls=style, color="0.4", label=f"trivial: {name}")
        if any(key in val[-1] for key in ("val_gene_mode_accuracy", "val_majority_bin_accuracy")):
            axes[1].legend(fontsize=8)
    axes[0].set(xlabel="step", ylabel="masked-bin cross-entropy", title="loss")
    axes[0].legend()
    axes[1].set(xlabel="step", ylabel="accuracy", title="val masked-bin accuracy")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_umap(x_NxD: np.ndarray, labels: np.ndarray, path: Path, *, seed: int = 0) -> None:
    """UMAP (scanpy: PCA-free kNN graph on the embedding, then UMAP) coloured by label, to a PNG."""
    import anndata
    import scanpy as sc

    ad = anndata.AnnData(np.asarray(x_NxD, np.float32))
    ad.obs["label"] = np.asarray(labels).astype(str)
    sc.pp.neighbors(ad, use_rep="X", n_neighbors=min(15, ad.n_obs - 1), random_state=seed)
    sc.tl.umap(ad, random_state=seed)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    xy = ad.obsm["X_umap"]
    for i, lab in enumerate(sorted(set(ad.obs["label"]))):
        m = (ad.obs["label"] == lab).to_numpy()
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=plt.cm.tab20(i % 20), label=f"{lab} ({m.sum()})")
    ax.set(xlabel="UMAP 1", ylabel="UMAP 2", title="cell embeddings")
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_confusion(classes: list, matrices: dict, path: Path) -> None:
    """Row-normalised confusion matrices (true rows, predicted columns), one panel per method, to a PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.6 * len(matrices), 4.4), squeeze=False)
    for ax, (method, cm) in zip(axes[0], matrices.items()):
        cm = np.asarray(cm, np.float64)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
        ax.set_yticks(range(len(classes)), classes, fontsize=6)
        ax.set(title=method, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_roc_pr(curves: dict, path: Path) -> None:
    """ROC and precision-recall curves of every method (points [[x, y], ...]) to a PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, c in curves.items():
        roc, pr = np.asarray(c["roc"]), np.asarray(c["pr"])
        axes[0].plot(roc[:, 0], roc[:, 1], label=method)
        axes[1].plot(pr[:, 0], pr[:, 1], label=method)
    axes[0].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test cells)")
    axes[1].set(xlabel="recall", ylabel="precision", title="precision-recall (test cells)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_tf_attention(phi: Sequence[float], is_tf: Sequence[bool], path: Path) -> None:
    """Distribution of per-gene attention importance phi, TFs vs other genes (log10), to a PNG."""
    plt = _pyplot()
    phi, is_tf = np.asarray(phi, np.float64), np.asarray(is_tf, bool)
    logphi = np.log10(np.maximum(phi, 1e-12))
    bins = np.linspace(logphi.min(), logphi.max() + 1e-9, 40)
    fig, ax = plt.subplots(figsize=(7, 4))
    for m, name in ((~is_tf, "other genes"), (is_tf, "TFs")):
        ax.hist(logphi[m], bins=bins, density=True, alpha=0.55, label=f"{name} ({m.sum()})")
    ax.set(xlabel="log10 mean attention received (phi)", ylabel="density", title="TF attention distribution")
    ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------- sections


def _metrics_tables(doc: Doc, result: dict) -> None:
    for setting, methods in result["metrics"].items():
        names = sorted({k for row in methods.values() for k in row})
        doc.para(f"setting: {setting}")
        doc.table(["method", *names], [[m, *(fmt_cell(row.get(n)) for n in names)] for m, row in methods.items()])


def _training_section(doc: Doc, run_dir: Path, out: Path) -> str:
    from grn_jax.train.metrics import read_metrics

    train, val = read_metrics(run_dir, "train"), read_metrics(run_dir, "val")
    if not train:
        raise ValueError(f"report: {run_dir}/metrics.jsonl has no training records; is {run_dir} a run "
                         "directory written by `grn-jax pretrain`?")
    doc.heading(2, "Training curves")
    plot_training_curves(train, val, out / "training_curves.png")
    first, last = train[0], train[-1]
    doc.para(f"{len(train)} logged steps ({first['step']}..{last['step']}); train loss {first['loss']:.4f} -> "
             f"{last['loss']:.4f}" + (f"; last val loss {val[-1]['val_loss']:.4f}, masked-bin accuracy "
                                      f"{val[-1]['val_accuracy']:.3f} (step {val[-1]['step']})" if val else
                                      "; no validation records"))
    line = val_controls_line(val[-1]) if val else None
    if line:
        doc.para(line)
    doc.image("training_curves.png", "training curves")
    return "training_curves.png"


def val_controls_line(rec: dict) -> Optional[str]:
    """One validation record in words: accuracy ± SE beside the trivial predictors (None if it has none)."""
    if "val_gene_mode_accuracy" not in rec:
        return None
    acc, se = rec["val_accuracy"], rec.get("val_accuracy_se", float("nan"))
    best = max(rec["val_gene_mode_accuracy"], rec["val_majority_bin_accuracy"])
    margin = f"{(acc - best) / se:+.1f} SE" if se and math.isfinite(se) and se > 0 else "no SE"
    return (f"validation (step {rec['step']}, {rec['val_masked']} masked tokens of every held-out cell): "
            f"masked-bin accuracy {acc:.4f} ± {se:.4f} (1 SE) vs the trivial predictors on the same tokens: "
            f"each gene's most common training bin {rec['val_gene_mode_accuracy']:.4f}, the majority bin "
            f"{rec['val_majority_bin_accuracy']:.4f}; margin over the better one {acc - best:+.4f} ({margin})")


def _umap_section(doc: Doc, embedded: Optional[Path], label_key: str, embedding_key: str, out: Path,
                  run_dir: Path) -> Optional[str]:
    doc.heading(2, "Cell embeddings (UMAP)")
    if embedded is None:
        doc.para(f"not available: pass --embedded with an .h5ad from `grn-jax embed DATA --checkpoint {run_dir} "
                 "--out EMBEDDED.h5ad`")
        return None
    from grn_jax.data.ingest import read_h5ad

    ad = read_h5ad(embedded, backed="r", what="--embedded file")
    if embedding_key not in ad.obsm:
        raise ValueError(f"report: {embedded} has no obsm[{embedding_key!r}] (obsm keys: {list(ad.obsm)}); "
                         "pass --embedding-key or embed the data with `grn-jax embed`")
    if label_key not in ad.obs:
        raise ValueError(f"report: {embedded} has no obs[{label_key!r}] (obs columns: {list(ad.obs.columns)[:20]});"
                         " pass --label-key")
    x = np.asarray(ad.obsm[embedding_key])
    labels = ad.obs[label_key].astype(str).to_numpy()
    finite = np.isfinite(x).all(axis=1) & (ad.obs[label_key].notna().to_numpy())
    plot_umap(x[finite], labels[finite], out / "umap.png")
    doc.para(f"{int(finite.sum())} of {len(x)} cells of {embedded} (obsm[{embedding_key!r}], coloured by "
             f"obs[{label_key!r}]); left out: {int((~finite).sum())} without a finite embedding or label")
    doc.image("umap.png", "UMAP of cell embeddings")
    return "umap.png"


def _task_section(doc: Doc, task: str, result: dict, out: Path) -> list:
    doc.heading(2, f"Evaluation: {task}")
    _metrics_tables(doc, result)
    if result.get("counts"):
        doc.para("counts: " + json.dumps(result["counts"], default=str))
    figures, details = [], result.get("details") or {}
    if task == "annotation":
        for setting, methods in result["metrics"].items():
            line = controls_line(methods)
            if line:
                doc.para(f"{setting}: {line}")
        for setting, d in details.items():
            if isinstance(d, dict) and d.get("confusion_split0"):
                name = f"confusion_{setting}.png"
                plot_confusion(d["classes"], d["confusion_split0"], out / name)
                doc.para(f"confusion matrices ({setting}, test cells of split 0, rows normalised)")
                doc.image(name, f"confusion matrices {setting}")
                figures.append(name)
    elif task == "edge_prediction" and details.get("curves"):
        plot_roc_pr(details["curves"], out / "roc_pr.png")
        doc.image("roc_pr.png", "ROC and PR curves")
        figures.append("roc_pr.png")
    elif task == "attention" and details.get("phi"):
        plot_tf_attention(details["phi"], details["is_tf"], out / "tf_attention.png")
        doc.image("tf_attention.png", "TF attention distribution")
        figures.append("tf_attention.png")
    return figures


CONTROL_ORDER = ("grn_jax", "vanilla", "random_init", "pca_logreg", "majority", "chance")


def controls_line(methods: dict, metric: str = "macro_f1") -> Optional[str]:
    """'macro_f1 (mean over splits): grn_jax 0.41, random_init 0.25, ...; grn_jax - random_init = +0.16' or None."""
    got = {m: methods[m][metric]["mean"] for m in CONTROL_ORDER
           if isinstance(methods.get(m, {}).get(metric), dict) and "mean" in methods[m][metric]}
    if "grn_jax" not in got or len(got) < 2:
        return None
    parts = ", ".join(f"{m} {v:.3f}" for m, v in got.items())
    diffs = "; ".join(f"grn_jax - {m} = {got['grn_jax'] - got[m]:+.3f}" for m in ("random_init", "pca_logreg",
                                                                                 "chance") if m in got)
    return f"{metric} (mean over splits): {parts}" + (f"; {diffs}" if diffs else "")


@dataclasses.dataclass
class Report:
    """Where the report went and what it holds."""

    markdown: str
    html: str
    figures: list
    sections: list
    missing: list

    def to_text(self) -> str:
        miss = f"; not available: {', '.join(self.missing)}" if self.missing else ""
        return (f"report: {self.markdown} and {self.html} ({len(self.figures)} figures: "
                f"{', '.join(self.figures)}){miss}")


def write_report(run_dir, *, out_dir=None, eval_dir=None, embedded=None, label_key: str = "cell_type",
                 embedding_key: str = "X_grn_mean", log: Callable[[str], None] = print) -> Report:
    """Render RUN_DIR's report (module docstring) into `out_dir` (default RUN_DIR/report)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"report: run directory {run_dir} does not exist")
    out = check_out_dir(out_dir, "--out") if out_dir is not None else run_dir / "report"
    eval_dir = Path(eval_dir) if eval_dir is not None else run_dir / "eval"
    embedded = Path(embedded) if embedded is not None else None
    if embedded is not None and not embedded.is_file():
        raise ValueError(f"report: --embedded {embedded} is not a file")
    out.mkdir(parents=True, exist_ok=True)
    doc = Doc()
    doc.heading(1, f"grn_jax run report: {run_dir.name}")
    doc.para(f"run directory: {run_dir.resolve()}")
    prov = run_dir / "provenance.json"
    if prov.is_file():
        p = read_json(prov, "provenance file")
        rows = [[k, str(p[k])] for k in ("time_utc", "git_commit", "jax_version", "n_params", "cpu_model") if k in p]
        if isinstance(p.get("devices"), dict):
            rows.append(["devices", f"{p['devices'].get('n_devices')} x {p['devices'].get('backend')}"])
        if rows:
            doc.table(["provenance", "value"], rows)
    figures, sections, missing = [_training_section(doc, run_dir, out)], ["training curves"], []
    umap = _umap_section(doc, embedded, label_key, embedding_key, out, run_dir)
    if umap:
        figures.append(umap)
        sections.append("umap")
    else:
        missing.append("umap")
    found = {p.stem: p for p in sorted(eval_dir.glob("*.json"))} if eval_dir.is_dir() else {}
    tasks = [t for t in TASK_ORDER if t in found] + sorted(set(found) - set(TASK_ORDER))
    for task in tasks:
        try:
            result = read_json(found[task], "evaluation result")
        except ValueError:
            result = None
        if not isinstance(result, dict) or result.get("task") != task or "metrics" not in result:
            log(f"report: {found[task]} is not a `grn-jax eval` result; left out")
            missing.append(f"{task} (unreadable)")
            continue
        figures += _task_section(doc, task, result, out)
        sections.append(task)
    for task in ("annotation", "edge_prediction", "attention"):
        if task not in found:
            missing.append(task)
            doc.heading(2, f"Evaluation: {task}")
            doc.para(f"not available: run `grn-jax eval {task} DATA --checkpoint {run_dir} --out {eval_dir} ...`")
    md, page = out / REPORT_MD, out / REPORT_HTML
    atomic_write_text(md, doc.markdown())
    atomic_write_text(page, doc.html(f"grn_jax report {run_dir.name}"))
    report = Report(str(md), str(page), figures, sections, missing)
    log(report.to_text())
    return report


def write_training_reference(run_dir, counts_h5ad, out_path) -> Path:
    """Write the cells of `counts_h5ad` that the run trained on to `out_path` (atomically): the kNN graph
    integration reference for evaluating the others (`grn_jax.tasks.controls.pretraining_cells`)."""
    import anndata

    from grn_jax.inference import load_model
    from grn_jax.tasks.controls import pretraining_cells

    adata = anndata.read_h5ad(counts_h5ad)
    train = adata.obs_names.isin(pretraining_cells(load_model(run_dir)).train)
    if not train.any():
        raise ValueError(f"none of the cells of {counts_h5ad} is a training cell of {run_dir}; pass the counts "
                         "file the run's shards were prepared from")
    from grn_jax._io import atomic_path

    with atomic_path(out_path) as tmp:
        adata[train].copy().write_h5ad(tmp)
    return Path(out_path)


def quickstart_graph(out_dir, run_dir):
    """The evaluations' GraphSpec for a quickstart OUT folder: none without OUT/networks, else kNN graph
    integration over its per-cell-type networks with the run's training cells of OUT/pbmc68k_counts.h5ad as the
    reference (written to OUT/eval_reference.h5ad) — never the evaluated cells' own labels."""
    from grn_jax.inference.graph_sources import GraphSpec

    out = Path(out_dir)
    if not (out / "networks" / "summary.json").is_file():
        return GraphSpec()
    ref = write_training_reference(run_dir, out / "pbmc68k_counts.h5ad", out / "eval_reference.h5ad")
    return GraphSpec(networks_dir=str(out / "networks"), reference=str(ref))


def quickstart_report(out_dir, run_dir, embedded, *, echo: Callable[[str], None] = print) -> Report:
    """The last stage of `make quickstart`: three evaluations of the tiny run, then its report.

    Annotation, masked edge prediction and TF attention on the bundled PBMCs (the
    quickstart's counts file and per-cell-type networks), small settings for a CPU,
    written to RUN_DIR/eval; then `write_report` into RUN_DIR/report. The tasks
    score only the cells pretraining never trained on; their graphs come from
    GREmLN's kNN graph integration with the training cells as the reference
    (written to OUT/eval_reference.h5ad), never from their own labels.
    """
    from grn_jax.inference.graph_sources import GraphSpec
    from grn_jax.tasks import evaluate_annotation, evaluate_attention, evaluate_edge_prediction

    out, run_dir = Path(out_dir), Path(run_dir)
    counts = out / "pbmc68k_counts.h5ad"
    graph = quickstart_graph(out, run_dir)
    eval_dir = run_dir / "eval"
    echo(f"== evaluating {run_dir} on the bundled PBMCs (annotation, edge prediction, TF attention) ==")
    quiet = {"log": lambda s: None}
    for task, fn, kw in (("annotation", evaluate_annotation, {"label_key": "cell_type"}),
                         ("edge_prediction", evaluate_edge_prediction, {"max_cells": 200, "n_boot": 100}),
                         ("attention", evaluate_attention, {"n_perm": 200})):
        fn(run_dir, counts, graph=graph, **kw, **quiet).write(eval_dir)
        echo(f"eval {task}: {eval_dir / (task + '.md')}")
    report = write_report(run_dir, eval_dir=eval_dir, embedded=embedded, log=lambda s: None)
    echo(f"report written: {Path(report.html).resolve()} (and report.md, figures beside it)")
    return report
