"""Training an SAE set for a model end to end, the `quick` / `full` presets, the default cache.

`train_sae_set` = collect activations (cached, resumable) -> train (checkpointed, resumable) ->
save an `SAESet`. `ensure_default_sae_set` is what later stages call when the user gives no
`--saes`: it trains the `quick` preset once per model and caches it in the user cache directory,
keyed by the model's weights hash and the preset's settings.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..executors.base import Executor
from ..hooks import HookPoint, check_layer, parse_hook_point
from ..models import LoadedModel
from ..runs import environment, stable_hash, write_json
from ..settings import cache_dir
from .activations import TokenMask, collect_activations
from .mixture import DEFAULT_MIXTURE, MixtureSource
from .sets import SET_FILE, SAESet
from .training import TrainConfig, final_stats, train_layer_groups, train_saes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SAERecipe:
    """Everything that determines an SAE set besides the model."""

    layers: tuple[int, ...]
    train: TrainConfig
    collect_tokens: int
    mixture: tuple[MixtureSource, ...] = DEFAULT_MIXTURE
    mask: TokenMask = field(default_factory=lambda: TokenMask(post_instruction_repeat=4))
    context: int = 256
    collect_batch_size: int = 16  # sequences per forward pass while collecting
    cache_dtype: str = "float16"

    def key(self, lm: LoadedModel) -> str:
        """The model's weights and the dtype it runs in (the activations trained on), and the
        recipe."""
        recipe = asdict(self)
        if self.train.select_dtype == "float32":  # the key of sets made before this setting
            del recipe["train"]["select_dtype"]
        return stable_hash({"model": lm.weights_sha256, "dtype": str(lm.dtype), "recipe": recipe})


def parse_layers(spec: str, n_layers: int) -> tuple[int, ...]:
    """`6-18`, `6,9,12`, `all`, or a mix (`2,6-8`)."""
    if spec == "all":
        return tuple(range(n_layers))
    layers: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise UserError(f"bad layer list {spec!r}; write e.g. 6-18, 6,9,12 or all")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        layers.update(range(low, high + 1))
    for layer in layers:
        check_layer(layer, n_layers)
    return tuple(sorted(layers))


def parse_count(text: str) -> int:
    """`2M`, `500k`, `4096` -> int."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not match:
        raise UserError(f"bad count {text!r}; write e.g. 500k, 2M or 4096")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def quick_layers(n_layers: int) -> tuple[int, ...]:
    """Three middle layers, where the refusal direction of chat models usually sits (the
    default model's direction layer is 13-15 of 24)."""
    middle = round(n_layers * 0.55)
    return tuple(sorted({max(0, middle - 2), middle, min(n_layers - 1, middle + 2)}))


def preset(name: str, lm: LoadedModel) -> SAERecipe:
    n = lm.n_layers
    # each token's top k is chosen from an encoder product in the model's own precision when
    # that is bfloat16 (the values and gradients stay float32; docs/results.md, section 7,
    # speed and memory)
    select = "bfloat16" if lm.dtype == torch.bfloat16 else "float32"
    if name == "quick":
        return SAERecipe(
            layers=quick_layers(n),
            train=TrainConfig(
                expansion=8, k=64, total_tokens=400_000, lr=2e-3, select_dtype=select
            ),
            collect_tokens=130_000,
        )
    if name == "full":
        return SAERecipe(
            layers=tuple(range(n)),
            train=TrainConfig(
                expansion=8, k=64, total_tokens=1_000_000, lr=2e-3, select_dtype=select
            ),
            collect_tokens=300_000,
        )
    raise UserError(f"unknown preset {name!r}; use quick or full")


