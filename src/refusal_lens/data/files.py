"""Reading prompt tables from local CSV / JSON / JSONL / TXT files into `Prompt`s."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from refusal_lens.data.promptset import Prompt
from refusal_lens.errors import UserError

# Tried in this order when no column is given.
TEXT_COLUMNS: tuple[str, ...] = (
    "instruction",
    "prompt",
    "goal",
    "Goal",
    "Behavior",
    "forbidden_prompt",
    "question",
    "text",
)
CATEGORY_COLUMNS: tuple[str, ...] = ("category", "Category", "SemanticCategory")
FILE_SUFFIXES: tuple[str, ...] = (".csv", ".json", ".jsonl", ".txt")

Row = Mapping[str, object]


@dataclass(frozen=True)
class Table:
    """Rows read from a file: either records with columns, or bare strings (`columns` empty)."""

    columns: tuple[str, ...]
    rows: tuple[Row, ...] = ()
    strings: tuple[str, ...] = ()

    @property
    def is_records(self) -> bool:
        return bool(self.columns)


@dataclass(frozen=True)
class Fields:
    """Which columns of a table make up a prompt."""

    text: str | None = None  # None: auto-detect from TEXT_COLUMNS
    category: str | None = None  # None: auto-detect from CATEGORY_COLUMNS
    meta: tuple[str, ...] = ()
    where: tuple[str, str] | None = None  # keep only rows whose column equals the value


def _short(value: str, limit: int = 40) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; check the path") from None


def read_csv(path: Path) -> Table:
    """A header row then one record per row; multi-line quoted fields are fine, ragged rows not."""
    text = _read_text(path)
    if not text.strip():
        raise UserError(
            f"{path} is empty; give a CSV file with a header row and one prompt per row"
        )
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[dict[str, object]] = []
    header: list[str] | None = None
    try:
        for record in reader:
            if not record or all(not cell.strip() for cell in record):
                continue  # blank line
            if header is None:
                header = [cell.strip() for cell in record]
                continue
            if len(record) != len(header):
                raise UserError(
                    f"{path} is not valid CSV: the row ending on line {reader.line_num} has "
                    f"{len(record)} field(s) but the header has {len(header)} (ragged row); "
                    "quote fields that contain commas and give every row the same columns"
                )
            rows.append(dict(zip(header, record, strict=True)))
    except csv.Error as exc:
        raise UserError(
            f"{path} is not valid CSV (line {reader.line_num}: {_one_line(str(exc))}); "
            "check for an unbalanced double quote"
        ) from None
    if header is None:
        raise UserError(
            f"{path} is empty; give a CSV file with a header row and one prompt per row"
        )
    if not rows:
        raise UserError(f"{path} has a header but no rows; add one prompt per row")
    return Table(columns=tuple(header), rows=tuple(rows))


def _items_table(path: Path, items: Sequence[object], where: str) -> Table:
    """A list of strings or a list of objects, as found in a JSON array or JSONL lines."""
    if not items:
        raise UserError(f"{path} is empty; give a list of prompt strings or objects")
    if all(isinstance(item, str) for item in items):
        return Table(columns=(), strings=tuple(str(item) for item in items))
    if not any(isinstance(item, dict) for item in items):  # a list of prompts, not all text
        index, item = next((i, x) for i, x in enumerate(items) if not isinstance(x, str))
        raise UserError(
            f"{path}: {where} {index + 1} is {_json_type(item)}, not a string; prompts must "
            "be strings (quote them)"
        )
    columns: dict[str, None] = {}
    rows: list[Row] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(
                f"{path}: {where} {index + 1} is {_json_type(item)} but other entries are "
                "objects; use a list of strings or a list of objects, not a mix"
            )
        columns.update(dict.fromkeys(str(k) for k in item))
        rows.append({str(k): v for k, v in item.items()})
    return Table(columns=tuple(columns), rows=tuple(rows))


def read_json(path: Path) -> Table:
    text = _read_text(path)
    if not text.strip():
        raise UserError(f"{path} is empty; give a JSON list of prompt strings or objects")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); "
            "fix the syntax or save it as .jsonl / .txt"
        ) from None
    if not isinstance(data, list):
        raise UserError(
            f"{path} holds a JSON {type(data).__name__}, not a list; "
            "give a list of prompt strings or a list of objects"
        )
    return _items_table(path, data, "item")


def read_jsonl(path: Path) -> Table:
    items: list[object] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path} is not valid JSONL (line {lineno}: {exc.msg}); "
                "put exactly one JSON object or string on each line"
            ) from None
    if not items:
        raise UserError(f"{path} is empty; give one JSON object or string per line")
    return _items_table(path, items, "line")


def read_txt(path: Path) -> Table:
    lines = [line.strip() for line in _read_text(path).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise UserError(f"{path} is empty; give one prompt per line")
    return Table(columns=(), strings=tuple(lines))


READERS = {".csv": read_csv, ".json": read_json, ".jsonl": read_jsonl, ".txt": read_txt}


def read_table(path: Path) -> Table:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(
            f"unsupported prompt file type {path.suffix or '(no extension)'!r} for {path}; "
            "use .csv, .json, .jsonl or .txt (one prompt per line)"
        )
    return reader(path)


def _describe_columns(columns: Sequence[str]) -> str:
    shown = ", ".join(repr(_short(c)) for c in columns[:20])
    return shown + (f" and {len(columns) - 20} more" if len(columns) > 20 else "")


def pick_text_column(columns: Sequence[str], requested: str | None, origin: str) -> str:
    """The requested column (which must exist) or the first of `TEXT_COLUMNS` present."""
    if requested is not None:
        if requested not in columns:
            raise UserError(
                f"{origin} has no column {requested!r}; available columns: "
                f"{_describe_columns(columns)}; pass one of them as the column (--column)"
            )
        return requested
    for candidate in TEXT_COLUMNS:
        if candidate in columns:
            return candidate
    raise UserError(
        f"{origin} has none of the usual prompt columns ({', '.join(TEXT_COLUMNS)}); "
        f"available columns: {_describe_columns(columns)}; name the prompt column (--column)"
    )


def pick_category_column(columns: Sequence[str], requested: str | None) -> str | None:
    if requested is not None and requested in columns:
        return requested
    return next((c for c in CATEGORY_COLUMNS if c in columns), None)


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list"}
    names |= {dict: "an object", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def _as_text(
    value: object, origin: str, column: str, index: int, *, prompt: bool = False
) -> str | None:
    """Stripped text, or None for a missing / blank cell. A prompt (`prompt=True`) must be
    text: a number or boolean in the prompt column is an error, not the prompt "5"."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if prompt and isinstance(value, bool | int | float):
        raise UserError(
            f"{origin}: row {index + 1} column {column!r} holds {_json_type(value)} "
            f"({value!r}), not text; prompts must be strings (quote them, or point the column "
            "option --column at the text column)"
        )
    if isinstance(value, bool | int | float):
        return str(value)
    raise UserError(
        f"{origin}: row {index + 1} column {column!r} holds a {type(value).__name__}, not text; "
        "point the column option (--column) at a text column"
    )


