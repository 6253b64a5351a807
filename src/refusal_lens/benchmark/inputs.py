"""The benchmark's inputs, found or reused: the refusal direction, the SAE set and the latent
sets of each method (selected on train prompts, cached in the run folder by their key)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import __version__
from ..attribution import AttributionSettings
from ..direction import Direction, DirectionSettings
from ..evaluation.work import model_key
from ..interventions import vector_sha256
from ..jobs import (
    DEFAULT_EVAL_SETS,
    DatasetChoice,
    EvalSettings,
    LatentsChoice,
    direction_job,
    latents_job,
    resolve_direction_data,
)
from ..judges import (
    RefusalTokens,
)
from ..latents import LatentSet, SearchSettings, SelectionSettings
from ..runs import exclusive, stable_hash, write_json
from ..saes import SAESet
from ..saes.presets import ensure_default_sae_set
from ..settings import cache_dir as user_cache_dir
from .config import BenchmarkConfig
from .context import Context

DIRECTION_CACHE_VERSION = 2  # bump when the selection procedure changes
LATENTS_CACHE_VERSION = 1  # the same for latent selection


def evaluation_sets(config: BenchmarkConfig) -> tuple[str, ...]:
    """Every set the benchmark evaluates on (and the default benchmarks): no selection pool
    (direction, latent sets, searches) may hold their prompts, exactly or nearly."""
    return tuple(dict.fromkeys((*DEFAULT_EVAL_SETS, *config.datasets, config.harmless)))


def _direction_choice(ctx: Context) -> DatasetChoice:
    return DatasetChoice(exclude=evaluation_sets(ctx.config))


def find_direction(ctx: Context, seed: int) -> Direction:
    if ctx.config.direction:
        direction = Direction.load(ctx.config.direction)
    else:
        folder = ctx.run.path / "direction"
        if not (folder / "direction.json").exists():
            settings = DirectionSettings(
                n_train=ctx.config.direction_n_train, n_val=ctx.config.direction_n_val
            )
            cached = cached_direction_folder(ctx, settings, seed)
            with exclusive(cached.with_name(cached.name + ".lock")):  # one search per key
                if (cached / "direction.json").exists():
                    ctx.log(f"direction: not given, reusing the one found before in {cached}")
                else:
                    ctx.log(f"direction: not given, finding it (kept for later runs in {cached})")
                    direction_job(
                        ctx.lm,
                        ctx.formatter,
                        cached,
                        datasets=_direction_choice(ctx),
                        data_dir=ctx.data_dir,
                        settings=settings,
                        evaluation=EvalSettings(enabled=False),
                        seed=seed,
                    )
            _copy_into_place(cached, folder)
        direction = Direction.load(folder)
    direction.check_model(ctx.lm)
    return direction


def cached_direction_folder(ctx: Context, settings: DirectionSettings, seed: int) -> Path:
    """Where a benchmark's own direction search lives in the user cache, keyed by everything
    the search depends on (model weights and dtype, the selection data, settings, chat system
    prompt, seed), so a new run folder reuses it and an interrupted search resumes."""
    data, *_ = resolve_direction_data(
        _direction_choice(ctx), ctx.data_dir, settings, EvalSettings(enabled=False).n_test, seed
    )
    key = stable_hash(
        {
            "version": [DIRECTION_CACHE_VERSION, __version__],
            "weights": ctx.lm.weights_sha256,
            "dtype": str(ctx.lm.dtype),
            "data": data.hashes(),
            "settings": asdict(settings),
            # the chat template and system prompt, as the model sees a prompt
            "template": ctx.formatter.render("{instruction}"),
            "refusal_tokens": RefusalTokens.from_phrases(ctx.lm.tokenizer).to_dict(),
            "seed": seed,
        }
    )
    return user_cache_dir(ctx.cache_dir) / "directions" / f"{Path(ctx.lm.name).name}-{key[:16]}"


def _copy_into_place(source: Path, target: Path) -> None:
    """Copy a folder so that `target` either does not exist or is complete (a kill mid-copy
    leaves only the temporary folder, which the next run replaces)."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


