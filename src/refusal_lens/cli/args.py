"""What the command groups share when they register their subcommands: the `Command` that
adds one (with its handler and examples) and the flags many commands take."""

from __future__ import annotations

import argparse
import dataclasses
import math
import textwrap
import typing
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import UserError
from ..settings import DEFAULT_MODEL


class Command:
    """Adds a subcommand: its name, the function that runs it, its help, and its examples (given,
    or looked up in the registering group's EXAMPLES). `only` names the one command whose
    deferred flags are built (None: every command's, as the reference page needs)."""

    def __init__(
        self,
        sub: argparse._SubParsersAction,
        examples: Mapping[str, str],
        only: str | None = None,
    ) -> None:
        self.sub = sub
        self.examples = examples
        self.only = only

    def defer(
        self, parser: argparse.ArgumentParser, build: Callable[[argparse.ArgumentParser], None]
    ) -> None:
        """Flags that need a heavy import (settings dataclasses next to torch code): built
        only when this command is the one being run, or for the reference page."""
        if self.only is None or self.only == parser.prog.split()[-1]:
            build(parser)

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
        help="auto (bfloat16 on a GPU or a CPU with bfloat16 instructions, else float32), "
        "float32, bfloat16, float16",
    )
    group.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda, cuda:N, or balanced (the layers spread over every visible GPU)",
    )
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


class _Given(argparse.Action):
    """Stores a settings flag's value and notes that it was given, so that `--config` and
    `--set` sit below the flags a user typed (and above the field's default)."""

    def __init__(self, option_strings: list[str], dest: str, const: Any = None, **kw: Any):
        self.switch = const is not None
        super().__init__(option_strings, dest, nargs=0 if self.switch else None, const=const, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, self.const if self.switch else values)
        namespace._given = {*getattr(namespace, "_given", ()), self.dest}


def settings_flags(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()
) -> None:
    """One flag per field of the settings dataclass `cls`, so each default and its help live
    in one place: the field. `--name-with-dashes` (or the field's metadata "flag"); an int must
    be a positive integer, a float a finite number, a tuple a comma-separated list of them; a
    field with metadata "choices" takes one of them; a boolean is a switch away from its
    default (`--no-NAME` for a default of True). The parsed value lands in `args.<field>`.

    The first call on a parser also adds `--config FILE` (a TOML table named after the command)
    and `--set NAME=VALUE`: default < file < --set < flag, read by `settings_from`."""
    known = getattr(parser, "_settings_fields", None)
    if known is None:
        known = parser._settings_fields = set()  # type: ignore[attr-defined]
        command = parser.prog.split()[-1]
        parser.add_argument(
            "--config",
            metavar="FILE",
            help=f"TOML file whose [{command}] table sets any of the settings below "
            "(default < file < --set < flag)",
        )
        parser.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="set one of the settings below by its field name (repeatable)",
        )
        parser.set_defaults(_command=command)
    for item in dataclasses.fields(cls):
        if item.name in skip or not item.init:
            continue
        known.add(item.name)
        field_flag(parser, item)
    parser.set_defaults(_settings_fields=frozenset(known))


def field_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, item: Any) -> None:
    """The flag of one settings field (see `settings_flags`)."""
    default = item.default
    kind = str(item.type)
    flag = "--" + item.metadata.get("flag", item.name.replace("_", "-"))
    help_text = item.metadata.get("help", "")
    if kind == "bool":
        if default and "flag" not in item.metadata:
            flag = "--no-" + item.name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=item.name,
            action=_Given,
            const=not default,
            default=default,
            help=help_text or None,
        )
        return
    shown = item.metadata.get("default", default)
    if kind.startswith("tuple[str"):
        convert: Callable[[str], Any] = name_list
        shown = item.metadata.get("default", ",".join(default))
    elif kind.startswith("tuple["):
        convert = number_list(flag, kind.startswith("tuple[int"))
        shown = item.metadata.get("default", ",".join(f"{x:g}" for x in default))
    elif kind.startswith("int"):
        convert = int if item.metadata.get("signed") else positive
    elif kind.startswith("float"):
        convert = finite
    else:
        convert = str
    suffix = "" if shown is None else f" (default: {shown})"
    parser.add_argument(
        flag,
        dest=item.name,
        action=_Given,
        metavar=None
        if "choices" in item.metadata
        else item.metadata.get("metavar", flag[2:].upper().replace("-", "_")),
        type=convert,
        default=default,
        choices=item.metadata.get("choices"),
        help=f"{help_text}{suffix}".strip().replace("%", "%%"),
    )


def executor_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `ExecutorSettings` (where a long command's work items run)."""
    from ..executors.settings import ExecutorSettings

    group = parser.add_argument_group("executor (where work items run)")
    for item in dataclasses.fields(ExecutorSettings):
        field_flag(group, item)


def executor_from(args: argparse.Namespace) -> Any:
    from ..executors.settings import ExecutorSettings

    return ExecutorSettings(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(ExecutorSettings)}
    )


def name_list(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated names (blanks dropped)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def number_list(flag: str, integers: bool) -> Callable[[str], tuple[float, ...]]:
    """An argparse type: comma-separated finite numbers (positive integers if `integers`)."""

    def convert(text: str) -> tuple[float, ...]:
        try:
            numbers = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes comma-separated numbers, got {text!r}"
            ) from None
        if not all(math.isfinite(x) for x in numbers):
            raise argparse.ArgumentTypeError(f"{flag} takes finite numbers, got {text!r}")
        if integers and not all(x.is_integer() and x > 0 for x in numbers):
            raise argparse.ArgumentTypeError(f"{flag} takes positive integers, got {text!r}")
        return tuple(int(x) for x in numbers) if integers else tuple(numbers)

    return convert


def settings_from(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """The settings dataclass `cls` from the flags `settings_flags` made, over the command's
    `--config` table and `--set` values (default < file < --set < a flag typed), plus `fixed`
    values. A name in the file or in `--set` that is no setting of the command is an error."""
    from ..config import coerce, read_table

    hints = typing.get_type_hints(cls)
    known = getattr(args, "_settings_fields", frozenset())
    layers: list[tuple[str, dict[str, Any]]] = []
    if getattr(args, "config", None):
        layers.append((args.config, read_table(args.config, args._command)))
    overrides: dict[str, Any] = {}
    for item in getattr(args, "set", None) or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--set {item!r} is not NAME=VALUE; e.g. --set k=30")
        overrides[name.strip().replace("-", "_")] = value.strip()
    layers.append(("--set", overrides))
    for origin, values in layers:
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"{origin}: {', '.join(unknown)} is no setting of {args._command}; known: "
                + ", ".join(sorted(known))
            )
    given = getattr(args, "_given", set())
    result: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        name = item.name
        if not item.init or name in fixed:
            continue
        value = getattr(args, name) if hasattr(args, name) else item.default
        if name not in given:
            for origin, values in layers:
                if name in values:
                    value = coerce(values[name], hints[name], name, origin)
        if value is not dataclasses.MISSING:
            result[name] = value
    return cls(**{**result, **fixed})
