"""The benchmark's settings, their checks before any long work, and the fallbacks without a
data directory."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data import load_prompts, resolve_data_dir
from ..direction import Direction
from ..errors import UserError
from ..evaluation.capabilities import CapabilitySettings
from ..evaluation.work import Arm
from ..judges import (
    parse_judge_spec,
)
from ..models import DEFAULT_MODEL
from ..saes.registry import is_registry_spec

LATENT_METHODS = ("ours", "cossim", "actdiff", "ap", "random")


METHODS = ("base", "direction", *LATENT_METHODS)


TRANSDUCTIVE_METHODS = ("ours", "cossim", "actdiff", "ap")


@dataclass(frozen=True)
class BenchmarkConfig:
    model: str = DEFAULT_MODEL
    saes: str | None = None  # SAE set folder (None: this model's cached quick set)
    direction: str | None = None  # direction run folder (None: found into RUN/direction)
    direction_n_train: int = 128  # train prompts per class when the direction is found here
    direction_n_val: int = 32  # validation prompts per class when the direction is found here
    methods: tuple[str, ...] = METHODS
    protocols: tuple[str, ...] = ("heldout",)
    datasets: tuple[str, ...] = ("jailbreakbench", "harmbench_test", "advbench")
    # defaults sized so the whole benchmark of the default model takes under an hour on 2 CPU
    # cores (docs/results.md, section 9); configs/paper.toml is the paper's size
    limit: int | None = 20  # first N prompts of each harmful benchmark
    max_new_tokens: int = 256
    screen_tokens: int = 64  # length of the refusal-only generations (XSTest, induction)
    batch_size: int = 32
    # substring: the paper's refusal judge; learned: did the answer do what was asked
    judges: tuple[str, ...] = ("substring", "learned")
    # how far to trust each judge: agreement with human labels on a seeded sample of each set
    # (RUN/judges/agreement.json, in the report); 0 turns it off
    agreement_sets: tuple[str, ...] = ("gptfuzz", "xstest")
    agreement_limit: int = 300
    k: int = 20  # K*: latents each method clamps (when not searched)
    scale: float | None = None  # c for every method; None: each method's searched c (or -3)
    search: bool = True  # choose each method's (K*, c) on validation prompts
    random_seeds: tuple[int, ...] = (0,)
    n_select: int = 128  # prompts per class that select the held-out latent sets
    harmless: str = "alpaca"  # harmless prompts of the side effects and of refusal induction
    n_harmless: int = 32
    rollout_tokens: int = 64  # length of the base model's harmless rollouts (KL, CE)
    generic_text: str = "gutenberg"
    n_generic: int = 32
    xstest_limit: int = 50  # XSTest safe prompts for over-refusal (0: off)
    cards: bool = True  # latent cards of ours' global set, for the report
    cards_corpus_tokens: int = 5_000
    induce_values: tuple[float, ...] = (4.0, 8.0, 16.0)
    n_induce: int = 32
    seed: int = 0
    # read and write results through the user cache's results.sqlite (keyed by content), so a
    # rerun into a new folder computes nothing already computed; the run folder keeps a copy
    share_results: bool = True
    capabilities: CapabilitySettings = field(default_factory=CapabilitySettings)
    capability_methods: tuple[str, ...] = ("base", "direction", "ours")  # () = every method

    def __post_init__(self) -> None:
        for method in self.methods:
            if method not in METHODS:
                raise UserError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        for protocol in self.protocols:
            if protocol not in ("heldout", "transductive"):
                raise UserError(f"unknown protocol {protocol!r}; use heldout or transductive")
        if not self.datasets:
            raise UserError("the benchmark needs at least one harmful dataset")
        if not self.judges:
            raise UserError("the benchmark needs at least one judge")
        names = ("k", "batch_size", "max_new_tokens", "screen_tokens", "n_select", "n_harmless")
        for name in (*names, "n_generic", "direction_n_train", "direction_n_val"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.scale is not None and not math.isfinite(self.scale):
            raise UserError(f"scale must be a finite number, got {self.scale}")
        for method in self.capability_methods:
            if method not in METHODS:
                raise UserError(
                    f"unknown capability method {method!r}; choose from {', '.join(METHODS)}"
                )
        if "random" in self.methods and not self.random_seeds:
            raise UserError("method random needs at least one seed in random_seeds")
        for name in ("rollout_tokens", "n_induce", "cards_corpus_tokens"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.limit is not None and self.limit <= 0:
            raise UserError(f"limit must be positive (or none: every prompt), got {self.limit}")
        if self.xstest_limit < 0:
            raise UserError(f"xstest_limit must be 0 (off) or more, got {self.xstest_limit}")
        for value in self.induce_values:
            if not math.isfinite(value):
                raise UserError(f"induce_values must be finite numbers, got {value}")
        for name in ("datasets", "judges"):
            items = getattr(self, name)
            if any(not item.strip() for item in items) or len(set(items)) != len(items):
                raise UserError(f"{name} lists an empty or repeated entry: {', '.join(items)}")
        for name in ("model", "harmless", "generic_text"):
            if not getattr(self, name).strip():
                raise UserError(f"{name} must not be empty")
        for name in ("saes", "direction"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise UserError(f"{name} must be a folder (or none), not an empty string")


def validate_inputs(config: BenchmarkConfig, data_dir: str | Path | None) -> None:
    """Resolve everything the benchmark reads by name before its first stage (a typo must not
    surface after the direction, SAE and latent stages): the data directory, every harmful
    dataset, the harmless set, the generic text, XSTest, the direction search's prompt sets,
    a given direction and SAE set, the judges and the capability tasks."""
    import tempfile

    from ..data.labelled import LABELLED_SETS, is_labelled_file, load_labelled
    from ..judges import check_judge_spec
    from ..judges.learned import judge_size
    from ..saes.io import CFG_FILE
    from ..saes.sets import SET_FILE, SAESet, read_set_index

    shared = resolve_data_dir(data_dir) is not None
    learned = False
    for spec in config.judges:
        name, options = check_judge_spec(spec)
        learned = learned or (name == "learned" and "folder" not in options)
        if name == "learned":
            judge_size(str(options.get("size", "default")))
    for name in config.datasets:
        load_prompts(name, data_dir=data_dir, limit=1)
    load_prompts(config.harmless, data_dir=data_dir, limit=1)
    generic_documents(config.generic_text, data_dir, 1)
    if config.xstest_limit > 0 and shared:
        load_prompts("xstest_safe", data_dir=data_dir, limit=1)
    if config.direction:
        direction = Direction.load(config.direction)
        if set(config.methods) - {"base"}:  # every arm past base is checked as held out
            direction_selection(direction)
    elif shared:  # the direction search reads these (jobs.resolve_direction_data)
        for name in ("harmful_train", "harmless_train", "harmful_val", "harmless_val"):
            load_prompts(name, data_dir=data_dir, limit=1)
    if config.saes and any(m in LATENT_METHODS for m in config.methods):
        folder = Path(config.saes)
        if is_registry_spec(config.saes):  # fetched (once) now: a bad name stops the run here
            folder = SAESet.from_registry(config.saes)
        if (folder / SET_FILE).is_file():
            read_set_index(folder / SET_FILE)
        elif not (folder / CFG_FILE).is_file():
            raise UserError(
                f"no SAE set at {folder} ({SET_FILE} missing); pass the folder that train-saes "
                "wrote"
            )
    if config.capabilities.tasks and shared:
        with tempfile.TemporaryDirectory() as scratch:
            check_capabilities_available(config.capabilities, data_dir, Path(scratch))
    # judges last: their labelled data is optional for everything above
    for name in config.agreement_sets if config.agreement_limit else ():
        if name not in LABELLED_SETS and not is_labelled_file(name):
            raise UserError(
                f"agreement_sets: unknown labelled set {name!r}; choose from "
                f"{', '.join(LABELLED_SETS)} or a .csv/.json/.jsonl file with labels"
            )
        if shared or is_labelled_file(name):
            load_labelled(name, data_dir, limit=1)
    if learned and shared:  # the default learned judge's training labels
        load_labelled("gptfuzz-train", data_dir, limit=1)


QUICK: dict[str, Any] = {
    "direction_n_train": 64,  # the difference in means of each candidate
    # each of the 95 candidate directions is scored on these: the stage's cost (the best
    # candidate stands out: on the default model its bypass score is 0.5 below the next one)
    "direction_n_val": 8,
    "limit": 16,
    "max_new_tokens": 64,
    "methods": "base,direction,ours,cossim,random",
    "judges": "substring,learned:size=quick",
    "agreement_limit": 200,
    "n_select": 32,
    "search": False,
    "n_harmless": 8,
    "n_generic": 8,
    "xstest_limit": 16,
    "induce_values": "4,8,16",
    "cards_corpus_tokens": 1000,
    "n_induce": 8,
    "capabilities.tasks": "arc_challenge",
    "capabilities.limit": 20,
}


BUILTIN_FALLBACK: dict[str, Any] = {
    "datasets": ("builtin_harmful_test",),
    "harmless": "builtin_harmless_test",
    "xstest_limit": 0,
    "capabilities": CapabilitySettings(tasks=()),
}


def judge_name(row: dict[str, Any]) -> str:
    """Tables are grouped by judge spec: two `harmbench` judges with other models differ."""
    return str(row.get("judge_spec") or row["judge"])


def without_data_dir(
    config: BenchmarkConfig, data_dir: str | Path | None, cache: str | Path | None = None
) -> tuple[BenchmarkConfig, list[str]]:
    """With no data directory the benchmarks, XSTest and the capability tasks are not there:
    use the built-in prompt sets instead, and say what was left out (the learned judge too,
    unless it was trained before: its labels are in the data directory)."""
    if resolve_data_dir(data_dir) is not None:
        return config, []
    notes = [
        "no data directory: harmful prompts from the built-in test split instead of "
        + ", ".join(config.datasets),
    ]
    if config.xstest_limit:
        notes.append("no data directory: XSTest over-refusal skipped")
    if config.capabilities.tasks:
        notes.append("no data directory: capability tasks skipped")
    changes: dict[str, Any] = dict(BUILTIN_FALLBACK)
    if config.harmless != "alpaca":
        changes.pop("harmless")
    config, judge_notes = usable_judges(replace(config, **changes), data_dir, cache)
    return config, notes + judge_notes


def usable_judges(
    config: BenchmarkConfig, data_dir: str | Path | None, cache: str | Path | None = None
) -> tuple[BenchmarkConfig, list[str]]:
    """Without a data directory the default learned judge can only be one trained before:
    if there is none, judge by the others and say so (before any model loads)."""
    from ..judges.learned import default_folder

    parsed = {spec: parse_judge_spec(spec) for spec in config.judges}
    default_learned = {
        spec: str(options.get("size", "default"))
        for spec, (name, options) in parsed.items()
        if name == "learned" and "folder" not in options
    }
    if not default_learned or resolve_data_dir(data_dir) is not None:
        return config, []
    if all(default_folder(cache, size) is not None for size in default_learned.values()):
        return config, []
    judges = tuple(j for j in config.judges if j not in default_learned) or ("substring",)
    note = (
        "no data directory and no trained learned judge: answers judged by "
        + ", ".join(judges)
        + " only (refusal-lens train-judge --data-dir DATA trains it once)"
    )
    return replace(config, judges=judges), [note]


def check_capabilities_available(
    settings: CapabilitySettings, data_dir: str | Path | None, run: Path
) -> None:
    """Fail at the start, not hours in: lm-eval installed, task files present."""
    from ..evaluation.capabilities import task_specs

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError(
            'capability tasks need lm-eval: pip install -e ".[capabilities]" '
            "(or --set capabilities.tasks= to skip them)"
        ) from None
    task_specs(settings, data_dir, run / "capabilities")


def measures_capabilities(config: BenchmarkConfig, arm: Arm) -> bool:
    return not config.capability_methods or arm.method in config.capability_methods


def direction_selection(direction: Direction) -> dict[str, Any]:
    """The prompts a direction was chosen on, as recorded when it was found."""
    selected = direction.info.get("selected_on")
    if not isinstance(selected, dict) or not selected:
        raise UserError(
            f"the direction {direction.source} does not record the prompts it was selected on "
            "(made by an older refusal-lens), so it cannot be checked as held out; find it "
            "again with `refusal-lens direction`, or leave --direction out"
        )
    return selected


def generic_documents(name: str, data_dir: str | Path | None, n: int) -> list[str]:
    """Held-out generic text: paragraphs of the gutenberg split the SAEs never trained on, or
    a local .txt/.jsonl file; the same documents for every condition."""
    from ..saes.mixture import documents

    if resolve_data_dir(data_dir) is None and not Path(name).exists():
        prompts = load_prompts("builtin_harmless_test")  # no data directory: plain requests
        return prompts.texts()[:n]
    texts = []
    for doc in documents(name, data_dir, "eval"):
        text = doc.text or " ".join(content for _, content in doc.messages)
        if len(text) > 200:
            texts.append(text)
        if len(texts) >= n:
            break
    if not texts:
        raise UserError(f"no generic text documents in {name!r}")
    return texts
