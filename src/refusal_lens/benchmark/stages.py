"""The benchmark's measurements per arm: harmful benchmarks, side effects, refusal induction,
judge agreement and latent cards, each through the results store."""

from __future__ import annotations

from typing import Any

from .. import heldout
from ..data import PromptSet, load_prompts, resolve_data_dir
from ..direction import Direction
from ..evaluation.store import StoredVerdict
from ..evaluation.work import (
    Arm,
    Measure,
    make_arm,
    stored_completions,
    stored_completions_of_sets,
    stored_measure,
    stored_measures,
    stored_verdicts,
)
from ..interventions import Intervention
from ..jobs import split_prompts
from ..latents import LatentSet
from ..runs import stable_hash
from ..saes import SAESet
from .arms import arm_setting
from .config import generic_documents
from .context import Context
from .tables import rate_entry


def harmful_stage(ctx: Context, arm: Arm) -> list[dict[str, Any]]:
    rows = []
    sets = [load_prompts(n, data_dir=ctx.data_dir, limit=ctx.config.limit) for n in arm.datasets]
    for what, selected_on in arm.selections:  # direction, latent set: neither saw these
        for prompts in sets:
            heldout.check(selected_on, prompts, what)
    every_completion = stored_completions_of_sets(ctx, arm, sets)
    for name, prompts, completions in zip(arm.datasets, sets, every_completion, strict=True):
        for spec in ctx.config.judges:
            judge_name, verdicts = stored_verdicts(ctx, arm, spec, prompts.texts(), completions)
            rows.append(
                {
                    "condition": arm.label,
                    "method": arm.method,
                    "protocol": arm.protocol,
                    "dataset": name,
                    "judge": judge_name,
                    "judge_spec": spec,
                    "setting": arm.setting,
                    "refused": [v.refused for v in verdicts],
                    "jailbroken": [_jailbroken(v) for v in verdicts],
                    "degenerate": [v.detail.get("degenerate") for v in verdicts],
                    "categories": [p.category for p in prompts],
                    # for the report's samples only (not kept in the summary's tables)
                    "prompts": prompts.texts(),
                    "completions": completions,
                }
            )
    return rows


def screened_completions(ctx: Context, arm: Arm, prompts: PromptSet) -> list[str]:
    """Short completions for refusal-only questions (over-refusal, induction): a refusal
    phrase shows in the first tokens, so these need not pay for the full length."""
    return stored_completions(
        ctx,
        arm,
        prompts,
        generation=ctx.screen_generation,
        max_new_tokens=ctx.config.screen_tokens,
    )


def _jailbroken(verdict: StoredVerdict) -> bool | None:
    if verdict.degenerate:
        return False
    if verdict.complied is not None:
        return verdict.complied
    return None if verdict.refused is None else not verdict.refused


def side_effect_stage(ctx: Context, arm: Arm, base: Arm) -> dict[str, list[float]]:
    config = ctx.config
    out: dict[str, list[float]] = {}
    harmless = load_prompts(config.harmless, data_dir=ctx.data_dir, limit=config.n_harmless)
    rollout_gen = ctx.store.generation_id(
        {"max_new_tokens": config.rollout_tokens, "kind": "rollout", "system": ctx.formatter.system}
    )
    rollouts = stored_completions(
        ctx, base, harmless, generation=rollout_gen, max_new_tokens=config.rollout_tokens
    )
    texts = harmless.texts()
    # items are named by content: other rollouts (length, system prompt) are other items
    items = [stable_hash({"prompt": t, "rollout": r}) for t, r in zip(texts, rollouts, strict=True)]
    if arm is not base:  # the KL and the CE from one teacher-forced pass of the arm
        out["harmless_kl"], out["rollout_ce"] = stored_measures(
            ctx,
            arm,
            [("harmless_kl", "kl"), ("rollout_ce", "nll")],
            items,
            Measure("kl_and_nll", {"texts": texts, "rollouts": rollouts}),
        )
    else:
        out["rollout_ce"] = stored_measure(
            ctx,
            arm,
            "rollout_ce",
            "nll",
            items,
            Measure("completion_nll", {"texts": texts, "rollouts": rollouts}),
        )
    documents = generic_documents(config.generic_text, ctx.data_dir, config.n_generic)
    out["generic_ce"] = stored_measure(
        ctx,
        arm,
        "generic_ce",
        "nll",
        [stable_hash({"text": text}) for text in documents],
        Measure("text_nll", {"texts": documents}),
    )
    if config.xstest_limit > 0 and resolve_data_dir(ctx.data_dir) is not None:
        safe = load_prompts("xstest_safe", data_dir=ctx.data_dir, limit=config.xstest_limit)
        completions = screened_completions(ctx, arm, safe)
        _, verdicts = stored_verdicts(
            ctx, arm, "substring", safe.texts(), completions, generation=ctx.screen_generation
        )
        out["xstest_over_refusal"] = [float(bool(v.refused)) for v in verdicts]
    return out


