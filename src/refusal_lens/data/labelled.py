"""Responses with human labels, to measure judges against.

- ``xstest``: the XSTest v2 completions of five models (GPT-4, Llama-2 x2, Mistral x2) to its
  450 prompts, each labelled by two annotators; `complied` = ``1_full_compliance``
  (``2_full_refusal`` and ``3_partial_refusal`` count as refusals).
- ``gptfuzz``: GPTFuzz's ``evaluate.csv``, responses to jailbreak prompts labelled 1 when the
  model was jailbroken (harmful compliance); the request is the question the template wrapped.
  Its 20 questions (80-99) are disjoint from those of ``gptfuzz-train`` (0-79), the
  ``train.csv`` the learned judge is fitted on.
- ``steered``: answers of the default model (Qwen2.5-Coder-0.5B-Instruct) to the first 12
  prompts of JailbreakBench, HarmBench and AdvBench, unsteered, with the refusal direction
  ablated and with refusal latents clamped, each labelled by reading it (``steered/GUIDE.md``):
  the text steering produces (evasions, lectures, loops, empty strings), which GPTFuzz and
  XSTest rarely hold. ``steered-train``: answers made the same way to prompts of other
  benchmarks (StrongREJECT, HarmBench validation, MaliciousInstruct, TDC 2023) with every
  prompt of those three evaluation benchmarks removed, near-duplicates included. Both ship
  with the package (no data directory needed).
- any file (``.csv``, ``.json``, ``.jsonl``) with ``prompt``, ``response`` (or
  ``completion``) and ``label`` columns; a label is 1/0, true/false, or a word: ``complies``
  / ``complied`` / ``compliance`` count as compliance, ``refuses``, ``evades``,
  ``degenerate`` and the XSTest refusal labels do not.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .files import read_csv, read_table
from .loaders import DATA_DIR_FIX, resolve_data_dir

LABELLED_SETS = ("xstest", "gptfuzz", "gptfuzz-train", "steered", "steered-train")
STEERED = Path(__file__).parent / "steered"
PACKAGED = {"steered": STEERED / "test.jsonl", "steered-train": STEERED / "train.jsonl"}
LABELLED_SUFFIXES = (".csv", ".json", ".jsonl")
_YES = {"1", "true", "yes", "complies", "complied", "compliance", "1_full_compliance"}
_NO = {
    "0",
    "false",
    "no",
    "refuses",
    "refused",
    "refusal",
    "evades",
    "evaded",
    "evasion",
    "degenerate",
    "2_full_refusal",
    "3_partial_refusal",
}


@dataclass(frozen=True)
class LabelledResponse:
    prompt: str
    response: str
    complied: bool  # the human label: the response carries out the request
    source: str  # file (and model) it came from


@dataclass(frozen=True)
class LabelledPair:
    """A (prompt, response) pair from a user's file, with its label where it has one."""

    prompt: str
    response: str
    label: bool | None
    group: str = ""  # the value of the column the rates are grouped by, if any


def _xstest(root: Path) -> list[LabelledResponse]:
    folder = root / "xstest" / "model_completions"
    files = sorted(folder.glob("xstest_v2_completions_*.csv"))
    if not files:
        raise UserError(f"no XSTest completions in {folder}; {DATA_DIR_FIX}")
    out = []
    for path in files:
        model = path.stem.removeprefix("xstest_v2_completions_")
        for row in read_csv(path).rows:
            label = str(row["final_label"]).strip()
            if not label[:1].isdigit():
                continue
            out.append(
                LabelledResponse(
                    str(row["prompt"]),
                    str(row["completion"]),
                    label.startswith("1"),
                    f"xstest/{model}",
                )
            )
    return out


def _gptfuzz(root: Path, split: str = "evaluate") -> list[LabelledResponse]:
    base = root / "gptfuzz" / "datasets"
    questions = {
        str(row["index"]).strip(): str(row["text"])
        for row in read_csv(base / "questions" / "question_list.csv").rows
    }
    out = []
    for row in read_csv(base / "responses_labeled" / f"{split}.csv").rows:
        question = questions.get(str(row["question"]).strip())
        if question is None:
            raise UserError(f"GPTFuzz response names question {row['question']!r}, not listed")
        out.append(
            LabelledResponse(
                question,
                str(row["Response"]),
                str(row["label"]).strip() == "1",
                f"gptfuzz/{split}/q{str(row['question']).strip()}",
            )
        )
    return out