def sae_set_for(ctx: Context) -> SAESet:
    if ctx.config.saes:
        saes = SAESet.load(ctx.config.saes)
    else:
        saes = ensure_default_sae_set(ctx.lm, ctx.data_dir, executor=ctx.executor)
    saes.check_model(ctx.lm)
    return saes


def _selection(ctx: Context, method: str, protocol: str, seed: int) -> SelectionSettings:
    return SelectionSettings(
        method=method,
        protocol=protocol,
        k=ctx.config.k,
        seed=seed,
        batch_size=ctx.config.batch_size,
        attribution=AttributionSettings(
            batch_size=AttributionSettings.batch_for(ctx.config.batch_size)
        ),
    )


def selection_key(
    choice: LatentsChoice, settings: SelectionSettings, content: dict[str, Any] | None = None
) -> str:
    """What decides a latent set: the settings and the content of its inputs (`content`:
    model weights, dtype, chat template, SAE set, the direction's vector, the matched set's
    latents), not the paths they were read from; batch sizes change speed, not the result."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "batch_size"}
        return value

    paths = ("saes", "direction", "match")  # their content is in `content`
    chosen = {k: v for k, v in asdict(choice).items() if k not in paths}
    return stable_hash(
        {"choice": chosen, "settings": strip(asdict(settings)), "content": content or {}}
    )


def _selection_content(
    ctx: Context, saes: SAESet, direction: Direction, match: LatentSet | None
) -> dict[str, Any]:
    return {
        "model": model_key(ctx.lm),
        "template": ctx.formatter.render("{instruction}"),
        "saes": saes.fingerprint(),
        "direction": [vector_sha256(direction.vector), direction.layer, direction.position],
        "match": None
        if match is None
        else stable_hash({"latents": match.latents, "intervention": match.intervention}),
    }


def _latent_set(
    ctx: Context,
    folder: Path,
    method: str,
    protocol: str,
    choice: LatentsChoice,
    content: dict[str, Any],
    seed: int = 0,
) -> LatentSet:
    settings = _selection(ctx, method, protocol, seed)
    key = selection_key(choice, settings, content)
    marker = folder / "benchmark_key.json"
    if folder.exists() and _stored_key(marker) != key:
        # selected from other inputs or settings (or by an older version): select it again
        ctx.log(f"latents: {folder} was selected from other inputs; selecting it again")
        shutil.rmtree(folder)
    if not _selected(folder, choice):
        cached = cached_latents_folder(ctx, key)
        with exclusive(cached.with_name(cached.name + ".lock")):  # one selection per key
            if _selected(cached, choice):
                ctx.log(f"latents: {method} ({protocol}), reusing the set selected in {cached}")
            else:
                ctx.log(f"latents: {method} ({protocol}) -> {cached} (kept for later runs)")
                latents_job(
                    ctx.lm,
                    ctx.formatter,
                    cached,
                    choice=choice,
                    settings=settings,
                    data_dir=ctx.data_dir,
                    search_settings=SearchSettings(batch_size=ctx.config.batch_size),
                    seed=seed,
                    executor=ctx.executor,
                )
        _copy_into_place(cached, folder)
    if not marker.exists():
        write_json(marker, {"key": key})
    return LatentSet.load(folder)


def _selected(folder: Path, choice: LatentsChoice) -> bool:
    return (folder / "latents.json").exists() and (
        not choice.search or (folder / "search.json").exists()
    )


def cached_latents_folder(ctx: Context, key: str) -> Path:
    """Where a benchmark's latent set lives in the user cache: `key` is the selection key
    (settings and the content of every input), so a new run folder reuses the set and an
    interrupted selection resumes there."""
    versioned = stable_hash({"version": [LATENTS_CACHE_VERSION, __version__], "key": key})
    return user_cache_dir(ctx.cache_dir) / "latents" / f"{Path(ctx.lm.name).name}-{versioned[:16]}"


def _stored_key(marker: Path) -> str | None:
    try:
        key = json.loads(marker.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def direction_source(ctx: Context) -> str:
    return ctx.config.direction or str(ctx.run.path / "direction")
