"""The argument parser: each command group (`foundation`, `saes`, `latents`, `judging`,
`evaluation`, `analyses`, `playground`) registers its own subcommands, in the method's
order."""

from __future__ import annotations

import argparse
from typing import NoReturn

from . import analyses, evaluation, foundation, judging, latents, playground, saes
from .args import Command

GROUPS = (foundation, saes, latents, judging, evaluation, analyses, playground)


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line on stderr, `error: ...` naming the
    command and pointing at its --help, exit code 2 (argparse prints the usage block too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand; `only` names the one about to run, so that only its deferred flags
    (settings dataclasses that live beside torch code) are built (None: all of them)."""
    parser = Parser(
        prog="refusal-lens", description="Find, ablate and explain refusal in chat language models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(Command(sub, getattr(group, "EXAMPLES", {}), only))
    return parser
