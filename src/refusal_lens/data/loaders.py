"""Resolving a dataset name or file path to a `PromptSet`.

Resolution order of `load_prompts(name_or_path)`:

1. ``builtin_harmful`` / ``builtin_harmless`` (optionally ``_train`` / ``_val`` / ``_test``):
   the prompt set shipped with the package (`builtin_prompts`).
2. ``hub:owner/name[:config][@split]``: that Hugging Face hub dataset (needs the `hub` extra).
3. An existing local file (.csv, .json, .jsonl, .txt with one prompt per line).
4. A registered name (`available_datasets`), read from the data directory (argument, else
   ``$REFUSAL_LENS_DATA``), laid out as the guide's *Data* section describes; when the data
   directory is unset or lacks the file, a hub mirror of the same benchmark is tried where one
   is known.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Literal, get_args

from refusal_lens.data.files import FILE_SUFFIXES, Fields, read_table, table_to_prompts
from refusal_lens.data.hub import (
    HUB_PREFIX,
    HubSource,
    HubUnavailable,
    load_hub_table,
    parse_hub_id,
)
from refusal_lens.data.promptset import Prompt, PromptSet
from refusal_lens.errors import UserError

log = logging.getLogger(__name__)

DATA_ENV_VAR = "REFUSAL_LENS_DATA"
DATA_DIR_FIX = (
    f"pass --data-dir DIR or set {DATA_ENV_VAR}=DIR (a benchmark data folder, laid out as the "
    "guide's Data section describes)"
)

Kind = Literal["harmful", "harmless"]
Split = Literal["train", "val", "test", "all"]
_KINDS: tuple[str, ...] = get_args(Kind)
_SPLITS: tuple[str, ...] = get_args(Split)


@dataclass(frozen=True)
class _Registered:
    path: str  # relative to the data directory
    fields: Fields
    hub: HubSource | None = None
    note: str = ""


_RD = "refusal_direction"
_INSTRUCTION = Fields(text="instruction", category="category")
_XSTEST_META = ("label", "type", "focus")
_JBB_HUB = Fields(text="Goal", category="Category", meta=("Behavior", "Source"))


def _xstest(label: str | None) -> _Registered:
    where = None if label is None else ("label", label)
    fields = Fields(text="prompt", category="type", meta=_XSTEST_META, where=where)
    return _Registered(
        "xstest/xstest_prompts.csv", fields, HubSource("walledai/XSTest", fields=fields)
    )


_REGISTRY: dict[str, _Registered] = {
    "advbench": _Registered(
        "advbench/harmful_behaviors.csv",
        Fields(text="goal"),
        HubSource("walledai/AdvBench", fields=Fields(text="prompt")),
    ),
    "harmbench_test": _Registered(
        f"{_RD}/processed/harmbench_test.json",
        _INSTRUCTION,
        HubSource("walledai/HarmBench", "standard", fields=Fields(text="prompt")),
        note="the hub fallback is HarmBench 'standard' (200 behaviors: val + test)",
    ),
    "harmbench_val": _Registered(f"{_RD}/processed/harmbench_val.json", _INSTRUCTION),
    "jailbreakbench": _Registered(
        "jailbreakbench/behaviors.csv",
        Fields(text="Goal", category="Category", meta=("Behavior", "Source")),
        HubSource("JailbreakBench/JBB-Behaviors", "behaviors", "harmful", _JBB_HUB),
    ),
    "jailbreakbench_benign": _Registered(
        "jailbreakbench/benign-behaviors.csv",
        Fields(text="goal", category="category", meta=("behavior", "source")),
        HubSource("JailbreakBench/JBB-Behaviors", "behaviors", "benign", _JBB_HUB),
    ),
    "strongreject": _Registered(
        "strongreject/strongreject_dataset.csv",
        Fields(text="forbidden_prompt", category="category", meta=("source",)),
        HubSource("walledai/StrongREJECT", fields=Fields(text="prompt", category="category")),
    ),
    "xstest": _xstest(None),
    "xstest_safe": _xstest("safe"),
    "xstest_unsafe": _xstest("unsafe"),
    **{
        f"{kind}_{split}": _Registered(f"{_RD}/splits/{kind}_{split}.json", _INSTRUCTION)
        for kind in ("harmful", "harmless")
        for split in ("train", "val", "test")
    },
    "alpaca": _Registered(
        f"{_RD}/splits/harmless_test.json",
        _INSTRUCTION,
        HubSource("tatsu-lab/alpaca", fields=Fields(text="instruction", where=("input", ""))),
        note="locally the held-out Alpaca split (= harmless_test); the hub fallback is every "
        "no-input Alpaca instruction, which overlaps harmless_train",
    ),
    "malicious_instruct": _Registered(f"{_RD}/processed/malicious_instruct.json", _INSTRUCTION),
    "tdc2023": _Registered(f"{_RD}/processed/tdc2023.json", _INSTRUCTION),
}

_BUILTIN_NAMES: dict[str, tuple[Kind, Split]] = {
    f"builtin_{kind}{'' if split == 'all' else '_' + split}": (kind, split)
    for kind in ("harmful", "harmless")
    for split in ("all", "train", "val", "test")
}


def available_datasets() -> list[str]:
    """Every name `load_prompts` accepts besides file paths and ``hub:`` ids: the built-in
    sets first, then the benchmarks read from the data directory."""
    return [*_BUILTIN_NAMES, *_REGISTRY]


def check_dataset_name(name: str) -> None:
    """A one-line error unless `name` could name a prompt set: a registered or built-in name,
    a ``hub:`` id or an existing file (nothing is read; `load_prompts` reads it)."""
    text = name.strip()
    if text in _BUILTIN_NAMES or text in _REGISTRY or text.startswith(HUB_PREFIX):
        return
    if Path(text).expanduser().is_file():
        return
    if _looks_like_path(text):
        raise UserError(f"prompt file {text!r} does not exist; check the path")
    raise UserError(
        f"unknown dataset {text!r}; use one of: {', '.join(available_datasets())}, "
        "a .csv/.json/.jsonl/.txt file path, or hub:owner/name[:config][@split]"
    )


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The data directory: `data_dir` if given, else ``$REFUSAL_LENS_DATA``, else None.

    A directory that is given but does not exist is a `UserError`.
    """
    if data_dir is not None and str(data_dir).strip():
        path, origin = Path(data_dir).expanduser(), "data directory"
        fix = f"pass an existing folder to --data-dir (or set {DATA_ENV_VAR}=DIR)"
    else:
        value = os.environ.get(DATA_ENV_VAR, "").strip()
        if not value:
            return None
        path, origin = Path(value).expanduser(), f"{DATA_ENV_VAR}"
        fix = f"set {DATA_ENV_VAR} to an existing folder (or unset it, or pass --data-dir DIR)"
    if not path.exists():
        raise UserError(f"{origin} {str(path)!r} does not exist; {fix}")
    if not path.is_dir():
        raise UserError(f"{origin} {str(path)!r} is a file, not a folder; {fix}")
    return path