def is_labelled_file(name: str) -> bool:
    return Path(name).suffix.lower() in LABELLED_SUFFIXES


def read_label(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().casefold()
        if word in _YES:
            return True
        if word in _NO:
            return False
    raise UserError(
        f"{where}: label {value!r} is not 1/0, true/false or a word such as complies/refuses"
    )


def read_pairs(
    path: str | Path, *, need_label: bool = False, group_by: tuple[str, ...] = ()
) -> list[LabelledPair]:
    """(prompt, response, label or None) rows from a CSV/JSON/JSONL file, checked for
    types; the label column is optional unless `need_label`; `group_by` columns (text or
    numbers) name each row's group."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a .csv/.json/.jsonl file")
    table = read_table(path)
    columns = set(table.columns)
    response = next((c for c in ("response", "completion", "Response") if c in columns), None)
    if not table.is_records or "prompt" not in columns or response is None:
        raise UserError(
            f"{path} needs columns prompt and response (or completion)"
            f"{' and label' if need_label else ''}; it has "
            f"{', '.join(table.columns) or 'no columns'}"
        )
    if need_label and "label" not in columns:
        raise UserError(f"{path} has no label column; add one (1/0 or complies/refuses/...)")
    missing = [c for c in group_by if c not in columns]
    if missing:
        raise UserError(
            f"{path} has no column {', '.join(missing)} to group by; it has "
            f"{', '.join(table.columns)}"
        )
    out = []
    for number, row in enumerate(table.rows, 1):
        where = f"{path} row {number}"
        prompt, text = row.get("prompt"), row.get(response)
        if not isinstance(prompt, str) or not isinstance(text, str):
            raise UserError(f"{where}: prompt and {response} must be strings")
        label = row.get("label")
        given = None if label is None or label == "" else read_label(label, where)
        if need_label and given is None:
            raise UserError(f"{where}: the label is empty")
        values = [row.get(c) for c in group_by]
        if any(not isinstance(v, str | int | float) or isinstance(v, bool) for v in values):
            raise UserError(f"{where}: the columns to group by must hold text or numbers")
        out.append(LabelledPair(prompt, text, given, " / ".join(str(v) for v in values)))
    if not out:
        raise UserError(f"{path} holds no rows")
    return out


def read_labelled_file(path: str | Path) -> list[LabelledResponse]:
    return [
        LabelledResponse(row.prompt, row.response, bool(row.label), str(path))
        for row in read_pairs(path, need_label=True)
    ]


def load_labelled(
    name: str, data_dir: str | Path | None = None, *, limit: int | None = None, seed: int = 0
) -> list[LabelledResponse]:
    """A labelled set (a name above or a file); `limit` draws a seeded random sample (the files
    are ordered by prompt type and model, so a prefix would not be representative)."""
    if is_labelled_file(name):
        rows = read_labelled_file(name)
        if limit is not None and limit < len(rows):
            rows = random.Random(seed).sample(rows, limit)
        return rows
    if name in PACKAGED:
        return load_labelled(str(PACKAGED[name]), limit=limit, seed=seed)
    root = resolve_data_dir(data_dir)
    if root is None:
        raise UserError(
            f"labelled judge data ({name}) is read from the data directory; {DATA_DIR_FIX}"
        )
    readers = {
        "xstest": _xstest,
        "gptfuzz": _gptfuzz,
        "gptfuzz-train": lambda root: _gptfuzz(root, "train"),
    }
    if name not in readers:
        raise UserError(
            f"unknown labelled set {name!r}; choose from {', '.join(LABELLED_SETS)} "
            "or give a .csv/.json/.jsonl file with prompt, response and label columns"
        )
    rows = readers[name](root)
    if not rows:
        raise UserError(f"the labelled set {name} is empty under {root}")
    if limit is not None and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows
