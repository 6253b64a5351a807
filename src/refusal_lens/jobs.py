"""The jobs behind `direction`, `find-latents` and `compare`, and the data choices they read:
the direction job (find, save, evaluate the refusal direction), the latents job (select a
latent set on held-out-safe prompts) and the compare job (refusal rates of latent sets)."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import heldout
from .attribution import choose_refusal_token
from .data import PromptSet, builtin_prompts, load_prompts, resolve_data_dir
from .direction import Direction, DirectionData, DirectionSettings, find_direction
from .errors import UserError
from .evaluation.refusal import RefusalResult, measure_refusal
from .evaluation.side_effects import base_completions, completion_kl
from .executors.base import Executor
from .interventions import PerPromptLatents
from .judges import RefusalTokens
from .latents import (
    LatentSet,
    SearchSettings,
    SelectionSettings,
    keep_refused,
    search_intervention,
    select_features,
)
from .models import ChatFormatter, LoadedModel
from .runs import RunDir, stable_hash, write_json
from .saes import SAESet
from .saes.presets import ensure_default_sae_set

log = logging.getLogger(__name__)

# Benchmarks the latents are evaluated on: prompts in them never select anything (held-out).
DEFAULT_EVAL_SETS = ("jailbreakbench", "harmbench_test", "advbench")


@dataclass(frozen=True)
class DatasetChoice:
    """Names (or paths) of the prompt sets a direction job uses; None = the default."""

    harmful_train: str | None = None
    harmless_train: str | None = None
    harmful_val: str | None = None
    harmless_val: str | None = None
    harmful_test: str | None = None
    harmless_test: str | None = None
    # evaluation sets whose prompts (exact or near-duplicate) never enter a selection pool
    exclude: tuple[str, ...] = DEFAULT_EVAL_SETS


@dataclass(frozen=True)
class EvalSettings:
    """The refusal-rate test after a direction is found (flags of `direction`)."""

    n_test: int | None = field(default=100, metadata={"help": "prompts per test set"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens generated per answer"})
    batch_size: int = 16
    enabled: bool = field(
        default=True, metadata={"flag": "no-eval", "help": "skip the refusal-rate test"}
    )


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
    Train and validation prompts that occur in a test set or in an evaluation set of
    `choice.exclude`, exactly or nearly (word Jaccard >= 0.6), are dropped (held-out)."""
    shared = resolve_data_dir(data_dir) is not None
    slots = [name for name in asdict(choice) if name != "exclude"]
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
        else {name: f"builtin_{name}" for name in slots}
    )

    def load(slot: str) -> PromptSet:
        name = getattr(choice, slot) or defaults[slot]
        if name.startswith("builtin_") and name.count("_") == 2:
            kind, split = name.split("_")[1:]
            return builtin_prompts(kind, split)  # type: ignore[arg-type]
        return load_prompts(name, data_dir=data_dir)

    harmful_test = load("harmful_test").head(n_test)  # the paper's "first 100"
    harmless_test = load("harmless_test").head(n_test)
    # every prompt of the evaluation sets, not only the first N: any of them may be evaluated
    evaluation = (
        [load_prompts(name, data_dir=data_dir) for name in choice.exclude] if shared else []
    )
    tests = [harmful_test, harmless_test, *evaluation]
    # Harmless pools are large (18k Alpaca prompts): score only a sample, the filter keeps ~90%.
    n_harmless = {
        "harmless_train": settings.n_train + settings.n_train // 2,
        "harmless_val": settings.n_val + settings.n_val // 2,
    }
    pools: dict[str, PromptSet] = {}
    dropped: dict[str, int] = {}
    for slot in ("harmful_train", "harmless_train", "harmful_val", "harmless_val"):
        loaded = load(slot)
        pool = loaded
        for test in tests:
            pool = pool.without(test)
        exact = len(loaded) - len(pool)
        if slot in n_harmless:
            pool = _sample(pool, n_harmless[slot], seed)
        kept = heldout.drop_near_duplicates(pool, tests)
        pools[slot] = kept
        dropped[slot] = exact + len(pool) - len(kept)
    return DirectionData(**pools), harmful_test, harmless_test, dropped


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
            "excluded": list(datasets.exclude),
        },
        "system": formatter.system,
        "refusal_tokens": tokens.to_dict(),
    }
    run.write_manifest("direction", config, lm.identity(), seed)
    direction = find_direction(lm, formatter, data, tokens, settings, run)
    # what the direction was chosen on: held-out checks of every arm that uses it
    direction.info["selected_on"] = {
        slot: heldout.describe(getattr(data, slot))
        for slot in ("harmful_train", "harmless_train", "harmful_val", "harmless_val")
    }
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


@dataclass(frozen=True)
class LatentsChoice:
    """Where find-latents gets its inputs; None = the default."""

    saes: str | None = None
    direction: str | None = None
    harmful: str | None = field(
        default=None,
        metadata={
            "flag": "train",
            "help": "harmful prompts to select on",
            "default": "harmful_train",
        },
    )
    harmless: str | None = field(
        default=None,
        metadata={"help": "harmless prompts (actdiff, random)", "default": "harmless_train"},
    )
    n_prompts: int | None = field(default=128, metadata={"help": "prompts used per class"})
    # the token's text; None: measured on the harmful prompts
    refusal_token: str | None = field(
        default=None, metadata={"help": "the refusal token r", "default": "measured"}
    )
    all_prompts: bool = field(
        default=False, metadata={"help": "keep prompts the model does not refuse"}
    )
    exclude: tuple[str, ...] = DEFAULT_EVAL_SETS
    match: str | None = field(
        default=None, metadata={"help": "latent set the random control matches (method random)"}
    )
    search: bool = field(
        default=False,
        metadata={
            "help": "choose K* and the scale on validation prompts (refusal rate + harmless KL)"
        },
    )
    harmful_val: str | None = None
    harmless_val: str | None = None
    n_val: int = field(default=32, metadata={"help": "validation prompts per class"})


def split_prompts(
    role: str,
    split: str,
    data_dir: str | Path | None,
    name: str | None = None,
    limit: int | None = None,
) -> PromptSet:
    """`name`, or by default the `role`_`split` prompts (`harmful_train`, `harmless_val`...):
    the refusal_direction splits with a data directory, the built-in ones without."""
    if name is None:
        shared = resolve_data_dir(data_dir) is not None
        name = f"{role}_{split}" if shared else f"builtin_{role}_{split}"
    return load_prompts(name, data_dir=data_dir, limit=limit)


def latents_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    out: str | Path,
    *,
    choice: LatentsChoice,
    settings: SelectionSettings,
    data_dir: str | Path | None,
    search_settings: SearchSettings | None = None,
    seed: int = 0,
    executor: Executor | None = None,
) -> LatentSet:
    """Select a latent set and write it to OUT/latents.json (every step resumes); `executor`
    computes the attribution's batches (default: here)."""
    run = RunDir(out)
    run.write_manifest(
        "find-latents",
        {"choice": asdict(choice), "settings": asdict(settings)},
        lm.identity(),
        seed,
    )
    saes = (
        SAESet.load(choice.saes)
        if choice.saes
        else ensure_default_sae_set(lm, data_dir, executor=executor)
    )
    saes.check_model(lm)
    direction = _direction_for(lm, formatter, choice, run, data_dir, seed)
    harmful = split_prompts("harmful", "train", data_dir, choice.harmful)
    harmless = split_prompts("harmless", "train", data_dir, choice.harmless)
    if settings.protocol == "heldout":
        harmful, harmless = (
            _without_eval_sets(p, choice.exclude, data_dir) for p in (harmful, harmless)
        )
    token: dict[str, Any] = {"id": None, "chosen_by": f"not needed by {settings.method}"}
    transductive = settings.protocol == "transductive"
    if transductive:  # the evaluation prompts themselves: the first N, every one of them
        harmful = harmful.head(choice.n_prompts)
    if settings.method in ("ours", "ap"):
        token = _refusal_token(lm, formatter, harmful, choice, run, settings.batch_size)
        if not (choice.all_prompts or transductive):
            harmful = keep_refused(lm, formatter, harmful, int(token["id"]), settings.batch_size)
    harmful = _sample(harmful, choice.n_prompts, seed)
    harmless = _sample(harmless, choice.n_prompts, seed)
    reference = LatentSet.load(choice.match) if choice.match else None
    latent_set = select_features(
        lm,
        formatter,
        saes,
        direction,
        harmful,
        harmless,
        token,
        settings,
        reference=reference,
        out=run.path,
        executor=executor,
    )
    latent_set.info["direction"] = {"layer": direction.layer, "source": direction.source}
    latent_set.save(run.path)
    if choice.search:
        harmful_val, harmless_val = (
            _sample(
                _without_eval_sets(
                    split_prompts(role, "val", data_dir, name), choice.exclude, data_dir
                ),
                choice.n_val,
                seed,
            )
            for role, name in (("harmful", choice.harmful_val), ("harmless", choice.harmless_val))
        )
        search = search_intervention(
            lm,
            formatter,
            saes,
            latent_set,
            harmful_val,
            harmless_val,
            search_settings or SearchSettings(),
            run=run,
        )
        write_json(run.file("search.json"), search)
        latent_set.save(run.path)
    return latent_set


def _direction_for(
    lm: LoadedModel,
    formatter: ChatFormatter,
    choice: LatentsChoice,
    run: RunDir,
    data_dir: str | Path | None,
    seed: int,
) -> Direction:
    if choice.direction:
        direction = Direction.load(choice.direction)
    else:
        folder = run.path / "direction"
        if not (folder / "direction.json").is_file():
            log.warning("no --direction: finding the refusal direction first (into %s)", folder)
            direction_job(
                lm,
                formatter,
                folder,
                datasets=DatasetChoice(),
                data_dir=data_dir,
                settings=DirectionSettings(),
                evaluation=EvalSettings(enabled=False),
                seed=seed,
            )
        direction = Direction.load(folder)
    direction.check_model(lm)
    return direction


def _without_eval_sets(
    prompts: PromptSet, names: Sequence[str], data_dir: str | Path | None
) -> PromptSet:
    if resolve_data_dir(data_dir) is None:
        return prompts
    kept = heldout.without(prompts, [load_prompts(name, data_dir=data_dir) for name in names])
    if len(kept) < len(prompts):
        log.info(
            "%s: dropped %d prompts found in the test sets", prompts.name, len(prompts) - len(kept)
        )
    return PromptSet(prompts.name, tuple(kept))


def _refusal_token(
    lm: LoadedModel,
    formatter: ChatFormatter,
    harmful: PromptSet,
    choice: LatentsChoice,
    run: RunDir,
    batch_size: int,
) -> dict[str, Any]:
    if choice.refusal_token is not None:
        ids = lm.tokenizer(choice.refusal_token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise UserError(
                f"--refusal-token {choice.refusal_token!r} is {len(ids)} tokens; give one token"
            )
        return {"id": int(ids[0]), "string": choice.refusal_token, "chosen_by": "user"}
    sample = _sample(harmful, 64, 0)
    key = stable_hash(
        {
            "model": lm.weights_sha256,
            "dtype": str(lm.dtype),
            "template": formatter.render("{instruction}"),
            "prompts": sample.texts(),
        }
    )
    cached = run.load_stage("refusal_token.json", key)
    if cached is not None:
        return cached["token"]
    token = {
        **choose_refusal_token(lm, formatter, sample.texts(), batch_size=batch_size),
        "chosen_by": f"most common first token of refusals on {sample.name}",
    }
    run.save_stage("refusal_token.json", key, {"token": token})
    return token


@dataclass(frozen=True)
class CompareSettings:
    """What `compare` measures (its flags come from these fields)."""

    datasets: tuple[str, ...] = field(
        default=DEFAULT_EVAL_SETS, metadata={"help": "benchmark datasets, a comma list"}
    )
    # the paper's "first 100"
    limit: int | None = field(default=100, metadata={"help": "first N prompts of each"})
    harmless_kl: str | None = field(
        default="alpaca", metadata={"help": "harmless set for the KL ('' off)"}
    )
    kl_prompts: int = field(default=32, metadata={"help": "prompts for the harmless KL"})
    # harmless set for refusal induction (set latents to v)
    induce_on: str | None = field(
        default=None, metadata={"help": "harmless set for refusal induction, e.g. alpaca"}
    )
    induce_values: tuple[float, ...] = field(
        default=(), metadata={"help": "values v to set latents to, e.g. 4,8,16", "default": None}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "tokens generated per answer"})
    batch_size: int = 16
    k: int | None = field(  # override every set's K* (None: each set's own)
        default=None, metadata={"help": "use every set's top K", "default": "its own K*"}
    )
    scale: float | None = field(  # override every set's scale (None: each set's own)
        default=None, metadata={"help": "use this scale for every set", "default": "its own"}
    )
    # each prompt with its own set where the set has per-prompt lists
    per_prompt: bool = field(
        default=False,
        metadata={"help": "each prompt with its own latent set (sets selected on these prompts)"},
    )


def compare_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    out: str | Path,
    *,
    latent_sets: Sequence[str],
    direction: str | None,
    settings: CompareSettings,
    data_dir: str | Path | None,
    saes: str | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Refusal rate (with intervals) of base, direction ablation and each latent set's saved
    intervention on each dataset, plus each condition's KL on harmless prompts, and optionally
    refusal induction with the latents set to each value. Completions are kept per condition
    and reused by a rerun; the table goes to OUT/compare.json and OUT/compare.md."""
    run = RunDir(out)
    run.write_manifest(
        "compare",
        {"feature_sets": list(latent_sets), "direction": direction, **asdict(settings)},
        lm.identity(),
        seed,
    )
    conditions: list[tuple[str, list[Any], LatentSet | None]] = [("base", [], None)]
    if direction:
        ablation = Direction.load(direction)
        ablation.check_model(lm)
        conditions.append(("direction ablation", [ablation.ablation()], None))
    loaded: dict[str, SAESet] = {}
    for path in latent_sets:
        latent_set = LatentSet.load(path)
        latent_set.check_model(lm)
        sae_path = saes or latent_set.saes["path"]
        sae_set = loaded.setdefault(sae_path, SAESet.load(sae_path))
        mode = "scale" if settings.scale is not None else None
        edit = latent_set.edit(sae_set, k=settings.k, mode=mode, value=settings.scale)
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        label = f"{latent_set.method} ({folder.name})"
        if settings.per_prompt and latent_set.per_prompt:
            label += ", per prompt"
            edit = latent_set.per_prompt_edit(
                sae_set, k=settings.k, mode=mode, value=settings.scale
            )
        conditions.append((label, [edit], latent_set))
    prompts = [
        load_prompts(name, data_dir=data_dir, limit=settings.limit) for name in settings.datasets
    ]
    rows: list[dict[str, Any]] = []
    harmless = (
        load_prompts(settings.harmless_kl, data_dir=data_dir, limit=settings.kl_prompts)
        if settings.harmless_kl
        else None
    )
    base_harmless = (
        base_completions(lm, formatter, harmless.texts(), batch_size=settings.batch_size)
        if harmless is not None
        else None
    )
    for label, interventions, latent_set in conditions:
        row: dict[str, Any] = {
            "condition": label,
            "interventions": [i.to_dict() for i in interventions],
        }
        for dataset in prompts:
            if latent_set is not None:
                latent_set.check_held_out(dataset)
            result = measure_refusal(
                lm,
                formatter,
                dataset,
                condition=_slug(label),
                interventions=interventions,
                max_new_tokens=settings.max_new_tokens,
                batch_size=settings.batch_size,
                run=run,
                seed=seed,
            )
            row[dataset.name] = _rate_cell(result)
        if harmless is not None and base_harmless is not None and interventions:
            if latent_set is not None:
                latent_set.check_held_out(harmless)
                # harmless prompts have no per-prompt sets: the global set stands in for the KL
                interventions = [
                    latent_set.edit(i.saes, k=settings.k, mode=i.mode, value=i.value)
                    if isinstance(i, PerPromptLatents)
                    else i
                    for i in interventions
                ]
            kl = completion_kl(
                lm, formatter, harmless.texts(), base_harmless, interventions, seed=seed
            )
            row["harmless_kl"] = {"dataset": harmless.name, **kl.to_dict()}
        rows.append(row)
        write_json(run.file("compare.json"), {"rows": rows, "settings": asdict(settings)})
    if settings.induce_on and settings.induce_values:
        targets = load_prompts(settings.induce_on, data_dir=data_dir, limit=settings.limit)
        for label, _interventions, latent_set in conditions:
            if latent_set is None:
                continue
            latent_set.check_held_out(targets)
            sae_set = loaded[saes or latent_set.saes["path"]]
            for value in settings.induce_values:
                edit = latent_set.edit(sae_set, k=settings.k, mode="set", value=value)
                result = measure_refusal(
                    lm,
                    formatter,
                    targets,
                    condition=_slug(f"{label} set {value:g}"),
                    interventions=[edit],
                    max_new_tokens=settings.max_new_tokens,
                    batch_size=settings.batch_size,
                    run=run,
                    seed=seed,
                )
                rows.append(
                    {
                        "condition": f"{label}, set to {value:g}",
                        targets.name: _rate_cell(result),
                    }
                )
                write_json(run.file("compare.json"), {"rows": rows, "settings": asdict(settings)})
    run.file("compare.md").write_text(compare_markdown(rows))
    return rows


def _rate_cell(result: RefusalResult) -> dict[str, Any]:
    return {
        "refusal_rate": result.rate.mean,
        "ci95": [result.rate.low, result.rate.high],
        "n": result.rate.n,
        "completions": result.completions_file,
    }


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", label.lower()).strip("-")


def compare_markdown(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [
            k
            for k in row
            if k not in ("condition", "interventions", "harmless_kl") and k not in columns
        ]
    lines = [
        "| condition | " + " | ".join(columns) + " | harmless KL |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for row in rows:
        cells = []
        for column in columns:
            cell = row.get(column)
            cells.append(
                f"{cell['refusal_rate']:.2f} [{cell['ci95'][0]:.2f}, {cell['ci95'][1]:.2f}]"
                if cell
                else ""
            )
        kl = row.get("harmless_kl")
        cells.append(f"{kl['mean']:.3f} [{kl['low']:.3f}, {kl['high']:.3f}]" if kl else "")
        lines.append(f"| {row['condition']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
