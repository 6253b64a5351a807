"""Judges by spec string, ``name[:key=value,...]``: checked before anything loads, then built
from the registry that the built-in judges (`judges.builtin`) and `register_judge` fill."""

from __future__ import annotations

import inspect

from ..errors import UserError
from . import builtin  # noqa: F401  (registers the built-in judges)
from .base import _REGISTRY, Judge, JudgeContext
from .degenerate import Screened


def judge_names() -> dict[str, str]:
    """Registered judges and a one-line summary of each."""
    return {name: summary for name, (_, summary) in sorted(_REGISTRY.items())}


def parse_judge_spec(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.strip().partition(":")
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"judge option {item!r} in {spec!r} is not key=value")
        options[key.strip().replace("-", "_")] = value.strip()
    return name, options


def check_judge_spec(spec: str) -> tuple[str, dict[str, str]]:
    """The judge's name and options if `spec` names a registered judge with options it takes
    (nothing is loaded: commands check their judges before the model loads)."""
    name, options = parse_judge_spec(spec)
    if name not in _REGISTRY:
        raise UserError(f"unknown judge {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    factory, _ = _REGISTRY[name]
    parameters = {p: v for p, v in inspect.signature(factory).parameters.items() if p != "context"}
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise UserError(
            f"judge {name!r} has no option {', '.join(unknown)}; "
            f"its options: {', '.join(parameters) or 'none'}"
        )
    missing = [p for p, v in parameters.items() if v.default is v.empty and p not in options]
    if missing:
        raise UserError(f"judge {name!r} needs {', '.join(f'{m}=...' for m in missing)}")
    return name, options


def make_judge(spec: str, context: JudgeContext | None = None) -> Judge:
    """Build a judge from `name[:key=value,...]`; `context` carries shared objects (for example
    the evaluated model, which the first-token and compliance judges need). A judge that reads
    completions comes wrapped in the degenerate screen (`degenerate.Screened`)."""
    name, options = check_judge_spec(spec)
    factory, _ = _REGISTRY[name]
    try:
        judge = factory(context or JudgeContext(), **options)
    except ValueError as error:
        raise UserError(f"judge {spec!r}: an option has a bad value ({error})") from None
    if not judge.reads_completions:
        return judge
    return Screened(judge)
