"""What the command groups share when they register their subcommands: the `Command` that
adds one (with its handler and examples) and the flags many commands take."""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Callable, Mapping

from ..settings import DEFAULT_MODEL


class Command:
    """Adds a subcommand: its name, the function that runs it, its help, and its examples (given,
    or looked up in the registering group's EXAMPLES)."""

    def __init__(self, sub: argparse._SubParsersAction, examples: Mapping[str, str]) -> None:
        self.sub = sub
        self.examples = examples

    def __call__(
        self,
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help_text: str,
        examples: str = "",
    ) -> argparse.ArgumentParser:
        text = textwrap.dedent(examples or self.examples[name]).strip()
        parser = self.sub.add_parser(
            name,
            help=help_text.replace("%", "%%"),  # argparse formats help, not descriptions
            description=help_text,
            epilog="examples:\n" + textwrap.indent(text, "  "),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(handler=handler)
        return parser


METHOD_CHOICES = ("ours", "cossim", "actdiff", "ap", "random")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,  # None = not given: a run folder's or config's model, else DEFAULT_MODEL
        help="registered alias, HF hub id, local HF folder or .gguf file (default: the run's or "
        f"config's model, else {DEFAULT_MODEL})",
    )
    group.add_argument(
        "--dtype",
        default="auto",
        help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    group.add_argument(
        "--system", default=None, help="system prompt (default: whatever the chat template inserts)"
    )
    group.add_argument(
        "--cache-dir",
        default=None,
        help="where converted models are cached (default: $REFUSAL_LENS_CACHE or "
        "the user cache dir)",
    )
    group.add_argument("--batch-size", type=positive, default=16)
    group.add_argument("--seed", type=int, default=0)


def add_data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        help="benchmark data folder in the layout of the guide's Data section (default: "
        "$REFUSAL_LENS_DATA; without one, built-in prompts are used)",
    )


def add_judge_arg(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--judge",
        action="append",
        metavar="SPEC",
        help="judge spec, repeatable: name or name:key=value,... (see `refusal-lens judges`; "
        f"default: {default}); --model is the compliance judge's fluency model",
    )


def add_intervention_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--ablate-direction",
        metavar="RUN",
        help="ablate the refusal direction saved in RUN at every layer",
    )
    group.add_argument(
        "--add-direction", metavar="RUN", help="add the refusal direction saved in RUN at its layer"
    )
    parser.add_argument(
        "--coeff",
        type=finite,
        default=1.0,
        help="scale of the added direction (with --add-direction)",
    )
    parser.add_argument(
        "--intervention",
        metavar="FILE",
        help="JSON intervention(s) to apply (one object, a list, or an object with an "
        "'interventions' list, as `steer --json` prints)",
    )


def positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def finite(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number
