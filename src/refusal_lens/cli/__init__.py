"""Command line: one subcommand per stage. It only parses, calls the stage and prints."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from ..errors import UserError
from .parser import build_parser


def _commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    """Every subcommand and the function that runs it, as the command groups registered them."""
    parser = build_parser(only="")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: command.get_default("handler") for name, command in sub.choices.items()}


COMMANDS = _commands()


def _chosen(argv: Sequence[str]) -> str:
    """The subcommand named on the command line ("" for none, e.g. a bare --help)."""
    return next((arg for arg in argv if not arg.startswith("-")), "")


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(only=_chosen(given)).parse_args(given)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.handler(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