def train_sae_set(
    lm: LoadedModel,
    recipe: SAERecipe,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    activations: str | Path | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> SAESet:
    """Collect, train and save; every step resumes from what an earlier run left.
    `executor` (other than local): collection batches and layer groups are its work items."""
    spread = executor if executor is not None and executor.name != "local" else None
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / SET_FILE).exists():
        existing = SAESet.load(folder)
        if existing.info.get("recipe_key") == recipe.key(lm):
            log.info("reusing the SAE set in %s", folder)
            return existing
        raise UserError(
            f"{folder} already holds an SAE set made with other settings; pick another --out"
        )
    for layer in recipe.layers:
        check_layer(layer, lm.n_layers)
    points = [HookPoint(layer, "resid_post") for layer in recipe.layers]
    started = time.perf_counter()
    cache = collect_activations(
        lm,
        points,
        activations or folder / "activations",
        mixture=recipe.mixture,
        n_tokens=recipe.collect_tokens,
        data_dir=data_dir,
        context=recipe.context,
        batch_size=recipe.collect_batch_size,
        mask=recipe.mask,
        dtype=recipe.cache_dtype,
        progress=progress,
        executor=spread,
    )
    collected = time.perf_counter()
    metadata = {
        p.name: {"model_name": lm.name, "hook_name": f"blocks.{p.layer}.hook_resid_post"}
        for p in points
    }
    if spread is None:
        trained = train_saes(
            cache,
            recipe.train,
            folder / "training",
            metadata=metadata,
            progress=progress,
            device=lm.device,
        )
    else:
        trained = train_layer_groups(
            cache, recipe.train, folder / "training", spread, metadata=metadata
        )
    finished = time.perf_counter()
    info: dict[str, Any] = {
        "final_stats": final_stats(folder / "training"),
        "recipe": asdict(recipe),
        "recipe_key": recipe.key(lm),
        "activation_tokens": cache.n_tokens,
        "seconds": {"collect": collected - started, "train": finished - collected},
        # per task kind and worker: items, units, busy seconds (an executor's throughput)
        "executor": spread.summary() if spread is not None else {"executor": "local"},
        "environment": environment(),
    }
    sae_set = SAESet(
        {"name": lm.name, "weights_sha256": lm.weights_sha256},
        {parse_hook_point(name): sae for name, sae in trained.items()},
        info,
    )
    sae_set.save(folder)
    write_json(folder / "training" / "summary.json", info)
    return sae_set


def default_sae_folder(lm: LoadedModel, cache: str | Path | None = None) -> Path:
    """Where the `quick` SAEs of this model live in the user cache (keyed by weights + recipe)."""
    return cache_dir(cache) / "saes" / f"{lm.name}-{preset('quick', lm).key(lm)}"


def check_default_sae_set(
    lm: LoadedModel, data_dir: str | Path | None = None, cache: str | Path | None = None
) -> None:
    """Fail before any work when the quick set is neither cached nor trainable here."""
    from ..data import resolve_data_dir

    if (default_sae_folder(lm, cache) / SET_FILE).exists() or resolve_data_dir(data_dir):
        return
    raise UserError(
        f"no cached SAE set for {lm.name}, and training one reads the text mixture of the data "
        "directory: pass --data-dir DIR (or set REFUSAL_LENS_DATA), or give --saes SAES"
    )


def ensure_default_sae_set(
    lm: LoadedModel,
    data_dir: str | Path | None = None,
    cache: str | Path | None = None,
    executor: Executor | None = None,
) -> SAESet:
    """The `quick` SAEs of this model from the user cache, trained first when they are not there
    (minutes on a CPU: the name says it may do work; `check_default_sae_set` only checks), on
    `executor`'s workers when it is given."""
    recipe = preset("quick", lm)
    folder = default_sae_folder(lm, cache)
    check_default_sae_set(lm, data_dir, cache)
    if not (folder / SET_FILE).exists():
        log.warning(
            "no cached SAEs for %s: training the quick preset once (minutes; cached in %s)",
            lm.name,
            folder,
        )
    return train_sae_set(lm, recipe, folder, data_dir=data_dir, executor=executor)


def with_overrides(recipe: SAERecipe, **changes: Any) -> SAERecipe:
    train_changes = {k: v for k, v in changes.items() if k in TrainConfig.__dataclass_fields__}
    recipe_changes = {k: v for k, v in changes.items() if k in SAERecipe.__dataclass_fields__}
    unknown = set(changes) - set(train_changes) - set(recipe_changes)
    if unknown:
        raise UserError(f"unknown SAE settings: {', '.join(sorted(unknown))}")
    return replace(recipe, train=replace(recipe.train, **train_changes), **recipe_changes)
