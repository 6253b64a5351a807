"""Minimal latent sets and their interactions (Prakash, Yeo et al. 2025, "Beyond I'm Sorry, I
Can't", arXiv 2509.09708).

Effect of a set S: the mean drop of the refusal score (log-odds of the refusal tokens at the
last prompt position) on validation prompts the model refuses, when S is clamped (scaled by
c at every position). Greedy pruning starts from the latent set's top k and removes, one at a
time, the latent whose removal costs the least, while the rest keeps at least `keep` of the
full set's effect. Pairwise interaction of i and j: effect({i, j}) - effect({i}) - effect({j});
a negative score marks redundant latents (each can stand in for the other: the "hydra"
latents that take over when others are removed), a positive one synergy. Controls: a random
set matched by layer and frequency, of the minimal set's size. The minimal set is then
checked by generation on held-out test prompts (refusal rate by a judge, with intervals).
Every effect is stored as it is computed, so an interrupted run resumes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import settings_dict
from ..data import load_prompts
from ..data.promptset import prompt_hash
from ..errors import UserError
from ..evaluation.statistics import bootstrap_mean
from ..evaluation.work import make_arm
from ..executors import Executor
from ..interventions import EditLatents
from ..latents import LatentSet, latent_statistics, matched_random
from ..models import ChatFormatter, LoadedModel
from ..runs import RunDir, stable_hash, write_json
from ..saes import SAESet
from ..scoring import RefusalTokens, refusal_scores
from .common import analysis_context, latent_set_scale, refusals, start_analysis
from .inputs import AnalysisInputs

Pair = tuple[int, int]


@dataclass(frozen=True)
class MinimalSettings:
    # prompts the effects are measured on: none may be in the selection pools of the feature
    # set or of its direction (which holds harmful_train and harmful_val)
    dataset: str = "harmful_test"
    n_prompts: int = 32
    min_score: float = 0.0  # prompts count as refused above this refusal score (log-odds)
    k: int | None = None  # the starting set: top k of the latent set (None: its own k)
    scale: float | None = None  # None: the latent set's scale
    keep: float = 0.9  # the pruned set keeps at least this share of the full set's effect
    interactions: int = 10  # pairwise scores among the full set's top m latents
    test_dataset: str = "jailbreakbench"  # held-out check by generation ("" to skip)
    n_test: int = 32
    judge: str = "substring"
    max_new_tokens: int = 64
    random_seeds: tuple[int, ...] = (0,)
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.keep <= 1:
            raise UserError(f"keep must be in (0, 1], got {self.keep}")
        for name in ("n_prompts", "n_test", "max_new_tokens", "batch_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.interactions < 0:
            raise UserError(f"interactions must be 0 (off) or more, got {self.interactions}")


QUICK_MINIMAL: dict[str, Any] = {"n_prompts": 12, "interactions": 5, "n_test": 12, "k": 10}


class EffectCache:
    """Effects of latent sets, appended to a keyed JSONL as computed and reused on rerun."""

    def __init__(self, run: RunDir, key: str, compute: Callable[[Sequence[Pair]], float]) -> None:
        self.run, self.key, self.compute = run, key, compute
        self.known = {
            _set_key(r["latents"]): r["effect"] for r in run.read_jsonl("effects.jsonl", key)
        }

    def __call__(self, latents: Sequence[Pair]) -> float:
        name = _set_key(latents)
        if name not in self.known:
            effect = self.compute(latents)
            self.known[name] = effect
            entry = {"latents": [list(p) for p in sorted(latents)], "effect": effect}
            self.run.append_jsonl("effects.jsonl", self.key, [entry])
        return self.known[name]


def _set_key(latents: Sequence[Sequence[int]]) -> str:
    return ";".join(f"{a}:{b}" for a, b in sorted((int(p[0]), int(p[1])) for p in latents))


def greedy_prune(
    full: Sequence[Pair], effect: Callable[[Sequence[Pair]], float], keep: float
) -> tuple[list[Pair], list[dict[str, Any]]]:
    """The smallest set greedy removal reaches while keeping `keep` x the full effect, and
    the trace (set size, effect, latent removed)."""
    current = list(full)
    target = keep * effect(current)
    trace = [{"size": len(current), "effect": effect(current), "removed": None}]
    while len(current) > 1:
        options = [(effect([p for p in current if p != x]), x) for x in current]
        best, removed = max(options, key=lambda option: option[0])
        if best < target:
            break
        current = [p for p in current if p != removed]
        trace.append({"size": len(current), "effect": best, "removed": list(removed)})
    return current, trace


def interaction_scores(
    latents: Sequence[Pair], effect: Callable[[Sequence[Pair]], float]
) -> list[dict[str, Any]]:
    """effect({i, j}) - effect({i}) - effect({j}) for every pair."""
    alone = {p: effect([p]) for p in latents}
    rows = []
    for i, j in itertools.combinations(latents, 2):
        joint = effect([i, j])
        rows.append(
            {
                "a": list(i),
                "b": list(j),
                "joint": joint,
                "a_alone": alone[i],
                "b_alone": alone[j],
                "interaction": joint - alone[i] - alone[j],
            }
        )
    return rows


def minimal_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    latent_set: LatentSet,
    settings: MinimalSettings,
    out: str | Path,
    *,
    data_dir: str | Path | None,
    device: str = "auto",
    cache_dir: str | None = None,
    executor: Executor | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.perf_counter()
    run = start_analysis("minimal", settings, lm, saes, out, latent_sets=[latent_set])
    full = list(latent_set.top(settings.k))
    value = settings.scale if settings.scale is not None else latent_set_scale(latent_set)
    tokens = RefusalTokens.from_phrases(lm.tokenizer)
    banned = latent_set.selection_hashes()
    every = load_prompts(settings.dataset, data_dir=data_dir)
    prompts = every.filter(lambda p: prompt_hash(p.text) not in banned)
    if len(every) and not len(prompts):
        raise UserError(
            f"all {len(every)} prompts of {settings.dataset} are in the selection pools of the "
            "latent set or of its direction; measure on another set (--set dataset=...)"
        )
    base_scores = refusal_scores(
        lm, formatter, prompts.texts(), tokens, batch_size=settings.batch_size
    )
    scores = base_scores.tolist()
    refused = [t for t, s in zip(prompts.texts(), scores, strict=True) if s > settings.min_score]
    texts = refused[: settings.n_prompts]
    if len(texts) < 2:
        raise UserError(
            f"the model refuses {len(refused)} prompts of {settings.dataset} (refusal score > "
            f"{settings.min_score:g}); the effects need at least 2 (use another --set dataset=...)"
        )
    base = refusal_scores(lm, formatter, texts, tokens, batch_size=settings.batch_size)

    def compute(latents: Sequence[Pair]) -> float:
        edit = EditLatents(saes, tuple(latents), "scale", value)
        scores = refusal_scores(
            lm, formatter, texts, tokens, batch_size=settings.batch_size, interventions=[edit]
        )
        return round(float((base - scores).mean()), 6)

    key = stable_hash(
        {
            "model": lm.weights_sha256,
            "dtype": str(lm.dtype),
            "saes": saes.fingerprint(),
            "texts": texts,
            "value": value,
            "tokens": tokens.to_dict(),
            "system": formatter.system,
        }
    )
    effect = EffectCache(run, key, compute)
    echo(f"greedy pruning of {len(full)} latents on {len(texts)} refused prompts")
    minimal, trace = greedy_prune(full, effect, settings.keep)
    top = full[: settings.interactions]
    echo(f"pairwise interactions of {len(top)} latents")
    pairs = interaction_scores(top, effect)
    frequency = latent_statistics(
        lm, formatter, saes, texts, batch_size=settings.batch_size, progress=False
    ).frequency
    controls = {}
    for seed in settings.random_seeds:
        chosen = matched_random(minimal, frequency, seed, exclude=full)
        matched = [(a, b) for a, b, _ in chosen]
        controls[f"random (seed {seed})"] = {"latents": matched, "effect": effect(matched)}
    check = []
    if settings.test_dataset:
        sets = {"base": [], "full set": full, "minimal set": minimal}
        sets.update({name: c["latents"] for name, c in controls.items()})
        context = {
            "data_dir": data_dir,
            "device": device,
            "cache_dir": cache_dir,
            "echo": echo,
            "executor": executor,
        }
        check = _confirm(lm, formatter, saes, latent_set, sets, value, settings, run, **context)
    summary = {
        "model": lm.identity(),
        "settings": settings_dict(settings),
        "scale": value,
        "n_prompts": len(texts),
        "full": {"latents": [list(p) for p in full], "effect": effect(full)},
        "minimal": {"latents": [list(p) for p in minimal], "effect": effect(minimal)},
        "trace": trace,
        "interactions": pairs,
        "controls": {
            name: {"latents": [list(p) for p in c["latents"]], "effect": c["effect"]}
            for name, c in controls.items()
        },
        "test": check,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(run.file("minimal.json"), summary)
    (run.path / "minimal.md").write_text(minimal_markdown(summary))
    return summary


def _confirm(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    latent_set: LatentSet,
    sets: dict[str, list[Pair]],
    value: float,
    settings: MinimalSettings,
    run: RunDir,
    *,
    data_dir: str | Path | None,
    device: str,
    cache_dir: str | None,
    echo: Callable[[str], None],
    executor: Executor | None,
) -> list[dict[str, Any]]:
    """Refusal rates by generation on held-out test prompts, one row per latent set."""
    banned = latent_set.selection_hashes()
    prompts = (
        load_prompts(settings.test_dataset, data_dir=data_dir)
        .filter(lambda p: prompt_hash(p.text) not in banned)
        .head(settings.n_test)
    )
    rows = []
    with analysis_context(
        lm,
        formatter,
        run,
        judges=(settings.judge,),
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        device=device,
        cache_dir=cache_dir,
        executor=executor,
        echo=echo,
    ) as ctx:
        for label, latents in sets.items():
            edits = [EditLatents(saes, tuple(latents), "scale", value)] if latents else []
            arm = make_arm(ctx, label, label, "heldout", edits, (), saes if edits else None)
            (refused,) = refusals(ctx, [prompts], arm)
            estimate = bootstrap_mean(refused.astype(float), seed=settings.seed)
            rows.append(
                {
                    "set": label,
                    "size": len(latents),
                    "dataset": prompts.name,
                    "refusal": {
                        "mean": round(estimate.mean, 4),
                        "ci95": [round(estimate.low, 4), round(estimate.high, 4)],
                        "n": estimate.n,
                    },
                }
            )
    return rows


def minimal_markdown(summary: dict[str, Any]) -> str:
    full, minimal = summary["full"], summary["minimal"]
    lines = [
        "# Minimal latent set and interactions",
        "",
        f"Effect = mean drop of the refusal score on {summary['n_prompts']} refused validation "
        f"prompts, latents scaled by {summary['scale']:g}. Full set: {len(full['latents'])} "
        f"latents, effect {full['effect']:.3f}; minimal set (keeps "
        f"{summary['settings']['keep']:.0%}): {len(minimal['latents'])} latents, effect "
        f"{minimal['effect']:.3f}.",
        "",
    ]
    for name, control in summary["controls"].items():
        lines.append(f"- {name}, {len(control['latents'])} latents: effect {control['effect']:.3f}")
    if summary["test"]:
        lines += ["", "| set | size | refusal rate [95% CI] |", "|---|---|---|"]
        for row in summary["test"]:
            r = row["refusal"]
            lines.append(
                f"| {row['set']} | {row['size']} | {r['mean']:.2f} [{r['ci95'][0]:.2f}, "
                f"{r['ci95'][1]:.2f}] (n={r['n']}) |"
            )
    ranked = sorted(summary["interactions"], key=lambda row: row["interaction"])
    if ranked:
        lines += ["", "Most redundant pairs (joint effect below the sum of the two alone):", ""]
        lines += [
            "| a | b | joint | a alone | b alone | interaction |",
            "|---|---|---|---|---|---|",
        ]
        for row in ranked[:8]:
            lines.append(
                f"| L{row['a'][0]}:{row['a'][1]} | L{row['b'][0]}:{row['b'][1]} | "
                f"{row['joint']:.3f} | {row['a_alone']:.3f} | {row['b_alone']:.3f} | "
                f"{row['interaction']:+.3f} |"
            )
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the registry's hooks

SETTINGS = MinimalSettings
QUICK = QUICK_MINIMAL


def run(inputs: AnalysisInputs, settings: MinimalSettings, out: Path) -> dict[str, Any]:
    """The job over the shared analysis inputs (see `analyses.registry`)."""
    return minimal_job(
        inputs.lm,
        inputs.formatter,
        inputs.saes,
        inputs.ours,
        settings,
        out,
        **inputs.runtime(),
    )