def induction_stage(
    ctx: Context, ours: LatentSet, saes: SAESet, direction: Direction
) -> list[dict[str, Any]]:
    """Refusal induced on harmless prompts by setting ours' latents to v. The value is chosen
    on harmless validation prompts (held out from the test prompts), as the search chooses c:
    the v with the highest rate of real refusals, where a degenerate answer ("I I I I ...",
    an empty string) is no refusal, whatever phrase it holds. Test rows: base, the chosen v,
    direction addition; validation rows: every v. Each row counts its degenerate answers."""
    config = ctx.config
    prompts = load_prompts(config.harmless, data_dir=ctx.data_dir, limit=config.n_induce)
    pool = split_prompts("harmless", "val", ctx.data_dir)
    validation = heldout.without(pool, [prompts]).head(config.n_induce)
    k = arm_setting(ctx, ours)["k"]  # the K* ours is clamped with

    def measure(label: str, value: float | None, edits: list[Intervention], on: PromptSet) -> dict:
        edits_latents = value is not None  # base and direction addition use no SAE
        arm = make_arm(
            ctx, label, "induce", "heldout", edits, (on.name,), saes if edits_latents else None
        )
        completions = screened_completions(ctx, arm, on)
        _, verdicts = stored_verdicts(
            ctx, arm, "substring", on.texts(), completions, generation=ctx.screen_generation
        )
        refused = [float(bool(v.refused) and not v.degenerate) for v in verdicts]
        return {
            "condition": label,
            "value": value,
            "dataset": on.name,
            **rate_entry(refused),
            "degenerate": sum(v.degenerate for v in verdicts),
            "n": len(verdicts),
        }

    edits = {v: [ours.edit(saes, k=k, mode="set", value=v)] for v in config.induce_values}
    curve = [
        measure(f"ours set to {v:g}", v, edits[v], validation) | {"split": "validation"}
        for v in config.induce_values
    ]
    best = max(curve, key=lambda r: (r["mean"], -r["degenerate"], -abs(r["value"])))
    chosen = best["value"]
    test = [
        measure("base", None, [], prompts),
        measure(f"ours set to {chosen:g}", chosen, edits[chosen], prompts)
        | {"chosen_on": f"{validation.name} ({len(validation)} prompts)"},
        measure("direction addition", None, [direction.addition()], prompts),
    ]
    return [row | {"split": "test"} for row in test] + curve


def agreement_stage(ctx: Context) -> None:
    """Every judge of the run against human labels (RUN/judges/agreement.json: the report's
    trust table), on a seeded sample of each labelled set; verdicts resume per chunk."""
    from ..evaluation.agreement import judge_agreement

    config = ctx.config
    judges = {s: j for s, j in ctx.judges.items() if s in config.judges and j.reads_completions}
    judge_agreement(
        judges,
        config.agreement_sets,
        ctx.run.path / "judges",
        data_dir=ctx.data_dir,
        limit=config.agreement_limit,
        seed=config.seed,
    )


def cards_stage(ctx: Context, ours: LatentSet, saes: SAESet, direction: Direction) -> None:
    from ..cards import CardSettings, build_cards, write_cards

    folder = ctx.run.path / "cards"
    if (folder / "cards.json").exists():
        return
    config = ctx.config
    cards = build_cards(
        ctx.lm,
        ctx.formatter,
        saes,
        ours.top(arm_setting(ctx, ours)["k"]),
        direction,
        split_prompts("harmful", "val", ctx.data_dir, limit=32),
        split_prompts("harmless", "val", ctx.data_dir, limit=32),
        data_dir=resolve_data_dir(ctx.data_dir),
        settings=CardSettings(
            corpus_tokens=config.cards_corpus_tokens, batch_size=config.batch_size
        ),
    )
    write_cards(cards, folder, f"{ctx.lm.name}: ours latents (held-out)")
