"""Steering with a latent set: generate with its latents scaled or set and measure the refusal
rate (`refusal-lens steer`). The settings say how the set becomes an intervention; the job
builds it, generates (resumable into a run folder), and optionally measures the harmless KL."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .data import PromptSet, load_prompts
from .errors import UserError
from .evaluation.refusal import measure_refusal
from .interventions import EditLatents, Intervention
from .latents import LatentSet
from .models.chat import ChatFormatter
from .models.loading import LoadedModel
from .runs import RunDir
from .saes import SAESet


@dataclass(frozen=True)
class SteerSettings:
    """How a latent set is applied by `steer` (its flags come from these fields)."""

    limit: int | None = field(default=None, metadata={"help": "first N prompts only"})
    k: int | None = field(
        default=None, metadata={"help": "use the top K latents", "default": "the set's K*"}
    )
    scale: float | None = field(
        default=None, metadata={"help": "multiply the latents by this", "default": "the set's"}
    )
    set_value: float | None = field(
        default=None, metadata={"help": "set the latents to this value (not with --scale)"}
    )
    positions: str = field(
        default="all",
        metadata={"help": "where the edit applies", "choices": ("all", "prompt", "generated")},
    )
    from_position: int | None = field(
        default=None,
        metadata={
            "help": "edit prompt tokens from index P of the formatted prompt on (template "
            "included); negative: only the last -P prompt tokens (generated tokens follow "
            "--positions)",
            "signed": True,
            "metavar": "P",
        },
    )
    per_prompt: bool = field(
        default=False,
        metadata={
            "help": "each prompt with its own latent set (only for the prompts the set was "
            "selected on: transductive)"
        },
    )
    retain: str | None = field(
        default=None,
        metadata={
            "help": "pin this other latent set's latents to their clean values (a clean twin "
            "of each prompt runs beside it: twice the compute)",
            "metavar": "LATENTS",
        },
    )
    max_new_tokens: int = field(default=64, metadata={"help": "tokens generated per answer"})
    harmless_kl: str | None = field(
        default=None,
        metadata={
            "help": "also report the KL the edit costs on these harmless prompts",
            "metavar": "DATASET",
        },
    )
    kl_prompts: int = field(default=32, metadata={"help": "prompts for --harmless-kl"})

    def __post_init__(self) -> None:
        if self.scale is not None and self.set_value is not None:
            raise UserError("--scale and --set-value cannot be combined; give one of them")
        if self.per_prompt and self.retain:
            raise UserError("--per-prompt and --retain cannot be combined")
        if self.per_prompt and self.from_position is not None and self.from_position < 0:
            raise UserError(
                "--from-position with a negative P cannot be combined with --per-prompt"
            )

    def mode_and_value(self, latent_set: LatentSet) -> tuple[str, float]:
        """`("set", v)`, `("scale", c)`, or the set's own searched intervention."""
        if self.set_value is not None:
            return "set", self.set_value
        if self.scale is not None:
            return "scale", self.scale
        return str(latent_set.intervention["mode"]), float(latent_set.intervention["value"])


def at_positions(edit: Intervention, position: int | None) -> Intervention:
    """`from_position=P`: P >= 0 counts from the prompt's start, P < 0 from its end."""
    if position is None:
        return edit
    if position < 0 and isinstance(edit, EditLatents):
        return replace(edit, last_prompt_tokens=-position)
    return replace(edit, from_position=position)  # type: ignore[type-var]


def steer_edit(
    latent_set: LatentSet, saes: SAESet, settings: SteerSettings, *, global_: bool = False
) -> Intervention:
    """The intervention `settings` make of `latent_set` (`global_`: the set's own latents even
    when `per_prompt`, as prompts without a per-prompt set need)."""
    mode, value = settings.mode_and_value(latent_set)
    if settings.per_prompt and not global_:
        edit: Intervention = latent_set.per_prompt_edit(
            saes, k=settings.k, mode=mode, value=value, positions=settings.positions
        )
    else:
        retain = LatentSet.load(settings.retain).top() if settings.retain else ()
        edit = latent_set.edit(
            saes,
            k=settings.k,
            mode=mode,
            value=value,
            positions=settings.positions if not global_ else "all",
            retain=retain,
        )
    return at_positions(edit, settings.from_position)


def check_steer(latent_set: LatentSet, prompts: PromptSet, settings: SteerSettings) -> None:
    """What can be checked before the model loads: held-out prompts, K*, the retained set."""
    latent_set.check_held_out(prompts)
    if not settings.per_prompt:
        latent_set.top(settings.k)
    if settings.retain:
        LatentSet.load(settings.retain).top()


def steer_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    latent_set: LatentSet,
    saes: SAESet,
    prompts: PromptSet,
    settings: SteerSettings,
    *,
    data_dir: str | None = None,
    run: RunDir | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Generate under the steered latents, judge refusal, and return the result as data."""
    latent_set.check_model(lm)
    saes.check_model(lm)
    mode, value = settings.mode_and_value(latent_set)
    edit = steer_edit(latent_set, saes, settings)
    k_used = (
        int(settings.k or latent_set.intervention.get("k", 20))
        if settings.per_prompt
        else len(edit.latents)  # type: ignore[attr-defined]
    )
    scope = "-per-prompt" if settings.per_prompt else ""
    condition = f"{latent_set.method}{scope}-{mode}{value:g}-k{k_used}"
    result = measure_refusal(
        lm,
        formatter,
        prompts,
        condition=condition,
        interventions=[edit],
        max_new_tokens=settings.max_new_tokens,
        batch_size=batch_size,
        run=run,
        seed=seed,
    )
    data: dict[str, Any] = {
        **result.to_dict(),
        "method": latent_set.method,
        "protocol": latent_set.protocol,
        "mode": mode,
        mode if mode == "scale" else "value": value,
        "k": k_used,
        "per_prompt": settings.per_prompt,
        "model": lm.identity(),
    }
    if settings.harmless_kl:
        from .evaluation.side_effects import base_completions, completion_kl

        harmless = load_prompts(settings.harmless_kl, data_dir=data_dir, limit=settings.kl_prompts)
        latent_set.check_held_out(harmless)
        base = base_completions(lm, formatter, harmless.texts(), batch_size=batch_size)
        # harmless prompts have no per-prompt sets: the global set stands in for the KL
        kl_edit = edit
        if settings.per_prompt:
            kl_edit = steer_edit(latent_set, saes, settings, global_=True)
        kl = completion_kl(lm, formatter, harmless.texts(), base, [kl_edit], seed=seed)
        data["harmless_kl"] = {"dataset": harmless.name, **kl.to_dict()}
    return data
