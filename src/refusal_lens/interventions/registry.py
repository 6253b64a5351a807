"""How each serialisable intervention kind is read back from its `to_dict()`.

A kind registers its reader with `@reads(kind, schema)`; `from_dict` checks the fields against
that schema, then calls the reader. A new kind is one new module with one registered reader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import schema
from ..errors import UserError

INTERVENTION_FIX = (
    "write it as `to_dict()` / `steer --json` do (kind, and that kind's fields with their types)"
)
# A reader returns the intervention (typed as `Intervention` by `sets.from_dict`, which knows
# every kind; this module sits below them all).
Reader = Callable[[dict[str, Any]], Any]
# kind -> (schema of its fields, reader)
_READERS: dict[str, tuple[Any, Reader]] = {}


def reads(kind: str, fields: Any) -> Callable[[Reader], Reader]:
    """Register the reader of one intervention kind (its `to_dict()` back to the object)."""

    def register(reader: Reader) -> Reader:
        _READERS[kind] = (fields, reader)
        return reader

    return register


def readable(kind: str) -> bool:
    """Whether an intervention of this kind can be read back from its `to_dict()` (what a
    worker elsewhere needs); some kinds' `to_dict()` is only a key (per-prompt sets)."""
    return kind in _READERS


def read(data: dict[str, Any], origin: str = "intervention") -> Any:
    """The object of a serialised intervention; every field is checked for its type first, so
    a hand-written one is a one-line error naming `origin` and the field."""
    schema.validate(data, schema.Obj(required={"kind": schema.Str()}), origin, INTERVENTION_FIX)
    kind = data["kind"]
    if kind not in _READERS:
        raise UserError(f"unknown intervention kind {kind!r}; known: {', '.join(_READERS)}")
    fields, reader = _READERS[kind]
    schema.validate(data, fields, origin, INTERVENTION_FIX)
    return reader(data)
