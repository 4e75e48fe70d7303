"""`grn-jax` command line: thin; each subcommand parses, then calls one library function.

Subcommands are registered by small `_add_*` functions listed in `_REGISTRARS`;
heavy imports happen inside the handlers so `grn-jax --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


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


_REGISTRARS: list[Callable] = [
    _add_version,
    _add_model,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grn-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
