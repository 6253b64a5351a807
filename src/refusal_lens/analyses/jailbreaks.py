"""Jailbreaks at the latent level (Yeo et al. 2025).

Protocol: take plain requests the model refuses alone (requests the refusal latents were
selected on are left out), put each in several attacks (readable suffixes, GPTFuzz templates
or a file's prompts), and let the judges say which attacks succeed. For every attack, the
refusal latents' activity on the last template tokens (the sum over latents of their mean
over those positions) is compared with the plain request's: suppression = 1 - attacked /
plain. Successful and failed attacks are compared, with bootstrap intervals, and random latents
matched to the refusal latents by layer and frequency are the control (a jailbreak that
lowers every latent is not evidence about refusal latents): the two are read on the same
attacks, so their difference is taken attack by attack (paired), with requests resampled. For
suffixes, each word of a successful suffix is dropped in turn: the word whose removal restores
the most refusal activity is the one the suppression is attributed to.

Paper (Gemma-2-2B-IT): a successful readable suffix suppresses the refusal latents by 72%,
"fictional" accounts for 39 of 85 successes; on WildJailbreak pairs refusal latents drop 73%
when the jailbreak succeeds vs 18% when it fails (harm latents 49% vs 30%).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import settings_dict
from ..data import Prompt, PromptSet
from ..data.adversarial import (
    SLOT,
    adversarial_file,
    gptfuzz_questions,
    gptfuzz_templates,
    readable_suffixes,
)
from ..data.promptset import prompt_hash
from ..direction import Direction
from ..errors import UserError
from ..evaluation.statistics import interval_cell, paired_difference
from ..executors import Executor
from ..generation import length_sorted_batches
from ..hooks import HookPoint, record
from ..latents import LatentSet, latent_statistics, matched_random
from ..models import ChatFormatter, LoadedModel
from ..runs import RunDir, stable_hash, write_json
from ..saes import SAESet
from .common import analysis_context, jailbroken, refusals, start_analysis
from .inputs import AnalysisInputs

Latents = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class JailbreakSettings:
    source: str = "suffixes"  # suffixes, gptfuzz, or a file with prompt and goal columns
    n_goals: int = 64  # plain requests screened; those the model refuses are attacked
    attacks_per_goal: int = 8
    k: int | None = None  # refusal latents: top k of the latent set (None: its own k)
    positions: int | None = None  # last template tokens read (None: the template's own count)
    judges: tuple[str, ...] = ("substring", "compliance")  # success: every judge says complied
    max_new_tokens: int = 64
    random_seeds: tuple[int, ...] = (0,)
    word_attribution: bool = True  # suffixes only
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_goals", "attacks_per_goal", "max_new_tokens", "batch_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.positions is not None and self.positions <= 0:
            raise UserError(f"positions must be positive, got {self.positions}")
        if not self.judges:
            raise UserError("the jailbreak analysis needs at least one judge")


QUICK_JAILBREAKS: dict[str, Any] = {
    "n_goals": 16,
    "attacks_per_goal": 4,
    "judges": ("substring",),
}


@dataclass(frozen=True)
class Attack:
    goal: str
    attack: str  # the suffix, template id or file label
    prompt: str


# --------------------------------------------------------------------------- attacks


def candidate_goals(
    settings: JailbreakSettings, data_dir: str | Path | None, banned: set[str]
) -> dict[str, list[tuple[str, str]]]:
    """Plain request -> its attacks as (label, prompt), for up to `n_goals` requests not in
    `banned` (prompt hashes the latents were selected on)."""
    by_goal: dict[str, list[tuple[str, str]]] = {}
    if settings.source == "suffixes":
        for goal, suffixes in readable_suffixes(data_dir):
            by_goal[goal] = [(s, f"{goal} {s}") for s in suffixes]
    elif settings.source == "gptfuzz":
        templates = gptfuzz_templates(data_dir)
        for question in gptfuzz_questions(data_dir).texts():
            by_goal[question] = [
                (f"template {tid}", text.replace(SLOT, question)) for tid, text in templates
            ]
    else:
        path = Path(settings.source)
        if not path.is_file():
            raise UserError(
                f"unknown jailbreak source {settings.source!r}; use suffixes, gptfuzz or a "
                ".csv/.json/.jsonl file with prompt and goal columns"
            )
        for prompt in adversarial_file(path):
            if "goal" not in prompt.meta:
                raise UserError(f"{path}: every record needs a goal (the plain request)")
            by_goal.setdefault(prompt.meta["goal"], []).append((prompt.meta["attack"], prompt.text))
    goals = [g for g in by_goal if prompt_hash(g) not in banned and by_goal[g]]
    random.Random(settings.seed).shuffle(goals)
    return {goal: by_goal[goal] for goal in goals[: settings.n_goals]}


def sample_attacks(
    by_goal: dict[str, list[tuple[str, str]]], goals: Sequence[str], per_goal: int, seed: int
) -> list[Attack]:
    rng = random.Random(seed)
    attacks = []
    for goal in goals:
        options = by_goal[goal]
        for label, prompt in rng.sample(options, min(per_goal, len(options))):
            attacks.append(Attack(goal, label, prompt))
    return attacks


def _set(name: str, texts: Sequence[str]) -> PromptSet:
    return PromptSet(name, tuple(Prompt(t) for t in texts))


# --------------------------------------------------------------------------- latent activity


@torch.inference_mode()
def latent_activity(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    latents: Latents,
    texts: Sequence[str],
    *,
    positions: int,
    batch_size: int,
    run: RunDir | None = None,
    progress: bool = True,
) -> np.ndarray:
    """`[n, len(latents)]`: each latent's mean activation over the last `positions` template
    tokens of each prompt. With a run folder, rows are appended to a keyed JSONL as batches
    finish and reused."""
    key = stable_hash(
        {
            "model": lm.weights_sha256,
            "dtype": str(lm.dtype),
            "system": formatter.system,
            "saes": saes.fingerprint(),
            "latents": [list(pair) for pair in latents],
            "positions": positions,
        }
    )
    name = "activity.jsonl"
    have = {r["text"]: r["values"] for r in run.read_jsonl(name, key)} if run else {}
    missing = list(dict.fromkeys(t for t in texts if t not in have))
    layers = sorted({layer for layer, _ in latents})
    points = [HookPoint(layer, "resid_post") for layer in layers]
    for indices in tqdm(
        length_sorted_batches(missing, batch_size),
        desc="latent activity",
        unit="batch",
        disable=not progress or not missing,
    ):
        batch = formatter.encode([missing[i] for i in indices]).to(lm.device)
        with record(lm.model, points, reduce=lambda a: a[:, -positions:].float()) as acts:
            lm.model(**batch.forward_kwargs(), use_cache=False, logits_to_keep=1)
        columns = []
        for layer, latent in latents:
            sae = saes[HookPoint(layer, "resid_post")]
            values = sae.encode_latents(
                acts[HookPoint(layer, "resid_post")][0], torch.tensor([latent])
            )
            columns.append(values[..., 0].mean(dim=1).cpu())
        rows = torch.stack(columns, dim=1)
        if not torch.isfinite(rows).all():
            raise UserError("NaN or inf latent activations; try --dtype float32")
        records = [
            {"text": missing[i], "values": row.tolist()}
            for i, row in zip(indices, rows, strict=True)
        ]
        have.update({r["text"]: r["values"] for r in records})
        if run:
            run.append_jsonl(name, key, records)
    return np.array([have[t] for t in texts], dtype=np.float64).reshape(len(texts), len(latents))


def suppression(plain: np.ndarray, attacked: np.ndarray) -> np.ndarray:
    """1 - attacked / plain of the summed activity; NaN where the plain request shows none."""
    total_plain, total_attacked = plain.sum(axis=1), attacked.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total_plain > 0, 1.0 - total_attacked / total_plain, np.nan)


def _words(suffix: str) -> list[str]:
    return suffix.split()


def _word_key(word: str) -> str:
    return re.sub(r"[^\w'-]", "", word.lower())


def word_attribution(
    activity: Callable[[Sequence[str]], np.ndarray], attacks: Sequence[Attack]
) -> list[dict[str, Any]]:
    """For each suffix attack, the refusal activity restored by dropping each word; the top
    word is the one whose removal restores the most (None when no removal restores any)."""
    variants, owners = [], []
    for a, attack in enumerate(attacks):
        words = _words(attack.attack)
        for w in range(len(words)):
            kept = " ".join(words[:w] + words[w + 1 :])
            variants.append(f"{attack.goal} {kept}".strip())
            owners.append((a, w))
    restored: dict[int, list[float]] = {a: [] for a in range(len(attacks))}
    if variants:
        totals = activity(variants).sum(axis=1)
        attacked = activity([a.prompt for a in attacks]).sum(axis=1)
        for (a, _), total in zip(owners, totals, strict=True):
            restored[a].append(float(total - attacked[a]))
    out = []
    for a, attack in enumerate(attacks):
        gains = restored[a]
        best = int(np.argmax(gains)) if gains else None
        word = None
        if best is not None and gains[best] > 0:
            word = _word_key(_words(attack.attack)[best])
        out.append({"top_word": word, "restored": [round(g, 4) for g in gains]})
    return out


def _difference(observed: float, draws: np.ndarray) -> dict[str, Any]:
    """A difference with its 95% percentile interval and a two-sided bootstrap p-value for no
    difference (draws centred on their mean)."""
    draws = draws[np.isfinite(draws)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return {
        "mean": round(observed, 4),
        "ci95": [round(float(low), 4), round(float(high), 4)],
        "p_value": float((np.abs(draws - draws.mean()) >= abs(observed)).mean()),
    }


class GoalBootstrap:
    """Percentile bootstrap over plain requests: several attacks share a request (and its
    plain activity), so requests, not attacks, are resampled; a resample keeps every attack
    of each request it draws."""

    def __init__(self, goals: Sequence[str], *, n_boot: int = 10_000, seed: int = 0) -> None:
        names = list(dict.fromkeys(goals))
        self.cluster = np.array([names.index(g) for g in goals])
        self.draws = np.random.default_rng(seed).integers(0, len(names), size=(n_boot, len(names)))
        self.n_clusters = len(names)

    def _means(self, values: np.ndarray, mask: np.ndarray, index: np.ndarray) -> np.ndarray:
        ok = mask & np.isfinite(values)
        sums = np.bincount(self.cluster[ok], weights=values[ok], minlength=self.n_clusters)
        counts = np.bincount(self.cluster[ok], minlength=self.n_clusters).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums[index].sum(axis=-1) / counts[index].sum(axis=-1)

    def mean(self, values: np.ndarray, mask: np.ndarray) -> dict[str, Any] | None:
        """Mean of the finite `values` where `mask`, with its interval."""
        n = int((mask & np.isfinite(values)).sum())
        if n == 0:
            return None
        observed = float(self._means(values, mask, np.arange(self.n_clusters)[None])[0])
        draws = self._means(values, mask, self.draws)
        low, high = np.nanpercentile(draws, [2.5, 97.5])
        return {"mean": round(observed, 4), "ci95": [round(low, 4), round(high, 4)], "n": n}

    def difference(
        self, values: np.ndarray, first: np.ndarray, second: np.ndarray
    ) -> dict[str, Any] | None:
        """Mean where `first` minus mean where `second`, both from the same resampled requests,
        with a two-sided bootstrap p-value for no difference."""
        if not (first & np.isfinite(values)).any() or not (second & np.isfinite(values)).any():
            return None
        whole = np.arange(self.n_clusters)[None]
        observed = float(
            self._means(values, first, whole)[0] - self._means(values, second, whole)[0]
        )
        draws = self._means(values, first, self.draws) - self._means(values, second, self.draws)
        return _difference(observed, draws)

    def paired(self, a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> dict[str, Any] | None:
        """Mean over the attacks where `mask` (both values finite) of `a - b`, two readings of
        the same attacks, with its interval and a two-sided bootstrap p-value for no
        difference; requests are resampled, so the attacks of one request stay together."""
        both = mask & np.isfinite(a) & np.isfinite(b)
        if not both.any():
            return None
        diff = np.where(both, a - b, np.nan)
        observed = float(self._means(diff, both, np.arange(self.n_clusters)[None])[0])
        return {
            **_difference(observed, self._means(diff, both, self.draws)),
            "n": int(both.sum()),
            "n_requests": len(set(self.cluster[both].tolist())),
        }


def difference(
    a: np.ndarray, b: np.ndarray, *, seed: int, n_boot: int = 10_000
) -> dict[str, Any] | None:
    """Mean of a minus mean of b over paired items (both finite), its percentile-bootstrap
    interval and a two-sided bootstrap p-value for no difference."""
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any():
        return None
    estimate, p_value = paired_difference(a[both], b[both], n_boot=n_boot, seed=seed)
    return {
        "mean": round(estimate.mean, 4),
        "ci95": [round(estimate.low, 4), round(estimate.high, 4)],
        "p_value": p_value,
    }


# --------------------------------------------------------------------------- the command


def jailbreaks_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    latent_set: LatentSet,
    direction: Direction,
    settings: JailbreakSettings,
    out: str | Path,
    *,
    harm: LatentSet | None = None,
    data_dir: str | Path | None,
    device: str = "auto",
    cache_dir: str | None = None,
    executor: Executor | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.perf_counter()
    run = start_analysis(
        "jailbreaks", settings, lm, saes, out, latent_sets=[latent_set, harm], direction=direction
    )
    positions = settings.positions or formatter.n_post_instruction
    families: dict[str, list[tuple[int, int]]] = {
        "refusal latents": list(latent_set.top(settings.k))
    }
    if harm is not None:
        families["harm latents"] = list(harm.top(None))
    banned = latent_set.selection_hashes() | (harm.selection_hashes() if harm else set())
    by_goal = candidate_goals(settings, data_dir, banned)
    if not by_goal:
        raise UserError(f"no requests to attack in {settings.source} (all were used for selection)")
    with analysis_context(
        lm,
        formatter,
        run,
        judges=settings.judges,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        device=device,
        cache_dir=cache_dir,
        executor=executor,
        echo=echo,
    ) as ctx:
        goals = list(by_goal)
        (refused,) = refusals(ctx, [_set("plain requests", goals)])
        refused_goals = [g for g, r in zip(goals, refused, strict=True) if r]
        echo(f"{len(refused_goals)} of {len(goals)} plain requests refused; attacking those")
        attacks = sample_attacks(by_goal, refused_goals, settings.attacks_per_goal, settings.seed)
        if not attacks:
            raise UserError("the model refuses none of the plain requests: nothing to jailbreak")
        attack_set = _set(f"attacks ({settings.source})", [a.prompt for a in attacks])
        # the judges are told the plain request, so "on topic" means on the goal
        (success,) = jailbroken(ctx, [attack_set], requests=[[a.goal for a in attacks]])
    frequency = latent_statistics(
        lm,
        formatter,
        saes,
        goals,
        positions="post_instruction",  # where the activities are read
        batch_size=settings.batch_size,
        progress=False,
    ).frequency
    studied = [pair for pairs in families.values() for pair in pairs]
    for seed in settings.random_seeds:
        matched = matched_random(families["refusal latents"], frequency, seed, exclude=studied)
        families[f"random latents (seed {seed})"] = [
            (layer, latent) for layer, latent, _ in matched
        ]

    def activity(family: str) -> Callable[[Sequence[str]], np.ndarray]:
        return lambda texts: latent_activity(
            lm,
            formatter,
            saes,
            families[family],
            texts,
            positions=positions,
            batch_size=settings.batch_size,
            run=run,
        )

    records = [
        {"goal": a.goal, "attack": a.attack, "success": bool(s)}
        for a, s in zip(attacks, success, strict=True)
    ]
    boot = GoalBootstrap([a.goal for a in attacks], seed=settings.seed)
    every = np.ones(len(attacks), dtype=bool)
    summary_rows = []
    drops: dict[str, np.ndarray] = {}
    for family in families:
        read = activity(family)
        plain = read([a.goal for a in attacks])
        attacked = read([a.prompt for a in attacks])
        drop = suppression(plain, attacked)
        drops[family] = drop
        for record_, value in zip(records, drop, strict=True):
            value_or_none = None if np.isnan(value) else round(float(value), 4)
            record_.setdefault("suppression", {})[family] = value_or_none
        summary_rows.append(
            {
                "latents": family,
                "successful": boot.mean(drop, success),
                "failed": boot.mean(drop, ~success),
                "difference": boot.difference(drop, success, ~success),
            }
        )
    # the same attacks read through the studied latents and through the control: paired
    controls = [name for name in families if name.startswith("random latents")]
    paired_rows = [
        {
            "latents": family,
            "control": control,
            "all": boot.paired(drops[family], drops[control], every),
            "successful": boot.paired(drops[family], drops[control], success),
            "failed": boot.paired(drops[family], drops[control], ~success),
        }
        for family in families
        if family not in controls
        for control in controls
    ]
    words: dict[str, Any] = {}
    if settings.source == "suffixes" and settings.word_attribution and success.any():
        winners = [a for a, s in zip(attacks, success, strict=True) if s]
        attributed = word_attribution(activity("refusal latents"), winners)
        counts = Counter(row["top_word"] for row in attributed if row["top_word"])
        words = {"n_successful": len(winners), "top_words": counts.most_common(15)}
        by_attack = {(a.goal, a.attack): row for a, row in zip(winners, attributed, strict=True)}
        for record_ in records:
            row = by_attack.get((record_["goal"], record_["attack"]))
            if row:
                record_["top_word"] = row["top_word"]
    summary = {
        "model": lm.identity(),
        "settings": settings_dict(settings),
        "positions": positions,
        "latents": {name: [list(p) for p in pairs] for name, pairs in families.items()},
        "n_goals": len(goals),
        "n_refused_goals": len(refused_goals),
        "n_attacks": len(attacks),
        "success_rate": boot.mean(success.astype(float), every),
        "suppression": summary_rows,
        "versus_random": paired_rows,
        "words": words,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(run.file("jailbreaks.json"), summary)
    # per-attack explanations: research material, kept in the run folder
    with run.file("attacks.jsonl").open("w") as handle:
        for record_ in records:
            handle.write(json.dumps(record_, ensure_ascii=False) + "\n")
    (run.path / "jailbreaks.md").write_text(jailbreaks_markdown(summary))
    return summary


def _paired_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    return f"{interval_cell(entry)} (p={entry['p_value']:.3f}, n={entry['n']})"


def _n(entry: dict[str, Any] | None) -> int:
    return 0 if entry is None else int(entry["n"])


def jailbreaks_markdown(summary: dict[str, Any]) -> str:
    settings = summary["settings"]
    lines = [
        "# Jailbreaks at the latent level",
        "",
        f"Source {settings['source']}: {summary['n_refused_goals']} of {summary['n_goals']} plain "
        f"requests refused, {summary['n_attacks']} attacks on them, success rate "
        f"{interval_cell(summary['success_rate'])} (judges: {', '.join(settings['judges'])}). "
        "Latent "
        f"activity read on the last {summary['positions']} template tokens; suppression = 1 - "
        "attacked / plain.",
        "",
        "| latents | suppression, successful | suppression, failed | difference (p) |",
        "|---|---|---|---|",
    ]
    for row in summary["suppression"]:
        diff = row["difference"]
        lines.append(
            f"| {row['latents']} | "
            f"{interval_cell(row['successful'])} (n={_n(row['successful'])}) | "
            f"{interval_cell(row['failed'])} (n={_n(row['failed'])}) | "
            + ("-" if diff is None else f"{interval_cell(diff)} (p={diff['p_value']:.3f})")
            + " |"
        )
    paired = summary.get("versus_random") or []
    if paired:
        lines += [
            "",
            "Studied minus random latents on the same attacks: mean over attacks of "
            "suppression(studied) - suppression(random) [95% CI] (p), requests resampled.",
            "",
            "| latents | control | all attacks | successful | failed |",
            "|---|---|---|---|---|",
        ]
        for row in paired:
            cells = [_paired_cell(row[kind]) for kind in ("all", "successful", "failed")]
            lines.append(f"| {row['latents']} | {row['control']} | " + " | ".join(cells) + " |")
    words = summary.get("words") or {}
    if words:
        top = ", ".join(f"{w} {n}" for w, n in words["top_words"][:10])
        lines += [
            "",
            "Word that most restores refusal activity when dropped, over "
            f"{words['n_successful']} successful suffixes: {top}.",
        ]
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the registry's hooks

SETTINGS = JailbreakSettings
QUICK = QUICK_JAILBREAKS


def run(inputs: AnalysisInputs, settings: JailbreakSettings, out: Path) -> dict[str, Any]:
    """The job over the shared analysis inputs (see `analyses.registry`)."""
    return jailbreaks_job(
        inputs.lm,
        inputs.formatter,
        inputs.saes,
        inputs.latents,
        inputs.direction,
        settings,
        out,
        harm=inputs.harm,
        **inputs.runtime(),
    )


def output_name(settings: JailbreakSettings) -> str:
    """One folder per attack source: jailbreaks-suffixes, jailbreaks-gptfuzz, jailbreaks-FILE."""
    return f"jailbreaks-{Path(settings.source).stem}"


def analyze_overrides(quick: bool) -> list[list[str]]:
    """`analyze` runs the readable suffixes, and the GPTFuzz templates at full sizes."""
    return [
        [f"source={source}"] for source in (("suffixes",) if quick else ("suffixes", "gptfuzz"))
    ]
