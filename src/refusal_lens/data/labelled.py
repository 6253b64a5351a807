"""Responses with human labels, to measure judges against.

- ``xstest``: the XSTest v2 completions of five models (GPT-4, Llama-2 x2, Mistral x2) to its
  450 prompts, each labelled by two annotators; `complied` = ``1_full_compliance``
  (``2_full_refusal`` and ``3_partial_refusal`` count as refusals).
- ``gptfuzz``: GPTFuzz's ``evaluate.csv``, responses to jailbreak prompts labelled 1 when the
  model was jailbroken (harmful compliance); the request is the question the template wrapped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .files import read_csv
from .loaders import DATA_DIR_FIX, resolve_data_dir

LABELLED_SETS = ("xstest", "gptfuzz")


@dataclass(frozen=True)
class LabelledResponse:
    prompt: str
    response: str
    complied: bool  # the human label: the response carries out the request
    source: str  # file (and model) it came from


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


def _gptfuzz(root: Path) -> list[LabelledResponse]:
    base = root / "gptfuzz" / "datasets"
    questions = {
        str(row["index"]).strip(): str(row["text"])
        for row in read_csv(base / "questions" / "question_list.csv").rows
    }
    out = []
    for row in read_csv(base / "responses_labeled" / "evaluate.csv").rows:
        question = questions.get(str(row["question"]).strip())
        if question is None:
            raise UserError(f"GPTFuzz response names question {row['question']!r}, not listed")
        out.append(
            LabelledResponse(
                question, str(row["Response"]), str(row["label"]).strip() == "1", "gptfuzz"
            )
        )
    return out


def load_labelled(
    name: str, data_dir: str | Path | None = None, *, limit: int | None = None, seed: int = 0
) -> list[LabelledResponse]:
    """A labelled set; `limit` draws a seeded random sample (the files are ordered by prompt
    type and model, so a prefix would not be representative)."""
    root = resolve_data_dir(data_dir)
    if root is None:
        raise UserError(
            f"labelled judge data ({name}) is read from the data directory; {DATA_DIR_FIX}"
        )
    readers = {"xstest": _xstest, "gptfuzz": _gptfuzz}
    if name not in readers:
        raise UserError(f"unknown labelled set {name!r}; choose from {', '.join(LABELLED_SETS)}")
    rows = readers[name](root)
    if not rows:
        raise UserError(f"the labelled set {name} is empty under {root}")
    if limit is not None and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows
