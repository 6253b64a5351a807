"""Typed settings from three layers: a TOML file < environment variables < command-line flags.

A settings class is a (frozen) dataclass; nested dataclass fields are TOML tables. The same
dotted name addresses a field everywhere: `capabilities.limit` is `[capabilities] limit = ...`
in the file, `PREFIX_CAPABILITIES__LIMIT=...` in the environment and `--set
capabilities.limit=...` on the command line. Every value is checked against the field's type,
and an unknown name or a bad value is a one-line error that names it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def coerce(value: Any, tp: Any, name: str, origin: str) -> Any:
    """`value` (from TOML, or a string from the environment or a flag) as type `tp`."""
    optional, inner = _optional(tp)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("", "none"))):
        return None
    bad = UserError(f"{origin}: {name} = {value!r} is not a valid {_describe(tp)}")
    if typing.get_origin(inner) is tuple:
        item_type = typing.get_args(inner)[0]
        if isinstance(value, str):
            separator = ";" if ";" in value else ","  # ';' when items hold commas (judge specs)
            value = [v.strip() for v in value.split(separator) if v.strip()]
        if not isinstance(value, list | tuple):
            raise bad
        return tuple(coerce(v, item_type, name, origin) for v in value)
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if inner in (int, float):
        if isinstance(value, bool):
            raise bad
        try:
            number = inner(value)
        except (TypeError, ValueError):
            raise bad from None
        if inner is int and isinstance(value, float) and not value.is_integer():
            raise bad
        if not math.isfinite(number):
            raise UserError(f"{origin}: {name} = {value!r} is not a finite number")
        if inner is int and number < 0 and "seed" not in name:
            # integer settings are counts, sizes, limits and positions: none is negative
            raise UserError(f"{origin}: {name} = {value!r} is negative; give 0 or more")
        return number
    if inner is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise UserError(f"{origin}: {name} has a type settings cannot read ({tp})")


def _describe(tp: Any) -> str:
    optional, inner = _optional(tp)
    if typing.get_origin(inner) is tuple:
        text = f"comma list of {typing.get_args(inner)[0].__name__}"
    else:
        text = getattr(inner, "__name__", str(inner))
    return f"{text} (or none)" if optional else text


def _apply(values: dict[str, Any], cls: type, name: str, raw: Any, origin: str) -> None:
    """Set dotted `name` in the nested dict `values` of dataclass `cls`."""
    head, _, rest = name.partition(".")
    hints = _hints(cls)
    if head not in hints:
        known = ", ".join(sorted(hints))
        raise UserError(f"{origin}: unknown setting {head!r}; known: {known}")
    tp = hints[head]
    if _is_dataclass_type(tp):
        nested = values.setdefault(head, {})
        if rest:
            _apply(nested, tp, rest, raw, origin)
            return
        if not isinstance(raw, Mapping):
            raise UserError(f"{origin}: {head} is a table of settings, not a value")
        for key, value in raw.items():
            _apply(nested, tp, key, value, origin)
        return
    if rest:
        raise UserError(f"{origin}: {head} is a value, not a table ({name!r})")
    values[head] = coerce(raw, tp, head, origin)


def _build(cls: type[T], values: Mapping[str, Any]) -> T:
    """`cls` from its defaults and `values`; a nested table overrides only the keys it gives,
    on top of the field's own default (which may differ from the nested class' defaults)."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in values.items():
        if _is_dataclass_type(hints[key]) and isinstance(value, Mapping):
            base = _field_default(fields[key])
            value = _build(hints[key], value) if base is None else _overlay(base, value)
        kwargs[key] = value
    return cls(**kwargs)


def _field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _overlay(base: Any, values: Mapping[str, Any]) -> Any:
    """A copy of the dataclass instance `base` with `values` (nested tables overlaid too)."""
    hints = _hints(type(base))
    changes = {
        key: _overlay(getattr(base, key), value)
        if _is_dataclass_type(hints[key]) and isinstance(value, Mapping)
        else value
        for key, value in values.items()
    }
    return dataclasses.replace(base, **changes)


def _env_names(cls: type, prefix: str, path: str = "") -> dict[str, str]:
    """Environment variable name -> dotted setting name, for every field."""
    names = {}
    for key, tp in _hints(cls).items():
        dotted = f"{path}{key}"
        if _is_dataclass_type(tp):
            names.update(_env_names(tp, prefix, dotted + "."))
        else:
            names[prefix + dotted.replace(".", "__").upper()] = dotted
    return names


def load_settings(
    cls: type[T],
    *,
    file: str | Path | None = None,
    env_prefix: str | None = None,
    overrides: Sequence[str] = (),
    table: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> T:
    """Settings of dataclass `cls`: its defaults < `defaults` < `file` (the `[table]` of a TOML
    file, or the whole file) < environment (`env_prefix` + NAME) < `overrides` ("a.b=value")."""
    values: dict[str, Any] = {}
    for key, value in (defaults or {}).items():
        _apply(values, cls, key, value, "preset")
    if file is not None:
        for key, value in read_table(file, table).items():
            _apply(values, cls, key, value, str(file))
    if env_prefix:
        for variable, dotted in _env_names(cls, env_prefix).items():
            if variable in os.environ:
                _apply(values, cls, dotted, os.environ[variable], f"${variable}")
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--set {item!r} is not NAME=VALUE")
        _apply(values, cls, name.strip(), value.strip(), "--set")
    try:
        return _build(cls, values)
    except UserError:
        raise
    except (TypeError, ValueError) as error:
        raise UserError(f"invalid settings: {error}") from None


def read_table(file: str | Path, table: str | None = None) -> dict[str, Any]:
    """The `[table]` of a TOML file (the whole file when `table` is None), checked to be a
    table; anything outside it is an error naming the table."""
    path = Path(file)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 text (byte {error.start}); TOML files are UTF-8: re-save it"
        ) from None
    except OSError as error:
        raise UserError(f"cannot read config file {path} ({error.strerror or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML ({error})") from None
    if table is None:
        return data
    other = sorted(set(data) - {table})
    if other:
        raise UserError(
            f"{path}: settings belong in a [{table}] table; found {', '.join(other)} outside it"
        )
    inner = data.get(table, {})
    if not isinstance(inner, dict):
        raise UserError(f"{path}: {table} must be a table ([{table}]), not a value")
    return inner


def settings_dict(settings: Any) -> dict[str, Any]:
    """The settings as plain data (for manifests and the report)."""
    return dataclasses.asdict(settings)
