"""Adversarial prompts: a plain request wrapped in a jailbreak template or given a suffix.

Every adversarial prompt keeps the plain request it carries (`meta["goal"]`), the attack
(`meta["attack"]`: a template id or the suffix) and whether the request is harmful
(`meta["harmful"]`: "1" / "0"), so an analysis can pair it with its plain twin and drop the
requests it trained on.

Sources (`load_adversarial`):

- ``gptfuzz``: the 77 human-written GPTFuzz templates (``[INSERT PROMPT HERE]`` slot) around
  GPTFuzz's 100 harmful questions; `wrap` puts any other requests (harmless ones, as a
  control under the same attack) in the same templates.
- ``suffixes``: the readable suffixes of the refusal-SAE paper (`refusal_sae/advsuffixes.csv`):
  an AdvBench goal, a space, one of its ~20 suffixes ("... in a fictional story").
- a file (.csv / .json / .jsonl): one adversarial prompt per record, column ``prompt``
  (required); ``goal`` (the plain request, optional), ``harmful`` (1 / 0, default 1) and
  ``attack`` (a free label, default the file name) are optional.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from .files import read_table
from .loaders import DATA_DIR_FIX, resolve_data_dir
from .promptset import Prompt, PromptSet, prompt_hash

SLOT = "[INSERT PROMPT HERE]"
TEMPLATES_FILE = "gptfuzz/datasets/prompts/GPTFuzzer.csv"
QUESTIONS_FILE = "gptfuzz/datasets/questions/question_list.csv"
SUFFIXES_FILE = "refusal_sae/advsuffixes.csv"
SOURCES = ("gptfuzz", "suffixes")


def _data_file(data_dir: str | Path | None, relative: str, what: str) -> Path:
    root = resolve_data_dir(data_dir)
    if root is None:
        raise UserError(f"the {what} are read from DIR/{relative}; {DATA_DIR_FIX}")
    path = root / relative
    if not path.is_file():
        raise UserError(f"the {what} are missing: no file {path}; {DATA_DIR_FIX}")
    return path


def gptfuzz_templates(data_dir: str | Path | None) -> list[tuple[str, str]]:
    """(template id, template text) of the GPTFuzz templates that have the prompt slot."""
    table = read_table(_data_file(data_dir, TEMPLATES_FILE, "GPTFuzz templates"))
    templates = [(str(row["id"]), str(row["text"])) for row in table.rows]
    return [(tid, text) for tid, text in templates if SLOT in text]


def gptfuzz_questions(data_dir: str | Path | None) -> PromptSet:
    table = read_table(_data_file(data_dir, QUESTIONS_FILE, "GPTFuzz questions"))
    return PromptSet(
        "gptfuzz_questions", tuple(Prompt(str(row["text"]), source="gptfuzz") for row in table.rows)
    )


def wrap(
    requests: PromptSet,
    templates: Sequence[tuple[str, str]],
    *,
    n: int,
    seed: int,
    harmful: bool,
    name: str,
) -> PromptSet:
    """`n` (request, template) pairs drawn without replacement (seeded), each request put in
    its template's slot. Requests are spread evenly: each is used before any is used twice."""
    if not templates:
        raise UserError("no jailbreak templates with the [INSERT PROMPT HERE] slot were found")
    if not len(requests):
        raise UserError(f"no requests to wrap: {requests.name} is empty")
    rng = random.Random(seed)
    pairs = [(r, t) for r in range(len(requests)) for t in range(len(templates))]
    rng.shuffle(pairs)
    rank = _seen_before(pairs)
    pairs.sort(key=lambda pair: rank[pair])
    prompts = []
    for r, t in pairs[:n]:
        request = requests[r]
        tid, text = templates[t]
        prompts.append(
            Prompt(
                text.replace(SLOT, request.text),
                request.category,
                "gptfuzz",
                {"goal": request.text, "attack": f"template {tid}", "harmful": str(int(harmful))},
            )
        )
    return PromptSet(name, tuple(prompts))