# --------------------------------------------------------------------------- built-in set


@functools.cache
def _builtin_rows() -> tuple[Prompt, ...]:
    resource = resources.files("refusal_lens.data").joinpath("builtin/prompts.json")
    rows = json.loads(resource.read_text(encoding="utf-8"))
    return tuple(
        Prompt(
            text=row["text"],
            category=row["category"],
            source=f"builtin_{row['kind']}",
            meta={"kind": row["kind"], "split": row["split"]},
        )
        for row in rows
    )


def builtin_prompts(kind: Kind, split: Split = "all") -> PromptSet:
    """The prompt set shipped with the package, written for this project.

    72 harmful requests (6 categories x 12) and 72 harmless instructions (6 topics x 12), each
    kind split 36 train / 12 val / 24 test, balanced across categories. Named e.g.
    ``builtin_harmful`` or ``builtin_harmless_train``.
    """
    if kind not in _KINDS:
        raise UserError(f"unknown built-in prompt kind {kind!r}; use one of: {', '.join(_KINDS)}")
    if split not in _SPLITS:
        raise UserError(f"unknown built-in split {split!r}; use one of: {', '.join(_SPLITS)}")
    name = f"builtin_{kind}" + ("" if split == "all" else f"_{split}")
    return PromptSet(name, _builtin_rows()).filter(
        lambda p: p.meta["kind"] == kind and (split == "all" or p.meta["split"] == split),
        name=name,
    )


# --------------------------------------------------------------------------- loading


def _looks_like_path(name: str) -> bool:
    return (
        os.sep in name
        or "/" in name
        or name.startswith((".", "~"))
        or Path(name).suffix.lower() in FILE_SUFFIXES
    )


def _finish(prompts: list[Prompt], name: str, where: str, limit: int | None) -> PromptSet:
    if not prompts:
        raise UserError(
            f"dataset {name} is empty ({where} has no non-blank prompts); "
            "check the file, the column option (--column) and any row filter"
        )
    return PromptSet(name, tuple(prompts)).head(limit)


def _load_file(path: Path, column: str | None, limit: int | None) -> PromptSet:
    table = read_table(path)
    prompts = table_to_prompts(table, Fields(), column=column, source=str(path), origin=str(path))
    return _finish(prompts, path.stem, str(path), limit)


def _load_hub(source: HubSource, name: str, column: str | None, limit: int | None) -> PromptSet:
    table = load_hub_table(source)  # raises HubUnavailable
    fields = source.fields
    if column is None and fields.text is not None and fields.text not in table.columns:
        fields = replace(fields, text=None)  # the mirror renamed it: auto-detect instead
    if fields.category is not None and fields.category not in table.columns:
        fields = replace(fields, category=None)
    prompts = table_to_prompts(table, fields, column=column, source=name, origin=source.label)
    return _finish(prompts, name, source.label, limit)


def _load_registered(
    name: str, entry: _Registered, data_dir: Path | None, column: str | None, limit: int | None
) -> PromptSet:
    if data_dir is not None:
        path = data_dir / entry.path
        if path.is_file():
            table = read_table(path)
            prompts = table_to_prompts(
                table, entry.fields, column=column, source=name, origin=str(path)
            )
            return _finish(prompts, name, str(path), limit)
        looked = f"it is not in the data directory (looked for {path})"
    else:
        looked = f"no data directory is set (it would be read from DIR/{entry.path})"

    if entry.hub is None:
        raise UserError(
            f"dataset {name!r} is not available: {looked}, and it has no Hugging Face hub "
            f"mirror; {DATA_DIR_FIX}"
        )
    try:
        result = _load_hub(entry.hub, name, column, limit)
    except HubUnavailable as exc:
        raise UserError(
            f"dataset {name!r} is not available: {looked}, and the Hugging Face hub fallback "
            f"({entry.hub.label}) failed: {exc}; {DATA_DIR_FIX}"
        ) from None
    log.info("loaded %s from the hub (%s) %s", name, entry.hub.label, entry.note)
    return result


def load_prompts(
    name_or_path: str,
    *,
    data_dir: str | Path | None = None,
    column: str | None = None,
    limit: int | None = None,
) -> PromptSet:
    """Load a prompt set by name, local file path or hub id; see the module docstring.

    Registered names (see `available_datasets`), relative to the data directory:

    - ``advbench``: advbench/harmful_behaviors.csv (520; hub: walledai/AdvBench)
    - ``harmbench_test`` / ``harmbench_val``: refusal_direction/processed/harmbench_*.json
      (159 / 41 standard behaviors with categories; hub for test: walledai/HarmBench
      'standard', which is val + test, 200 rows)
    - ``jailbreakbench`` / ``jailbreakbench_benign``: jailbreakbench/behaviors.csv /
      benign-behaviors.csv (100 each; hub: JailbreakBench/JBB-Behaviors)
    - ``strongreject``: strongreject/strongreject_dataset.csv (313; hub: walledai/StrongREJECT)
    - ``xstest`` / ``xstest_safe`` / ``xstest_unsafe``: xstest/xstest_prompts.csv (450 / 250 /
      200; category = type; meta label/type/focus; hub: walledai/XSTest)
    - ``harmful_{train,val,test}`` / ``harmless_{train,val,test}``: refusal_direction/splits
    - ``alpaca``: refusal_direction/splits/harmless_test.json, i.e. the 6,266 held-out Alpaca
      instructions of the refusal-direction splits (so it is disjoint from harmless_train);
      the hub fallback (tatsu-lab/alpaca) gives all no-input instructions instead
    - ``malicious_instruct``, ``tdc2023``: refusal_direction/processed/*.json

    `column` names the prompt column of a table (default: the first of instruction, prompt,
    goal, Goal, Behavior, forbidden_prompt, question, text). A category / Category /
    SemanticCategory column is kept. `limit` keeps the first N prompts. Every bad input, and an
    empty result, raises a one-line `UserError`.
    """
    if limit is not None and limit <= 0:
        raise UserError(f"limit must be a positive number of prompts, got {limit}; use 1 or more")
    name = name_or_path.strip()
    if not name:
        raise UserError("no dataset given; pass a dataset name or a prompt file path")

    builtin = _BUILTIN_NAMES.get(name)
    if builtin is not None:
        if column is not None:
            raise UserError(f"{name} is a built-in set with no columns; drop the column option")
        return builtin_prompts(*builtin).head(limit)

    if name.startswith(HUB_PREFIX):
        source = parse_hub_id(name)
        try:
            return _load_hub(source, name, column, limit)
        except HubUnavailable as exc:
            raise UserError(
                f"could not load {name}: {exc}; check the id, config and split, install the hub "
                "extra (pip install 'refusal-lens[hub]') and go online, or use a local file"
            ) from None

    path = Path(name).expanduser()
    if path.is_file():
        return _load_file(path, column, limit)

    entry = _REGISTRY.get(name)
    if entry is not None:
        return _load_registered(name, entry, resolve_data_dir(data_dir), column, limit)

    if path.is_dir():
        raise UserError(
            f"{path} is a folder, not a prompt file; give a .csv, .json, .jsonl or .txt file "
            "(a data folder goes to --data-dir)"
        )
    if _looks_like_path(name):
        raise UserError(
            f"prompt file {name!r} does not exist; check the path, or give a dataset name "
            "such as advbench or builtin_harmful"
        )
    raise UserError(
        f"unknown dataset {name!r}; use one of: {', '.join(available_datasets())}, "
        "a .csv/.json/.jsonl/.txt file path, or hub:owner/name[:config][@split]"
    )
