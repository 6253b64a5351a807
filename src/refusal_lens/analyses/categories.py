"""Category-specific and common latents (Yeo et al. 2025).

Protocol: the prompts of a categorised harmful set (StrongREJECT by default) are split per
category into selection (train) and test prompts. For each category, a global latent set is
selected with our method (LA-IG after the cosine prefilter) on that category's train prompts
only. Common latents are those in the sets of at least `common_fraction` of the categories
(the paper: "refusal" latents); a category's specific latents are the rest of its set, capped
to the common set's size (the paper: harm / category latents). On each category's test
prompts the model is then steered by:

- the common set, with the category's specific set pinned to its clean values (`retain`);
- the category's specific set, with the common set pinned (`retain`);
- the category's specific latents matched on attribution rank to the common ones (for each
  common latent, the non-common latent nearest to it in that category's own ranking), with
  the common set pinned: the specific set above is the top-ranked leftovers, so it ranks below
  the common set, and a weaker effect could be that lower rank rather than specificity;
- random latents matched to the common set by layer and frequency, with the category's
  specific set pinned as for the common set (the control);
- another category's specific set (transfer), with the common set pinned.

Refusal rates come with bootstrap intervals and are normalised by the category's base rate.
The common set and the union of the specific sets are written as latent sets, so the probes
(``--latents``) and the jailbreak analysis (``--harm-latents``) can read them.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..attribution import AttributionSettings
from ..config import settings_dict
from ..data import PromptSet, load_prompts
from ..direction import Direction
from ..errors import UserError
from ..evaluation.statistics import bootstrap_mean, interval_cell
from ..evaluation.work import make_arm
from ..executors import Executor
from ..interventions import EditLatents, vector_sha256
from ..jobs import LatentsChoice, latents_job
from ..latents import LatentSet, SelectionSettings, latent_statistics, matched_random
from ..models import ChatFormatter, LoadedModel
from ..runs import RunDir, stable_hash, write_json
from ..saes import SAESet
from .common import analysis_context, latent_set_scale, refusals, start_analysis
from .inputs import AnalysisInputs
from .jailbreaks import difference

Scored = list[tuple[int, int, float]]
RANK_MATCHED = "specific, rank-matched (common retained)"


@dataclass(frozen=True)
class CategorySettings:
    dataset: str = "strongreject"  # any prompt set with categories
    min_prompts: int = 40  # categories with fewer prompts are left out (n_test + 20 train)
    n_train: int = 32  # selection prompts per category (those the model refuses are used)
    n_test: int = 20  # test prompts per category
    k: int = 20  # size of each category's global set
    # cosine prefilter per layer (None: enough that the candidate pool is 10 x k, so sets
    # selected from a few SAE layers do not overlap merely because the pool is small)
    per_layer: int | None = None
    refused_only: bool = True  # select on the train prompts the model refuses (as the paper)
    common_fraction: float = 1.0  # common: in the sets of at least this share of categories
    scale: float | None = None  # None: the scale of the refusal latents' latent set
    judge: str = "substring"
    max_new_tokens: int = 64
    transfer: bool = True  # every category's specific set on every other category's prompts
    random_seeds: tuple[int, ...] = (0,)
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("min_prompts", "n_train", "n_test", "k", "max_new_tokens", "batch_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.common_fraction <= 1:
            raise UserError(f"common_fraction must be in (0, 1], got {self.common_fraction}")
        if self.min_prompts <= self.n_test:
            raise UserError(
                f"min_prompts ({self.min_prompts}) must exceed n_test ({self.n_test}): a "
                "category needs train prompts left after its test prompts"
            )
        if self.per_layer is not None and self.per_layer <= 0:
            raise UserError(f"per_layer must be positive, got {self.per_layer}")


QUICK_CATEGORIES: dict[str, Any] = {
    "n_train": 12,
    "n_test": 8,
    "k": 10,
    "transfer": False,
    "max_new_tokens": 48,
}


def slug(text: str) -> str:
    return "".join(c.lower() if c.isalnum() else "-" for c in text).strip("-")[:40]


def category_splits(
    settings: CategorySettings, data_dir: str | Path | None
) -> dict[str, tuple[PromptSet, PromptSet]]:
    """Category -> (train, test) prompts, shuffled with the seed; small categories dropped."""
    prompts = load_prompts(settings.dataset, data_dir=data_dir)
    by_category: dict[str, list] = {}
    for prompt in prompts:
        if prompt.category:
            by_category.setdefault(prompt.category, []).append(prompt)
    kept = {c: p for c, p in sorted(by_category.items()) if len(p) >= settings.min_prompts}
    if len(kept) < 2:
        raise UserError(
            f"{settings.dataset} has {len(kept)} categories with at least {settings.min_prompts} "
            "prompts; the analysis needs two or more (use a categorised set, e.g. strongreject, "
            "or lower min_prompts)"
        )
    splits = {}
    for category, items in kept.items():
        order = list(items)
        random.Random(f"{settings.seed}:{category}").shuffle(order)
        test = PromptSet(f"{slug(category)}-test", tuple(order[: settings.n_test]))
        train = PromptSet(f"{slug(category)}-train", tuple(order[settings.n_test :]))
        splits[category] = (train, test)
    return splits


def _write_prompts(path: Path, prompts: PromptSet) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with tmp.open("w") as handle:
        for prompt in prompts:
            handle.write(json.dumps({"prompt": prompt.text}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def per_layer(settings: CategorySettings, n_layers: int) -> int:
    if settings.per_layer is not None:
        return settings.per_layer
    return max(10, math.ceil(10 * settings.k / n_layers))


def select_per_category(
    lm: LoadedModel,
    formatter: ChatFormatter,
    refusal_token: str | None,
    saes: SAESet,
    saes_path: str,
    direction_path: str,
    splits: dict[str, tuple[PromptSet, PromptSet]],
    settings: CategorySettings,
    run: RunDir,
    data_dir: str | Path | None,
    echo: Callable[[str], None],
    executor: Executor | None = None,
) -> tuple[dict[str, LatentSet], dict[str, str]]:
    """Each category's global set (ours), selected on its train prompts with the refusal token
    of the refusal latents' selection (None: chosen again), and why a category has none (the
    model refuses none of its train prompts). A finished set is reused only if it was selected
    from the same prompts, SAE set, direction and settings; otherwise it is selected again."""
    sets, skipped = {}, {}
    selection = SelectionSettings(
        method="ours",
        k=settings.k,
        per_layer=per_layer(settings, len(saes)),
        seed=settings.seed,
        batch_size=settings.batch_size,
        attribution=AttributionSettings(
            batch_size=AttributionSettings.batch_for(settings.batch_size)
        ),
    )
    direction = Direction.load(direction_path)
    direction_key = {
        "vector": vector_sha256(direction.vector),
        "layer": direction.layer,
        "position": direction.position,
    }
    for category, (train, _) in splits.items():
        folder = run.path / "selection" / slug(category)
        choice = LatentsChoice(
            saes=saes_path,
            direction=direction_path,
            harmful=str(folder / "train.jsonl"),
            n_prompts=settings.n_train,
            all_prompts=not settings.refused_only,
            refusal_token=refusal_token,
        )
        key = stable_hash(
            {
                "prompts": train.texts(),
                "saes": saes.fingerprint(),
                "direction": direction_key,
                "model": lm.weights_sha256,
                "dtype": str(lm.dtype),
                "template": formatter.render("{}"),
                "choice": {**asdict(choice), "harmful": None},
                "settings": {**asdict(selection), "batch_size": None, "attribution": None},
            }
        )
        marker = folder / "selection_key.json"
        fresh = marker.is_file() and json.loads(marker.read_text()).get("key") == key
        if not (fresh and (folder / "latents.json").is_file()):
            if folder.exists():
                shutil.rmtree(folder)  # selected from other prompts or settings
            echo(f"latents of category {category} ({len(train)} train prompts)")
            _write_prompts(folder / "train.jsonl", train)
            try:
                latents_job(
                    lm,
                    formatter,
                    folder,
                    choice=choice,
                    settings=selection,
                    data_dir=data_dir,
                    seed=settings.seed,
                    executor=executor,
                )
            except UserError as error:  # e.g. the model refuses none of its train prompts
                skipped[category] = str(error)
                echo(f"category {category} skipped: {error}")
                continue
            write_json(marker, {"key": key})
        sets[category] = LatentSet.load(folder)
        sets[category].check_saes(saes)
    return sets, skipped


def common_and_specific(
    sets: dict[str, LatentSet], k: int, fraction: float
) -> tuple[Scored, dict[str, Scored]]:
    """(common latents by mean score, each category's specific latents capped to the common
    set's size)."""
    tops = {c: fs.latents[:k] for c, fs in sets.items()}
    counts = Counter((layer, latent) for top in tops.values() for layer, latent, _ in top)
    needed = math.ceil(fraction * len(sets) - 1e-9)
    scores: dict[tuple[int, int], list[float]] = {}
    for top in tops.values():
        for layer, latent, score in top:
            scores.setdefault((layer, latent), []).append(score)
    common = sorted(
        (
            (layer, latent, float(np.mean(scores[(layer, latent)])))
            for (layer, latent), n in counts.items()
            if n >= needed
        ),
        key=lambda row: -row[2],
    )
    shared = {(layer, latent) for layer, latent, _ in common}
    specific = {
        c: [row for row in top if (row[0], row[1]) not in shared][: len(common)]
        for c, top in tops.items()
    }
    return common, specific


def rank_matched(ranking: Scored, common: Scored | tuple) -> tuple[Scored, list[dict[str, Any]]]:
    """For each common latent (best first), the latent of one category's `ranking` nearest to
    it in rank (the better-ranked one on a tie) that is not common and not taken yet, and the
    pairs with their ranks (1 = best) and scores in that ranking. A common latent missing from
    the ranking is skipped."""
    shared = set(_pairs(common))
    rank = {(row[0], row[1]): i for i, row in enumerate(ranking)}
    free = [i for i, row in enumerate(ranking) if (row[0], row[1]) not in shared]
    chosen: Scored = []
    pairs: list[dict[str, Any]] = []
    for pair in _pairs(common):
        if pair not in rank or not free:
            continue
        at = rank[pair]
        best = min(free, key=lambda i: (abs(i - at), i))
        free.remove(best)
        chosen.append(ranking[best])
        pairs.append(
            {
                "common": list(pair),
                "common_rank": at + 1,
                "common_score": round(float(ranking[at][2]), 6),
                "specific": [ranking[best][0], ranking[best][1]],
                "specific_rank": best + 1,
                "specific_score": round(float(ranking[best][2]), 6),
            }
        )
    return chosen, pairs


def _rank_summary(ranking: Scored, latents: Scored | tuple) -> dict[str, Any]:
    """Mean rank (1 = best) and score of `latents` in one category's ranking."""
    rank = {(row[0], row[1]): i for i, row in enumerate(ranking)}
    found = [rank[p] for p in _pairs(latents) if p in rank]
    if not found:
        return {"n": 0, "rank_mean": None, "score_mean": None}
    return {
        "n": len(found),
        "rank_mean": round(float(np.mean(found)) + 1, 2),
        "score_mean": round(float(np.mean([ranking[i][2] for i in found])), 6),
    }


def _latent_set(
    template: LatentSet,
    method: str,
    latents: Scored,
    sets: dict[str, LatentSet],
    value: float,
    info: dict[str, Any] | None = None,
) -> LatentSet:
    hashes = sorted({h for fs in sets.values() for h in fs.selection_hashes()})
    return LatentSet(
        template.model,
        template.saes,
        method,
        "heldout",
        {"harmful": {"name": "category train prompts", "n": len(hashes), "prompt_hashes": hashes}},
        list(latents),
        {"mode": "scale", "value": value, "k": len(latents)},
        info={"categories": sorted(sets), **(info or {})},
    )


def _pairs(rows: Any) -> tuple[tuple[int, int], ...]:
    """(layer, latent) pairs of scored rows (or of pairs)."""
    return tuple((int(row[0]), int(row[1])) for row in rows)


def _rate(values: np.ndarray, seed: int) -> dict[str, Any]:
    estimate = bootstrap_mean(values.astype(float), seed=seed)
    return {
        "mean": round(estimate.mean, 4),
        "ci95": [round(estimate.low, 4), round(estimate.high, 4)],
        "n": estimate.n,
    }


def _normalised(refused: np.ndarray, base: np.ndarray, seed: int) -> dict[str, Any]:
    rate = _rate(refused, seed)
    base_rate = float(base.mean())
    return {
        "refusal": rate,
        "normalised": None if base_rate == 0 else round(rate["mean"] / base_rate, 4),
    }


def categories_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    saes_path: str,
    refusal: LatentSet,
    direction: Direction,
    direction_path: str,
    settings: CategorySettings,
    out: str | Path,
    *,
    data_dir: str | Path | None,
    device: str = "auto",
    cache_dir: str | None = None,
    executor: Executor | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.perf_counter()
    run = start_analysis(
        "categories", settings, lm, saes, out, latent_sets=[refusal], direction=direction
    )
    for derived in ("common", "harm"):  # never leave another run's sets for later analyses
        shutil.rmtree(run.path / derived, ignore_errors=True)
    splits = category_splits(settings, data_dir)
    token = (refusal.info.get("refusal_token") or {}).get("string")
    sets, skipped = select_per_category(
        lm,
        formatter,
        token,
        saes,
        saes_path,
        direction_path,
        splits,
        settings,
        run,
        data_dir,
        echo,
        executor,
    )
    if len(sets) < 2:
        raise UserError(
            f"latent sets for {len(sets)} categories only (skipped: {'; '.join(skipped)}); the "
            "analysis needs two or more"
        )
    splits = {c: split for c, split in splits.items() if c in sets}
    common, specific = common_and_specific(sets, settings.k, settings.common_fraction)
    if not common:
        raise UserError(
            f"no latent is in the sets of at least {settings.common_fraction:.0%} of the "
            f"{len(sets)} categories; lower common_fraction (the selections are kept and reused)"
        )
    value = settings.scale if settings.scale is not None else latent_set_scale(refusal)
    # the cosine prefilter the sets were selected from (a later control draws from it)
    prefilter = {"candidates_per_layer": per_layer(settings, len(saes))}
    _latent_set(refusal, "common", common, sets, value, prefilter).save(run.path / "common")
    best: dict[tuple[int, int], float] = {}  # a latent specific to two categories: its best score
    for rows_ in specific.values():
        for layer, latent, score in rows_:
            best[(layer, latent)] = max(score, best.get((layer, latent), -math.inf))
    harm = sorted(((a, b, s) for (a, b), s in best.items()), key=lambda r: -r[2])
    harm_set = _latent_set(refusal, "specific", harm[: settings.k], sets, value, prefilter)
    harm_set.save(run.path / "harm")
    matched_specific: dict[str, Scored] = {}
    rank_matching: dict[str, Any] = {}
    for c, fs in sets.items():
        matched_specific[c], pairs = rank_matched(fs.latents, common)
        rank_matching[c] = {
            "common": _rank_summary(fs.latents, common),
            "specific": _rank_summary(fs.latents, specific[c]),
            "rank_matched": _rank_summary(fs.latents, matched_specific[c]),
            "pairs": pairs,
        }
    tests = {c: test for c, (_, test) in splits.items()}
    train_texts = [p.text for train, _ in splits.values() for p in train]
    frequency = latent_statistics(
        lm, formatter, saes, train_texts, batch_size=settings.batch_size, progress=False
    ).frequency
    every_set = [(a, b) for fs in sets.values() for a, b, _ in fs.latents[: settings.k]]
    every_set += [pair for rows_ in matched_specific.values() for pair in _pairs(rows_)]
    rows: list[dict[str, Any]] = []
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

        def refused_under(label: str, edits: list[Any], names: list[str]) -> dict[str, np.ndarray]:
            arm = make_arm(ctx, label, label, "heldout", edits, (), saes if edits else None)
            echo(f"steering: {label}")
            got = refusals(ctx, [tests[c] for c in names], arm)
            return dict(zip(names, got, strict=True))

        def edit(latents: Scored | tuple, retain: Scored | tuple = ()) -> EditLatents:
            return EditLatents(saes, _pairs(latents), "scale", value, retain=_pairs(retain))

        names = list(tests)
        base = refused_under("base", [], names)
        conditions: dict[str, dict[str, np.ndarray]] = {"base": base}

        def common_on(c: str) -> np.ndarray:
            label = f"common, {c}'s specific retained"
            return refused_under(label, [edit(common, specific[c])], [c])[c]

        conditions["common (specific retained)"] = {c: common_on(c) for c in names}
        specific_runs = {  # a's specific set on a's prompts, and on every other's with transfer
            a: refused_under(
                f"specific of {a}, common retained",
                [edit(specific[a], common)],
                names if settings.transfer else [a],
            )
            for a in names
            if specific[a]
        }
        conditions["specific (common retained)"] = {c: runs[c] for c, runs in specific_runs.items()}
        conditions[RANK_MATCHED] = {  # the same, with specific latents ranked as the common
            c: refused_under(
                f"specific of {c} matched on rank to common, common retained",
                [edit(matched_specific[c], common)],
                [c],
            )[c]
            for c in names
            if matched_specific[c]
        }
        for seed in settings.random_seeds:  # under the common set's condition: specific pinned
            matched = _pairs(matched_random(_pairs(common), frequency, seed, exclude=every_set))
            conditions[f"random (seed {seed})"] = {
                c: refused_under(
                    f"random matched to common (seed {seed}), {c}'s specific retained",
                    [edit(matched, specific[c])],
                    [c],
                )[c]
                for c in names
            }
    for condition, by_category in conditions.items():
        for c, refused in by_category.items():
            rows.append(
                {
                    "category": c,
                    "condition": condition,
                    **_normalised(refused, base[c], settings.seed),
                }
            )
    transfer = [
        {"latents_of": a, "prompts_of": b, **_normalised(runs[b], base[b], settings.seed)}
        for a, runs in specific_runs.items()
        for b in runs
        if settings.transfer
    ]
    summary = {
        "model": lm.identity(),
        "settings": settings_dict(settings),
        "scale": value,
        "categories": {c: {"train": len(tr), "test": len(te)} for c, (tr, te) in splits.items()},
        "skipped": skipped,
        "candidates": per_layer(settings, len(saes)) * len(saes),
        "common": [list(row) for row in common],
        "specific": {c: [list(row) for row in rows_] for c, rows_ in specific.items()},
        "specific_rank_matched": {
            c: [list(row) for row in rows_] for c, rows_ in matched_specific.items()
        },
        "rank_matching": rank_matching,
        "common_vs_specific": compare_common(conditions, settings.seed),
        "rows": rows,
        "transfer": transfer,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(run.file("categories.json"), summary)
    (run.path / "categories.md").write_text(categories_markdown(summary))
    return summary


SPECIFIC_KINDS = {
    "specific (common retained)": "top-ranked leftovers (rank below the common latents)",
    RANK_MATCHED: "matched on attribution rank to the common latents",
}


def compare_common(conditions: dict[str, dict[str, np.ndarray]], seed: int) -> list[dict[str, Any]]:
    """Refusal under the common clamp minus refusal under a specific clamp, paired over the
    same test prompts (pooled over the categories both were run on), with its bootstrap
    interval and p-value: once for the specific latents as selected, once rank-matched."""
    common = conditions.get("common (specific retained)", {})
    out = []
    for kind, how in SPECIFIC_KINDS.items():
        names = [c for c in common if c in conditions.get(kind, {})]
        if not names:
            continue
        a = np.concatenate([common[c] for c in names]).astype(float)
        b = np.concatenate([conditions[kind][c] for c in names]).astype(float)
        out.append(
            {
                "specific": kind,
                "matched": how,
                "categories": names,
                "n": int(a.size),
                "common_refusal": _rate(a, seed),
                "specific_refusal": _rate(b, seed),
                "common_minus_specific": difference(a, b, seed=seed),
            }
        )
    return out


def rank_cell(entry: dict[str, Any]) -> str:
    if not entry.get("n"):
        return "-"
    return f"{entry['rank_mean']:.1f} [{entry['score_mean']:.3g}]"


def categories_markdown(summary: dict[str, Any]) -> str:
    layers = sorted({row[0] for row in summary["common"]})
    lines = [
        "# Category-specific and common latents",
        "",
        f"{len(summary['common'])} common latents (layers {layers}; candidate pool "
        f"{summary['candidates']}) in the sets of at least "
        f"{summary['settings']['common_fraction']:.0%} of {len(summary['categories'])} "
        f"categories of {summary['settings']['dataset']}; each clamped with scale "
        f"{summary['scale']:g}. Refusal rate on each category's test prompts [95% CI], and "
        "normalised by the category's base rate.",
        "",
        "| category | condition | refusal | normalised |",
        "|---|---|---|---|",
    ]
    for row in summary["rows"]:
        norm = "-" if row["normalised"] is None else f"{row['normalised']:.2f}"
        lines.append(
            f"| {row['category']} | {row['condition']} | {interval_cell(row['refusal'])} | {norm} |"
        )
    comparison = summary.get("common_vs_specific") or []
    if comparison:
        lines += [
            "",
            "Common vs specific, paired over the same test prompts (refusal under the common "
            "clamp minus refusal under the specific clamp; below zero: the common latents remove "
            "more refusal). The specific latents as selected rank below the common ones in their "
            "category's attribution ranking; the rank-matched ones rank beside them.",
            "",
            "| specific latents | n | common | specific | common minus specific (p) |",
            "|---|---|---|---|---|",
        ]
        for row in comparison:
            diff = row["common_minus_specific"]
            tail = "-" if diff is None else f"{interval_cell(diff)} (p={diff['p_value']:.3f})"
            lines.append(
                f"| {row['matched']} | {row['n']} | {interval_cell(row['common_refusal'])} | "
                f"{interval_cell(row['specific_refusal'])} | {tail} |"
            )
    ranks = summary.get("rank_matching") or {}
    if ranks:
        lines += [
            "",
            "Mean rank (1 = best) [mean attribution score] in each category's own ranking:",
            "",
            "| category | common | specific | specific, rank-matched |",
            "|---|---|---|---|",
        ]
        for c, r in ranks.items():
            lines.append(
                f"| {c} | {rank_cell(r['common'])} | {rank_cell(r['specific'])} | "
                f"{rank_cell(r['rank_matched'])} |"
            )
    if summary["transfer"]:
        lines += ["", "Transfer: one category's specific latents on another's prompts.", ""]
        lines += ["| latents of | prompts of | refusal | normalised |", "|---|---|---|---|"]
        for row in summary["transfer"]:
            norm = "-" if row["normalised"] is None else f"{row['normalised']:.2f}"
            lines.append(
                f"| {row['latents_of']} | {row['prompts_of']} | "
                f"{interval_cell(row['refusal'])} | {norm} |"
            )
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the registry's hooks

SETTINGS = CategorySettings
QUICK = QUICK_CATEGORIES


def run(inputs: AnalysisInputs, settings: CategorySettings, out: Path) -> dict[str, Any]:
    """The job over the shared analysis inputs (see `analyses.registry`)."""
    return categories_job(
        inputs.lm,
        inputs.formatter,
        inputs.saes,
        inputs.saes_path,
        inputs.ours,
        inputs.direction,
        inputs.direction_path,
        settings,
        out,
        **inputs.runtime(),
    )
