"""The `ingot` command. Each verb lives in its own module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import logging
import sys

from ingot.errors import IngotError

# Modules that each add one or more verbs; imported lazily-light (argparse only at import).
_VERB_MODULES = (
    "ingot.commands.build",
    "ingot.commands.run",
    "ingot.commands.inspect",
    "ingot.commands.bench",
    "ingot.commands.serve",
    "ingot.commands.profiles",
    "ingot.commands.eval",
    "ingot.plan.cli",
)


def make_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="ingot", description="Build and run LLM inference engines.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _VERB_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # benchmark records name the command
    # The engine reports its KV-cache size and concurrency at start through the "ingot" logger.
    logging.basicConfig(level=logging.INFO, format="ingot: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except IngotError as exc:
        print(f"ingot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
