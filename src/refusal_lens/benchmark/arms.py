"""The conditions the benchmark compares: base, direction ablation and one arm per latent set
(with its K* and c)."""

from __future__ import annotations

from typing import Any

from ..direction import Direction
from ..evaluation.work import Arm, base_arm, make_arm
from ..interventions import Intervention
from ..jobs import (
    LatentsChoice,
)
from ..latents import LatentSet
from ..saes import SAESet
from .config import TRANSDUCTIVE_METHODS, direction_selection
from .context import Context
from .inputs import (
    _latent_set,
    _selection_content,
    direction_source,
    evaluation_sets,
)


def _k(ctx: Context, latent_set: LatentSet, k: int | None = None) -> int:
    """K* for a set: `k` (default: the configured k), or all the set ranks when it ranks
    fewer (a small SAE set with a per-layer prefilter), which the log says."""
    wanted = ctx.config.k if k is None else k
    k = min(wanted, len(latent_set.latents))
    if k < wanted:
        ctx.log(f"{latent_set.method}: ranks {k} latents, fewer than K* = {wanted}; using {k}")
    return k


def arm_setting(ctx: Context, latent_set: LatentSet) -> dict[str, Any]:
    """The (K*, c) a latent arm clamps with: `scale` when given (at the configured K*),
    else the pair the set's own search chose on validation prompts (a random control: its
    matched set's), else the configured K* at the set's default c."""
    config = ctx.config
    searched = latent_set.intervention.get("chosen_by", "")
    if config.scale is not None:
        k, value, chosen_by = config.k, config.scale, "the benchmark's scale setting"
    elif config.search and searched.startswith(("search", "the matched set's")):
        k, value = int(latent_set.intervention["k"]), float(latent_set.intervention["value"])
        chosen_by = searched
    else:
        k, value = config.k, float(latent_set.intervention["value"])
        chosen_by = "default (not searched)"
    return {"k": _k(ctx, latent_set, k), "value": value, "chosen_by": chosen_by}


def build_arms(
    ctx: Context, direction: Direction, saes: SAESet | None
) -> tuple[list[Arm], LatentSet | None]:
    config = ctx.config
    arms = [base_arm(ctx, ctx.config.datasets)]
    by_direction = (("the refusal direction", direction_selection(direction)),)
    if "direction" in config.methods:
        ablation = [direction.ablation()]
        arms.append(
            make_arm(
                ctx, "direction ablation", "direction", "-", ablation, config.datasets, None,
                selections=by_direction,
            )
        )  # fmt: skip
    if saes is None:
        return arms, None
    common = {
        "saes": config.saes,
        "direction": direction_source(ctx),
        "n_prompts": config.n_select,
        "exclude": evaluation_sets(config),
    }
    content = _selection_content(ctx, saes, direction, None)
    root = ctx.run.path / "latents"
    # ours is selected whenever a set needs it (the random control is matched to it, induction
    # and the cards read it), so adding or removing another method never changes the rest
    needs_ours = config.scale is None or "ours" in config.methods or "random" in config.methods
    sets: dict[str, LatentSet] = {}
    for method in ("ours", "cossim", "actdiff", "ap"):
        wanted = "heldout" in config.protocols and method in config.methods
        if wanted or (method == "ours" and needs_ours):
            # each method's (K*, c) is searched on the same validation prompts as ours'
            choice = LatentsChoice(**common, search=config.search)
            folder = root / "heldout" / method
            sets[method] = _latent_set(ctx, folder, method, "heldout", choice, content)
    ours = sets.get("ours")

    def latent_arm(label: str, latent_set: LatentSet, protocol: str, datasets: tuple) -> Arm:
        setting = arm_setting(ctx, latent_set)
        if protocol == "transductive" and latent_set.per_prompt:
            edit: Intervention = latent_set.per_prompt_edit(
                saes, k=setting["k"], mode="scale", value=setting["value"]
            )
        else:  # cossim and actdiff have no per-prompt sets: the paper clamps their global set
            edit = latent_set.edit(saes, k=setting["k"], mode="scale", value=setting["value"])
        selections = (
            ((f"the {latent_set.method} latents", latent_set.selected_on), *by_direction)
            if protocol == "heldout"
            else ()
        )
        return make_arm(
            ctx, label, latent_set.method, protocol, [edit], datasets, saes, latent_set,
            selections=selections, setting=setting,
        )  # fmt: skip

    if "heldout" in config.protocols:
        for method, latent_set in sets.items():
            if method in config.methods:
                arms.append(latent_arm(method, latent_set, "heldout", config.datasets))
        if "random" in config.methods and ours is not None:
            for seed in config.random_seeds:
                choice = LatentsChoice(**common, match=str(root / "heldout" / "ours"))
                folder = root / "heldout" / f"random-{seed}"
                matched = _selection_content(ctx, saes, direction, ours)
                latent_set = _latent_set(ctx, folder, "random", "heldout", choice, matched, seed)
                arms.append(latent_arm(f"random {seed}", latent_set, "heldout", config.datasets))
    if "transductive" in config.protocols:
        for dataset in config.datasets:
            for method in TRANSDUCTIVE_METHODS:
                if method not in config.methods:
                    continue
                choice = LatentsChoice(**common | {"n_prompts": config.limit}, harmful=dataset)
                folder = root / "transductive" / dataset / method
                latent_set = _latent_set(ctx, folder, method, "transductive", choice, content)
                label = f"{method} ({'per prompt' if latent_set.per_prompt else 'on the set'})"
                arm = latent_arm(label, latent_set, "transductive", (dataset,))
                arm.global_ = False  # selected on its benchmark: no side effects elsewhere
                arms.append(arm)
    return arms, ours
