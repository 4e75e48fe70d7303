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


_REGISTRARS: list[Callable] = [
    _add_version,
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
