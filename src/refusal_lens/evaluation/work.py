"""Store-backed work: completions, verdicts and measurements computed only where the results
store lacks them, under an arm (a condition: its interventions and their key). The benchmark
and the analyses share it; it depends on neither."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..data import PromptSet
from ..generation import generate
from ..interventions import Intervention
from ..judges import FirstTokenJudge, Judge, JudgeContext, make_judge
from ..latents import LatentSet
from ..models import ChatFormatter, LoadedModel
from ..saes import SAESet
from .store import Condition, ResultStore, StoredVerdict, stored


@dataclass
class Work:
    """What store-backed work needs: the model, the results store, the judges (by spec, in
    order; more are made on demand) and the generation settings completions are keyed by."""

    lm: LoadedModel
    formatter: ChatFormatter
    store: ResultStore
    judges: dict[str, Judge]
    judge_specs: tuple[str, ...]  # the judges asked for, in order
    generation: str  # id of the generation settings (see `generation_id`)
    max_new_tokens: int
    batch_size: int
    log: Callable[[str], None]


@dataclass
class Arm:
    """One condition: a label, its interventions and where it applies."""

    label: str
    method: str
    protocol: str
    interventions: list[Intervention]
    condition: Condition
    datasets: tuple[str, ...]  # harmful sets it is evaluated on
    global_: bool = True  # one intervention for every prompt (side effects apply)
    latent_set: LatentSet | None = None
    # (what, its recorded selection prompts): checked against every benchmark it is run on
    selections: tuple[tuple[str, dict[str, Any]], ...] = ()
    setting: dict[str, Any] | None = None  # the (K*, c) a latent arm uses, and who chose it


def stored_completions(
    ctx: Work,
    arm: Arm,
    prompts: PromptSet,
    *,
    generation: str | None = None,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Completions of `prompts` under the arm, generating (and storing per batch) only the
    missing ones."""
    return stored_completions_of_sets(
        ctx, arm, [prompts], generation=generation, max_new_tokens=max_new_tokens
    )[0]


def stored_completions_of_sets(
    ctx: Work,
    arm: Arm,
    sets: Sequence[PromptSet],
    *,
    generation: str | None = None,
    max_new_tokens: int | None = None,
) -> list[list[str]]:
    """`stored_completions` of several prompt sets through one generation call, so their
    missing prompts share batches (a few prompts per set would otherwise make small batches)."""
    gen = generation or ctx.generation
    texts = [prompts.texts() for prompts in sets]
    have = [
        ctx.store.completions(arm.condition, gen, t, prompts.name)
        for t, prompts in zip(texts, sets, strict=True)
    ]
    # a prompt in two sets is generated once (the store keys completions by prompt text)
    places: dict[str, list[tuple[int, int]]] = {}
    for k, set_texts in enumerate(texts):
        for i, text in enumerate(set_texts):
            if i not in have[k]:
                places.setdefault(text, []).append((k, i))
    missing = list(places)
    if missing:

        def keep(batch: list[int], outputs: list[str]) -> None:
            rows: dict[int, list[tuple[int, str, str]]] = {}
            for b, out in zip(batch, outputs, strict=True):
                k, i = places[missing[b]][0]
                rows.setdefault(k, []).append((i, missing[b], out))
                for k2, i2 in places[missing[b]]:
                    have[k2][i2] = out
            for k, set_rows in rows.items():
                ctx.store.add_completions(arm.condition, gen, sets[k].name, set_rows)

        generate(
            ctx.lm,
            ctx.formatter,
            missing,
            max_new_tokens=max_new_tokens or ctx.max_new_tokens,
            batch_size=ctx.batch_size,
            interventions=arm.interventions,
            on_batch=keep,
            desc=f"{'+'.join(p.name for p in sets)} · {arm.label}",
        )
    return [[have[k][i] for i in range(len(t))] for k, t in enumerate(texts)]


def _judge_for(ctx: Work, spec: str, arm: Arm) -> Judge:
    if spec not in ctx.judges:  # the substring judge of XSTest and induction, when not listed
        ctx.judges[spec] = make_judge(spec, JudgeContext(lm=ctx.lm, formatter=ctx.formatter))
    judge = ctx.judges[spec]
    if isinstance(judge, FirstTokenJudge):  # it reads the model under this arm's intervention
        return FirstTokenJudge(
            ctx.lm,
            ctx.formatter,
            judge.tokens,
            threshold=judge.threshold,
            interventions=arm.interventions,
            batch_size=judge.batch_size,
        )
    return judge


