"""The `reasonseg` command: one verb per job, each a thin shell over a Python function.

Each verb lives in its own module under ``reasonseg.cli`` and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (a callable taking the parsed args and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import ReasonSegError

# verb module names, in the order `reasonseg --help` lists them
VERB_MODULES = [
    "chat",
    "predict",
    "eval",
    "eval_masks",
    "train",
    "export",
    "average",
    "build",
    "convert",
    "data",
    "world",
    "serve",
    "pretrain",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasonseg", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f"reasonseg.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"reasonseg.cli.{name}":
                continue  # verb not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ReasonSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