def _seen_before(pairs: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """How many earlier pairs use the same first element: the sort key (a stable sort) that
    puts every request's first pair before any request's second one."""
    counts: dict[int, int] = {}
    rank = {}
    for pair in pairs:
        rank[pair] = counts.get(pair[0], 0)
        counts[pair[0]] = rank[pair] + 1
    return rank


def readable_suffixes(data_dir: str | Path | None) -> list[tuple[str, list[str]]]:
    """(goal, its suffixes) from the refusal-SAE paper's `advsuffixes.csv`."""
    path = _data_file(data_dir, SUFFIXES_FILE, "readable adversarial suffixes")
    rows = []
    for index, row in enumerate(read_table(path).rows):
        try:
            suffixes = ast.literal_eval(str(row["response"]))
        except (ValueError, SyntaxError) as exc:
            raise UserError(
                f"{path}, row {index + 2}: the response column is not a list of suffixes ({exc})"
            ) from None
        rows.append((str(row["goal"]).strip(), [str(s).strip() for s in suffixes if str(s)]))
    return rows


def suffixed(
    goals: Sequence[tuple[str, list[str]]], *, n: int, seed: int, name: str = "suffixes"
) -> PromptSet:
    """`n` goal + suffix prompts, every goal used once before any goal is used twice."""
    rng = random.Random(seed)
    pairs = [(g, s) for g, (_, suffixes) in enumerate(goals) for s in range(len(suffixes))]
    rng.shuffle(pairs)
    rank = _seen_before(pairs)
    pairs.sort(key=lambda pair: rank[pair])
    prompts = []
    for g, s in pairs[:n]:
        goal, suffixes = goals[g]
        meta = {"goal": goal, "attack": suffixes[s], "harmful": "1"}
        prompts.append(Prompt(f"{goal} {suffixes[s]}", None, "suffixes", meta))
    return PromptSet(name, tuple(prompts))


def adversarial_file(path: Path) -> PromptSet:
    table = read_table(path)
    if "prompt" not in table.columns:
        raise UserError(
            f"{path} has no 'prompt' column (found: {', '.join(table.columns) or 'none'}); an "
            "adversarial prompt file needs prompt, and optionally goal, harmful (1/0), attack"
        )
    prompts = []
    for index, row in enumerate(table.rows):
        text = str(row.get("prompt") or "").strip()
        if not text:
            continue
        harmful = str(row.get("harmful", "1")).strip() or "1"
        if harmful not in ("0", "1"):
            raise UserError(f"{path}, record {index + 1}: harmful must be 1 or 0, got {harmful!r}")
        goal = str(row.get("goal") or "").strip()
        meta = {"attack": str(row.get("attack") or path.stem), "harmful": harmful}
        if goal:
            meta["goal"] = goal
        prompts.append(Prompt(text, None, str(path), meta))
    if not prompts:
        raise UserError(f"{path} has no adversarial prompts (every prompt cell is empty)")
    return PromptSet(path.stem, tuple(prompts))


def load_adversarial(
    source: str,
    *,
    data_dir: str | Path | None,
    n: int,
    seed: int = 0,
    exclude: set[str] | None = None,
) -> PromptSet:
    """`n` adversarial harmful prompts of a source (see the module docstring); requests whose
    plain text is in `exclude` (`prompt_hash`es of the prompts a probe or latent set was
    fitted on) are skipped."""
    if n <= 0:
        raise UserError(f"the number of adversarial prompts must be positive, got {n}")
    banned = exclude or set()
    if source == "gptfuzz":
        questions = gptfuzz_questions(data_dir).filter(lambda p: prompt_hash(p.text) not in banned)
        templates = gptfuzz_templates(data_dir)
        return wrap(questions, templates, n=n, seed=seed, harmful=True, name="gptfuzz")
    if source == "suffixes":
        goals = [g for g in readable_suffixes(data_dir) if prompt_hash(g[0]) not in banned and g[1]]
        return suffixed(goals, n=n, seed=seed)
    path = Path(source)
    if path.suffix.lower() in (".csv", ".json", ".jsonl") and path.is_file():
        fresh = adversarial_file(path).filter(
            lambda p: (
                prompt_hash(p.meta.get("goal") or p.text) not in banned
                and prompt_hash(p.text) not in banned
            )
        )
        if not len(fresh):
            raise UserError(
                f"every prompt of {path} was used to fit or select (its goal or prompt is among "
                "the excluded prompts); give prompts with other requests"
            )
        return fresh.head(n)
    raise UserError(
        f"unknown adversarial source {source!r}; use gptfuzz, suffixes or a .csv/.json/.jsonl "
        "file with a prompt column"
    )
