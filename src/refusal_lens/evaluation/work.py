"""Store-backed work: completions, verdicts and measurements computed only where the results
store lacks them, under an arm (a condition: its interventions and their key). The benchmark
and the analyses share it; it depends on neither.

What is missing is cut into work items (a generation batch, a chunk of verdicts, a shard of a
measurement) that the context's executor runs, here or on workers; each result is written to
the store by this process as it comes back."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import PromptSet
from ..executors import Executor, LocalExecutor, Replica
from ..generation import length_sorted_batches
from ..interventions import Intervention
from ..interventions.registry import readable
from ..judges import Judge, JudgeContext, make_judge
from ..latents import LatentSet
from ..models import ChatFormatter, LoadedModel
from ..saes import SAESet
from .store import Condition, ResultStore, StoredVerdict, asked_key


@dataclass
class Work:
    """What store-backed work needs: the model, the results store, the judges (by spec, in
    order; more are made on demand), the generation settings completions are keyed by, and
    the executor that computes what the store lacks."""

    lm: LoadedModel
    formatter: ChatFormatter
    store: ResultStore
    judges: dict[str, Judge]
    judge_specs: tuple[str, ...]  # the judges asked for, in order
    generation: str  # id of the generation settings (see `generation_id`)
    max_new_tokens: int
    batch_size: int
    log: Callable[[str], None]
    executor: Executor
    driver: Executor | None = field(default=None, init=False, repr=False)  # arms that stay here
    said_local: set[str] = field(default_factory=set, init=False, repr=False)


MEASURE_SHARD = 16  # prompts per work item of a teacher-forced measurement
VERDICT_CHUNK = 64  # completions per work item of a judge


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

        # the batches one local `generate` call makes: each is one work item
        batches = length_sorted_batches(missing, ctx.batch_size)
        desc = f"{'+'.join(p.name for p in sets)} · {arm.label}"
        tokens = max_new_tokens or ctx.max_new_tokens
        _executor(ctx, arm).map(
            "generate",
            {"max_new_tokens": tokens, "desc": desc, **_edits(ctx, arm)},
            [{"prompts": [missing[b] for b in batch]} for batch in batches],
            lambda n, outputs: keep(batches[n], outputs),
            desc=desc,
            units=[len(batch) for batch in batches],
        )
    return [[have[k][i] for i in range(len(t))] for k, t in enumerate(texts)]


def _edits(ctx: Work, arm: Arm) -> dict[str, Any]:
    """The arm's interventions as a work item carries them: the objects themselves for the
    local executor, their `to_dict()` for workers elsewhere (read back once per worker)."""
    if _executor(ctx, arm).name == "local":
        return {"interventions": list(arm.interventions)}
    return {"interventions": [item.to_dict() for item in arm.interventions]}


def _executor(ctx: Work, arm: Arm) -> Executor:
    """The context's executor, or this process for an arm whose interventions cannot travel
    (a per-prompt latent set's `to_dict()` is a key, not the set): said once per arm."""
    if ctx.executor.name == "local" or all(readable(i.kind) for i in arm.interventions):
        return ctx.executor
    if ctx.driver is None:
        ctx.driver = LocalExecutor(Replica(lm=ctx.lm, formatter=ctx.formatter))
    if arm.label not in ctx.said_local:
        ctx.said_local.add(arm.label)
        ctx.log(f"{arm.label}: its per-prompt interventions run in this process, not on workers")
    return ctx.driver


def _judge_for(ctx: Work, spec: str) -> Judge:
    if spec not in ctx.judges:  # the substring judge of XSTest and induction, when not listed
        ctx.judges[spec] = make_judge(spec, JudgeContext(lm=ctx.lm, formatter=ctx.formatter))
    return ctx.judges[spec]


def reads_evaluated_model(judge: Judge, lm: LoadedModel) -> bool:
    """Whether a judge reads the evaluated model (the first-token judge; the compliance judge
    without a fluency model of its own): it then runs where the model is."""
    inner = getattr(judge, "inner", judge)  # the degenerate screen wraps judges of completions
    return not judge.reads_completions or getattr(inner, "lm", None) is lm


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
    judge = _judge_for(ctx, spec)
    asked = list(texts) if requests is None else list(requests)
    judge_id = ctx.store.judge_id(judge.describe())
    gen = generation or ctx.generation
    # a verdict depends on what the judge was told was asked: keyed by it when not the prompt
    keys = [asked_key(t, a) for t, a in zip(texts, asked, strict=True)]
    ctx.store.add_asked(zip(texts, asked, strict=True))
    have = ctx.store.verdicts(arm.condition, gen, judge_id, keys)
    missing = [i for i in range(len(texts)) if i not in have]
    chunks = [
        missing[start : start + VERDICT_CHUNK] for start in range(0, len(missing), VERDICT_CHUNK)
    ]

    def keep(n: int, verdicts: list[dict[str, Any]]) -> None:
        rows = [(keys[i], StoredVerdict(**v)) for i, v in zip(chunks[n], verdicts, strict=True)]
        said = [(t, v) for t, v in rows if v.refused is not None or v.complied is not None]
        ctx.store.add_verdicts(arm.condition, gen, judge_id, said)  # unjudged: retried later
        have.update({i: row[1] for i, row in zip(chunks[n], rows, strict=True)})

    evaluated = reads_evaluated_model(judge, ctx.lm)
    _executor(ctx, arm).share_judges(ctx.judges)
    _executor(ctx, arm).map(
        "verdicts",
        {"judge": spec, "evaluated_model": evaluated, **_edits(ctx, arm)},
        [
            {"requests": [asked[i] for i in chunk], "completions": [completions[i] for i in chunk]}
            for chunk in chunks
        ],
        keep,
        desc=f"{spec} · {arm.label}",
        units=[len(chunk) for chunk in chunks],
        pool="model" if evaluated else "judge",
    )
    return judge.describe()["name"], [have[i] for i in range(len(texts))]


@dataclass(frozen=True)
class Measure:
    """A per-item measurement as work: the registered task that computes it (see
    `executors.replica`) and its per-item inputs, one list per argument."""

    task: str
    inputs: dict[str, Sequence[str]]


def stored_measure(
    ctx: Work, arm: Arm, task: str, metric: str, items: Sequence[str], measure: Measure
) -> list[float]:
    """Per-item values of a metric, computing only the items the store does not have."""
    return stored_measures(ctx, arm, [(task, metric)], items, measure)[0]


def stored_measures(
    ctx: Work,
    arm: Arm,
    keys: Sequence[tuple[str, str]],
    items: Sequence[str],
    measure: Measure,
) -> list[list[float]]:
    """`stored_measure` of several (task, metric) keys that one computation gives together
    (its task returns one list of values per key): the items missing under any key are
    computed once, in shards of `MEASURE_SHARD`."""
    have = [ctx.store.measurements(arm.condition, task, metric, items) for task, metric in keys]
    missing = [i for i, item in enumerate(items) if any(item not in h for h in have)]
    shards = [missing[s : s + MEASURE_SHARD] for s in range(0, len(missing), MEASURE_SHARD)]

    def keep(n: int, computed: list[list[float]]) -> None:
        for (task, metric), values, got in zip(keys, computed, have, strict=True):
            ctx.store.add_measurements(  # NaN (undefined) is not stored: SQLite reads it as NULL
                arm.condition,
                task,
                metric,
                [
                    (items[i], v, {})
                    for i, v in zip(shards[n], values, strict=True)
                    if not math.isnan(v)
                ],
            )
            got.update({items[i]: v for i, v in zip(shards[n], values, strict=True)})

    _executor(ctx, arm).map(
        measure.task,
        _edits(ctx, arm),
        [
            {name: [column[i] for i in shard] for name, column in measure.inputs.items()}
            for shard in shards
        ],
        keep,
        desc=f"{measure.task} · {arm.label}",
        units=[len(shard) for shard in shards],
    )
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