def table_to_prompts(
    table: Table, fields: Fields, *, column: str | None, source: str, origin: str
) -> list[Prompt]:
    """Turn a table into prompts. `column` (user's choice) overrides `fields.text`.

    Rows whose text is missing or blank are skipped.
    """
    if not table.is_records:
        if column is not None:
            raise UserError(
                f"{origin} is a plain list of prompts with no columns; drop the column option "
                f"({column!r})"
            )
        return [Prompt(text=t.strip(), source=source) for t in table.strings if t.strip()]

    requested = column if column is not None else fields.text
    text_col = pick_text_column(table.columns, requested, origin)
    cat_col = pick_category_column(table.columns, fields.category)
    if fields.where is not None and fields.where[0] not in table.columns:
        raise UserError(
            f"{origin} has no column {fields.where[0]!r} to select rows by; "
            f"available columns: {_describe_columns(table.columns)}; check the data file"
        )
    prompts: list[Prompt] = []
    for index, row in enumerate(table.rows):
        if fields.where is not None:
            key, wanted = fields.where
            value = row.get(key)
            if ("" if value is None else str(value).strip()) != wanted:
                continue
        text = _as_text(row.get(text_col), origin, text_col, index, prompt=True)
        if text is None:
            continue
        category = None if cat_col is None else _as_text(row.get(cat_col), origin, cat_col, index)
        meta: dict[str, str] = {}
        for key in fields.meta:
            value = _as_text(row.get(key), origin, key, index)
            if value is not None:
                meta[key.lower()] = value
        prompts.append(Prompt(text=text, category=category, source=source, meta=meta))
    return prompts
