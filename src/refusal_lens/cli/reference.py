"""The command-line reference page (docs/cli.md), generated from the parser itself.

    python -m refusal_lens.cli.reference > docs/cli.md

A test regenerates it and compares, so the page cannot drift from the commands.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .parser import build_parser

WIDTH = 100
HEADER = """# Command-line reference

Every `refusal-lens` command with its flags and defaults, as `--help` prints them. This page
is generated from the parser (`python -m refusal_lens.cli.reference > docs/cli.md`) and a
test checks that it is current. The [guide](guide.md) says when to use which.
"""


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help to $COLUMNS; fix it so the page is the same on every terminal."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subcommands here and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def reference() -> str:
    with _columns(WIDTH):
        parser = build_parser()
        parts = [HEADER, "```text", parser.format_help().rstrip(), "```", ""]
        for name, command in _commands(parser).items():
            parts += [f"## {name}", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference(), end="")
