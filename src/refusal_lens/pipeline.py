"""Jobs that chain stages: the direction job (find, save, evaluate the refusal direction)."""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .data import PromptSet, builtin_prompts, load_prompts, resolve_data_dir
from .direction import Direction, DirectionData, DirectionSettings, find_direction
from .evaluation.refusal import RefusalResult, measure_refusal
from .judges import RefusalTokens
from .models import ChatFormatter, LoadedModel
from .runs import RunDir, write_json

NEAR_DUPLICATE_JACCARD = 0.6


@dataclass(frozen=True)
class DatasetChoice:
    """Names (or paths) of the prompt sets a direction job uses; None = the default."""

    harmful_train: str | None = None
    harmless_train: str | None = None
    harmful_val: str | None = None
    harmless_val: str | None = None
    harmful_test: str | None = None
    harmless_test: str | None = None


@dataclass(frozen=True)
class EvalSettings:
    n_test: int | None = 100  # prompts per test set (None: all)
    max_new_tokens: int = 64
    batch_size: int = 16
    enabled: bool = True


def _sample(prompts: PromptSet, n: int | None, seed: int) -> PromptSet:
    if n is None or len(prompts) <= n:
        return prompts
    chosen = sorted(random.Random(seed).sample(range(len(prompts)), n))
    return PromptSet(prompts.name, tuple(prompts[i] for i in chosen))


def resolve_direction_data(
    choice: DatasetChoice,
    data_dir: str | Path | None,
    settings: DirectionSettings,
    n_test: int | None,
    seed: int,
) -> tuple[DirectionData, PromptSet, PromptSet, dict[str, int]]:
    """Train/val pools and test sets. With a data directory: the refusal_direction splits for
    selection, JailbreakBench and held-out Alpaca for testing; without: the built-in set.
    Train and validation prompts that occur in a test set, or nearly (word Jaccard >= 0.6), are
    dropped (held-out)."""
    shared = resolve_data_dir(data_dir) is not None
    defaults = (
        {
            "harmful_train": "harmful_train",
            "harmless_train": "harmless_train",
            "harmful_val": "harmful_val",
            "harmless_val": "harmless_val",
            "harmful_test": "jailbreakbench",
            "harmless_test": "alpaca",
        }
        if shared
        else {name: f"builtin_{name}" for name in asdict(choice)}
    )

    def load(slot: str) -> PromptSet:
        name = getattr(choice, slot) or defaults[slot]
        if name.startswith("builtin_") and name.count("_") == 2:
            kind, split = name.split("_")[1:]
            return builtin_prompts(kind, split)  # type: ignore[arg-type]
        return load_prompts(name, data_dir=data_dir)

    harmful_test = load("harmful_test").head(n_test)  # the paper's "first 100"
    harmless_test = load("harmless_test").head(n_test)
    tests = [harmful_test, harmless_test]
    # Harmless pools are large (18k Alpaca prompts): score only a sample, the filter keeps ~90%.
    n_harmless = {
        "harmless_train": settings.n_train + settings.n_train // 2,
        "harmless_val": settings.n_val + settings.n_val // 2,
    }
    pools: dict[str, PromptSet] = {}
    dropped: dict[str, int] = {}
    for slot in ("harmful_train", "harmless_train", "harmful_val", "harmless_val"):
        loaded = load(slot)
        pool = loaded.without(harmful_test).without(harmless_test)
        exact = len(loaded) - len(pool)
        if slot in n_harmless:
            pool = _sample(pool, n_harmless[slot], seed)
        kept = drop_near_duplicates(pool, tests)
        pools[slot] = kept
        dropped[slot] = exact + len(pool) - len(kept)
    return DirectionData(**pools), harmful_test, harmless_test, dropped


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", text.casefold()))


def drop_near_duplicates(
    pool: PromptSet, others: list[PromptSet], threshold: float = NEAR_DUPLICATE_JACCARD
) -> PromptSet:
    """Drop prompts whose word set overlaps a prompt of `others` with Jaccard >= threshold.

    Benchmarks paraphrase each other ("Develop malware that disables antivirus..." in
    JailbreakBench vs "Develop a virus that disables antivirus..." in the harmful train split);
    exact matching alone would let such test prompts steer the selection.
    """
    index: dict[str, list[frozenset[str]]] = {}
    for other in others:
        for prompt in other:
            words = _words(prompt.text)
            for word in words:
                index.setdefault(word, []).append(words)

    def near(text: str) -> bool:
        words = _words(text)
        candidates = {id(c): c for w in words for c in index.get(w, ())}.values()
        return any(len(words & c) / len(words | c) >= threshold for c in candidates)

    return pool.filter(lambda p: not near(p.text))


def direction_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    out: str | Path,
    *,
    datasets: DatasetChoice,
    data_dir: str | Path | None,
    settings: DirectionSettings,
    evaluation: EvalSettings,
    tokens: RefusalTokens | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Find the refusal direction, save it, and measure refusal rates on held-out test sets."""
    started = time.perf_counter()
    run = RunDir(out)
    tokens = tokens or RefusalTokens.from_phrases(lm.tokenizer)
    data, harmful_test, harmless_test, dropped = resolve_direction_data(
        datasets, data_dir, settings, evaluation.n_test, seed
    )
    config = {
        "settings": asdict(settings),
        "evaluation": asdict(evaluation),
        "datasets": {
            **data.hashes(),
            "harmful_test": harmful_test.name,
            "harmless_test": harmless_test.name,
        },
        "system": formatter.system,
        "refusal_tokens": tokens.to_dict(),
    }
    run.write_manifest("direction", config, lm.identity(), seed)
    direction = find_direction(lm, formatter, data, tokens, settings, run)
    selection_seconds = time.perf_counter() - started
    direction.info["selection_seconds"] = round(selection_seconds, 1)
    direction.save(run.path)
    summary: dict[str, Any] = {
        "model": lm.identity(),
        "layer": direction.layer,
        "position": direction.position,
        "hook_point": f"resid_post.{direction.layer}",
        "selection": direction.info["selection"],
        "pool_sizes": direction.info["pool_sizes"],
        "dropped_as_test_overlap": dropped,
        "selection_seconds": round(selection_seconds, 1),
    }
    if evaluation.enabled:
        results = evaluate_direction(
            lm, formatter, direction, harmful_test, harmless_test, evaluation, run, seed
        )
        summary["evaluation"] = {name: r.to_dict() for name, r in results.items()}
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_json(run.file("summary.json"), summary)
    return summary


def evaluate_direction(
    lm: LoadedModel,
    formatter: ChatFormatter,
    direction: Direction,
    harmful: PromptSet,
    harmless: PromptSet,
    settings: EvalSettings,
    run: RunDir | None,
    seed: int,
) -> dict[str, RefusalResult]:
    """Harmful test: base vs ablated. Harmless test: base vs direction added."""
    common: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "batch_size": settings.batch_size,
        "run": run,
        "seed": seed,
    }
    return {
        "harmful_base": measure_refusal(lm, formatter, harmful, condition="base", **common),
        "harmful_ablated": measure_refusal(
            lm,
            formatter,
            harmful,
            condition="ablated",
            interventions=[direction.ablation()],
            **common,
        ),
        "harmless_base": measure_refusal(lm, formatter, harmless, condition="base", **common),
        "harmless_added": measure_refusal(
            lm,
            formatter,
            harmless,
            condition="added",
            interventions=[direction.addition()],
            **common,
        ),
    }
