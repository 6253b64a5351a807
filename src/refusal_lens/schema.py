"""Schemas for the JSON artefacts a person may open and edit by hand (SAE configs, SAE sets,
latent sets, directions, interventions): one reader per artefact kind checks every field it
uses for its TYPE, not only its presence, so a hand-edited file is a one-line `error: ...`
naming the file, the field and the fix, never a traceback deep inside a stage.

A schema is built from a few small checkers::

    DIRECTION = Obj({"layer": Int(min=0), "position": Int()}, optional={"model": MODEL})
    meta = read_json(path, "direction", fix="rerun `refusal-lens direction`")
    validate(meta, DIRECTION, str(path), fix="...")

`validate` returns the value unchanged (extra keys are kept); the first field that does not
fit raises `UserError("FILE: FIELD must be WHAT, got VALUE; FIX")`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError


class SchemaError(Exception):
    """A value that does not fit: where (a dotted path) and what was expected."""

    def __init__(self, where: str, expected: str, value: Any) -> None:
        super().__init__(where, expected, value)
        self.where, self.expected, self.value = where, expected, value


def _shown(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    text = json.dumps(value) if isinstance(value, str | bool | int | float | None) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Spec:
    """Checks one value; `describe()` says what it accepts."""

    def check(self, value: Any, where: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def fail(self, value: Any, where: str) -> SchemaError:
        return SchemaError(where, self.describe(), value)


@dataclass(frozen=True)
class Int(Spec):
    """An integer (JSON numbers like 3.0 are not integers here; booleans are not numbers)."""

    min: int | None = None
    max: int | None = None

    def check(self, value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(value, where)
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            raise self.fail(value, where)

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"an integer in [{self.min}, {self.max}]"
        if self.min == 1:
            return "a positive integer"
        if self.min == 0:
            return "an integer >= 0"
        return "an integer"


@dataclass(frozen=True)
class Number(Spec):
    """A number, finite unless `finite=False` (NaN and infinities are rejected by default)."""

    finite: bool = True

    def check(self, value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(value, where)
        if self.finite and not math.isfinite(value):
            raise self.fail(value, where)

    def describe(self) -> str:
        return "a finite number" if self.finite else "a number"


@dataclass(frozen=True)
class Str(Spec):
    nonempty: bool = False

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, str) or (self.nonempty and not value.strip()):
            raise self.fail(value, where)

    def describe(self) -> str:
        return "a non-empty string" if self.nonempty else "a string"


@dataclass(frozen=True)
class Bool(Spec):
    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, bool):
            raise self.fail(value, where)

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class OneOf(Spec):
    choices: tuple[Any, ...]

    def check(self, value: Any, where: str) -> None:
        if isinstance(value, bool) or value not in self.choices:
            raise self.fail(value, where)

    def describe(self) -> str:
        return "one of " + ", ".join(json.dumps(c) for c in self.choices)


@dataclass(frozen=True)
class Maybe(Spec):
    """`null` or the inner value."""

    inner: Spec

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.inner.check(value, where)

    def describe(self) -> str:
        return f"{self.inner.describe()} or null"


@dataclass(frozen=True)
class Either(Spec):
    options: tuple[Spec, ...]

    def check(self, value: Any, where: str) -> None:
        for option in self.options:
            try:
                option.check(value, where)
                return
            except SchemaError:
                continue
        raise self.fail(value, where)

    def describe(self) -> str:
        return " or ".join(option.describe() for option in self.options)


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    min_len: int = 0
    length: int | None = None  # exactly this many items (pairs, triples)

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list | tuple):
            raise self.fail(value, where)
        if len(value) < self.min_len or (self.length is not None and len(value) != self.length):
            raise self.fail(value, where)
        for index, item in enumerate(value):
            self.item.check(item, f"{where}[{index}]")

    def describe(self) -> str:
        if self.length is not None:
            return f"a list of {self.length} (each {self.item.describe()})"
        many = "a non-empty list" if self.min_len else "a list"
        return f"{many} of {self.item.describe()}"


@dataclass(frozen=True)
class DictOf(Spec):
    """An object whose values all fit `value` (keys are any strings)."""

    value: Spec

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, Mapping):
            raise self.fail(value, where)
        for key, item in value.items():
            self.value.check(item, f"{where}.{key}" if where else str(key))

    def describe(self) -> str:
        return f"an object of {self.value.describe()}"


@dataclass(frozen=True)
class Obj(Spec):
    """An object with `required` keys and `optional` ones (absent or fitting); others pass."""

    required: Mapping[str, Spec] = field(default_factory=dict)
    optional: Mapping[str, Spec] = field(default_factory=dict)

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, Mapping):
            raise self.fail(value, where)
        for key, spec in self.required.items():
            if key not in value:
                raise SchemaError(_join(where, key), f"present ({spec.describe()})", _MISSING)
            spec.check(value[key], _join(where, key))
        for key, spec in self.optional.items():
            if key in value:
                spec.check(value[key], _join(where, key))

    def describe(self) -> str:
        return f"an object with {', '.join(self.required)}" if self.required else "an object"


@dataclass(frozen=True)
class Test(Spec):
    """Any other rule: `accept(value)` True or False, described by `text`."""

    accept: Callable[[Any], bool]
    text: str

    def check(self, value: Any, where: str) -> None:
        try:
            ok = self.accept(value)
        except (TypeError, ValueError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise self.fail(value, where)

    def describe(self) -> str:
        return self.text


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING = _Missing()


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def validate(data: Any, spec: Spec, origin: str, fix: str) -> Any:
    """`data` if it fits `spec`, else a one-line UserError naming `origin` (the file), the
    field and the fix."""
    try:
        spec.check(data, "")
    except SchemaError as error:
        if error.value is _MISSING:
            what = f"the field {error.where!r} is missing"
        elif not error.where:
            what = f"it must be {error.expected}, got {_shown(error.value)}"
        else:
            what = f"{error.where} must be {error.expected}, got {_shown(error.value)}"
        raise UserError(f"{origin}: {what}; {fix}") from None
    return data


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """The parsed JSON of `path` (a `what`, e.g. "SAE config"), or a one-line UserError for a
    missing file, a folder, unreadable bytes or invalid JSON."""
    file = Path(path)
    if file.is_dir():
        raise UserError(f"{what} {file} is a folder, not a JSON file; {fix}")
    if not file.is_file():
        raise UserError(f"{what} {file} does not exist; {fix}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{what} {file} is not UTF-8 text (byte {error.start}); {fix}") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {file} ({error.strerror or error}); {fix}") from None
    if not text.strip():
        raise UserError(f"{what} {file} is empty; {fix}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{what} {file} is not valid JSON ({error.msg} at line {error.lineno}); {fix}"
        ) from None


def pairs(values: Iterable[Sequence[Any]]) -> tuple[tuple[int, int], ...]:
    """(layer, latent) pairs of already validated JSON lists."""
    return tuple((int(a), int(b)) for a, b, *_ in values)


# The shapes several artefacts share.
INDEX = Int(min=0)
LATENT_PAIR = ListOf(INDEX, length=2)
MODEL_IDENTITY = Obj(optional={"name": Maybe(Str()), "weights_sha256": Maybe(Str())})