def stored_verdicts(
    ctx: Work,
    arm: Arm,
    spec: str,
    texts: Sequence[str],
    completions: Sequence[str],
    *,
    generation: str | None = None,
    requests: Sequence[str] | None = None,
) -> tuple[str, list[StoredVerdict]]:
    """Verdicts of a judge on stored completions, judging only the missing ones. `requests`
    (default: the prompts) is what the judge is told was asked: a jailbreak's plain goal, so
    a compliance judge checks the answer against the request, not against its wrapper."""
    judge = _judge_for(ctx, spec, arm)
    asked = list(texts) if requests is None else list(requests)
    judge_id = ctx.store.judge_id(judge.describe())
    gen = generation or ctx.generation
    # a verdict depends on what the judge was told was asked: keyed by it when not the prompt
    keys = [t if a == t else f"{t}\n\x1fasked: {a}" for t, a in zip(texts, asked, strict=True)]
    have = ctx.store.verdicts(arm.condition, gen, judge_id, keys)
    missing = [i for i in range(len(texts)) if i not in have]
    for start in range(0, len(missing), 64):
        chunk = missing[start : start + 64]
        verdicts = judge.verdicts([asked[i] for i in chunk], [completions[i] for i in chunk])
        rows = [(keys[i], stored(v)) for i, v in zip(chunk, verdicts, strict=True)]
        said = [(t, v) for t, v in rows if v.refused is not None or v.complied is not None]
        ctx.store.add_verdicts(arm.condition, gen, judge_id, said)  # unjudged: retried later
        have.update({i: row[1] for i, row in zip(chunk, rows, strict=True)})
    return judge.describe()["name"], [have[i] for i in range(len(texts))]


def stored_measure(
    ctx: Work,
    arm: Arm,
    task: str,
    metric: str,
    items: Sequence[str],
    compute: Callable[[list[int]], list[float]],
) -> list[float]:
    """Per-item values of a metric, computing only the items the store does not have."""
    return stored_measures(ctx, arm, [(task, metric)], items, lambda idx: [compute(idx)])[0]


def stored_measures(
    ctx: Work,
    arm: Arm,
    keys: Sequence[tuple[str, str]],
    items: Sequence[str],
    compute: Callable[[list[int]], list[list[float]]],
) -> list[list[float]]:
    """`stored_measure` of several (task, metric) keys that one computation gives together
    (one list of values per key): the items missing under any key are computed once."""
    have = [ctx.store.measurements(arm.condition, task, metric, items) for task, metric in keys]
    missing = [i for i, item in enumerate(items) if any(item not in h for h in have)]
    if missing:
        computed = compute(missing)
        for (task, metric), values, got in zip(keys, computed, have, strict=True):
            ctx.store.add_measurements(  # NaN (undefined) is not stored: SQLite reads it as NULL
                arm.condition,
                task,
                metric,
                [
                    (items[i], v, {})
                    for i, v in zip(missing, values, strict=True)
                    if not math.isnan(v)
                ],
            )
            got.update({items[i]: v for i, v in zip(missing, values, strict=True)})
    return [[got[item] for item in items] for got in have]


def make_arm(
    ctx: Work,
    label: str,
    method: str,
    protocol: str,
    interventions: list[Intervention],
    datasets: tuple[str, ...],
    saes: SAESet | None,
    latent_set: LatentSet | None = None,
    *,
    selections: tuple[tuple[str, dict[str, Any]], ...] = (),
    setting: dict[str, Any] | None = None,
) -> Arm:
    spec = [item.to_dict() for item in interventions]
    condition = Condition(
        model_key(ctx.lm),
        ctx.store.intervention_id(spec),
        saes.fingerprint() if saes is not None else "",
        label,
    )
    return Arm(
        label, method, protocol, interventions, condition, datasets, True, latent_set,
        selections, setting,
    )  # fmt: skip


def generation_id(
    store: ResultStore, lm: LoadedModel, formatter: ChatFormatter, max_new_tokens: int
) -> str:
    """Id of greedy generation settings: completions stored under it are shared by every
    command that generates with the same settings (benchmark, analyses)."""
    return store.generation_id(
        {
            "max_new_tokens": max_new_tokens,
            "system": formatter.system,
            "greedy": True,
            "dtype": lm.identity()["dtype"],
        }
    )


def model_key(lm: LoadedModel) -> str:
    """The model part of every result key: its weights and the dtype they ran in."""
    return f"{lm.weights_sha256}:{lm.identity()['dtype']}"


def base_arm(ctx: Work, datasets: tuple[str, ...] = ()) -> Arm:
    """The unsteered model (`datasets`: the harmful sets it is evaluated on, if any)."""
    return make_arm(ctx, "base", "base", "-", [], datasets, None)
