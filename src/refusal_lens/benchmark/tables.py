"""The benchmark's tables: rates with intervals, paired tests against base, pooled columns and
sample answers with every judge's verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..evaluation.statistics import bootstrap_mean, paired_difference
from .config import judge_name


def rate_entry(values: Sequence[float]) -> dict[str, Any]:
    """Mean and interval over the finite values (an empty completion's cross-entropy is
    infinite: it is counted in `not_finite`, not averaged)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": None, "ci95": [None, None], "n": 0, "not_finite": len(values)}
    estimate = bootstrap_mean(finite)
    out = {"mean": estimate.mean, "ci95": [estimate.low, estimate.high], "n": estimate.n}
    if len(finite) < len(values):
        out["not_finite"] = len(values) - len(finite)
    return out


def _paired(values: Sequence[float | None], base: Sequence[float | None]) -> dict[str, Any]:
    """Paired bootstrap against base over the items both have a finite value for."""
    pairs = [
        (float(v), float(b))
        for v, b in zip(values, base, strict=True)
        if v is not None and b is not None and math.isfinite(v) and math.isfinite(b)
    ]
    if not pairs:
        return {}
    diff, p_value = paired_difference([v for v, _ in pairs], [b for _, b in pairs])
    return {"difference": diff.mean, "difference_ci95": [diff.low, diff.high], "p_value": p_value}


def verdict_word(row: dict[str, Any], i: int) -> str:
    """What one judge said of one answer, in words."""
    if row["degenerate"][i]:
        return f"degenerate ({row['degenerate'][i]})"
    jailbroken, refused = row["jailbroken"][i], row["refused"][i]
    if (
        refused is not None
        and jailbroken == (not refused)
        and row["judge"]
        in (
            "substring",
            "first-token",
        )
    ):
        return "refused" if refused else "not refused"
    if jailbroken is None:
        return "unjudged"
    return "complied" if jailbroken else ("refused" if refused else "did not comply")


def harmful_samples(
    rows: list[dict[str, Any]], per_cell: int = 3, seed: int = 0
) -> list[dict[str, Any]]:
    """A few answers of every (condition, protocol, dataset) with every judge's verdict, so
    a reader sees what each rate counts: answers the judges disagree on first, then a seeded
    random draw."""
    import random

    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["condition"], row["protocol"], row["dataset"]), []).append(row)
    out = []
    for (condition, protocol, dataset), judged in cells.items():
        n = len(judged[0]["completions"])
        words = [{judge_name(r): verdict_word(r, i) for r in judged} for i in range(n)]
        verdicts = [
            {judge_name(r): r["jailbroken"][i] for r in judged if r["jailbroken"][i] is not None}
            for i in range(n)
        ]
        disputed = [i for i in range(n) if len(set(verdicts[i].values())) > 1]
        rest = [i for i in range(n) if i not in disputed]
        rng = random.Random(f"{seed}:{condition}:{protocol}:{dataset}")
        rng.shuffle(disputed)
        rng.shuffle(rest)
        chosen = sorted((disputed + rest)[:per_cell])
        out.append(
            {
                "condition": condition,
                "protocol": protocol,
                "dataset": dataset,
                "disputed": len(disputed),
                "n": n,
                "items": [
                    {
                        "index": i,
                        "prompt": judged[0]["prompts"][i],
                        "completion": judged[0]["completions"][i],
                        "verdicts": words[i],
                    }
                    for i in chosen
                ],
            }
        )
    return out


POOLED = "all"  # the column of every benchmark's prompts together


def pooled_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each (condition, protocol, judge) evaluated on two or more benchmarks, one more row
    over all their prompts together: with a few prompts per set, the pooled interval is the
    one that can separate two conditions."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["condition"], row["protocol"], row["judge_spec"]), []).append(row)
    out = []
    for parts in groups.values():
        if len({r["dataset"] for r in parts}) < 2:
            continue
        pooled = {**parts[0], "dataset": POOLED}
        for name in ("refused", "jailbroken", "degenerate", "categories"):
            pooled[name] = [value for r in parts for value in r[name]]
        out.append(pooled)
    return out


def harmful_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (arm, dataset, judge spec): rates over the items the judge answered
    (`unjudged` counts the rest), paired tests against base, per-category rates."""
    base = {(r["dataset"], r["judge_spec"]): r for r in rows if r["condition"] == "base"}
    table = []
    for row in rows:
        keys = ("condition", "method", "protocol", "dataset", "judge", "judge_spec")
        entry: dict[str, Any] = {k: row[k] for k in keys}
        if row.get("setting"):
            entry["setting"] = row["setting"]
        reference = base.get((row["dataset"], row["judge_spec"]))
        for key, field_name in (("refusal_rate", "refused"), ("jailbreak_rate", "jailbroken")):
            values = row[field_name]
            if all(v is None for v in values):
                continue  # the judge does not answer this question
            entry[key] = rate_entry([float(v) for v in values if v is not None])
            entry[key]["unjudged"] = sum(v is None for v in values)
            if reference is not None and row is not reference:
                ref = reference[field_name]
                if len(ref) == len(values):
                    entry[key] |= _paired(
                        [None if v is None else float(v) for v in values],
                        [None if r is None else float(r) for r in ref],
                    )
        # empty, looping or echoed answers: never jailbreaks, counted in their own column
        entry["degenerate"] = sum(bool(d) for d in row.get("degenerate", ()))
        if "jailbreak_rate" in entry and any(row["categories"]):
            entry["by_category"] = _by_category(row["categories"], row["jailbroken"])
        table.append(entry)
    return table


def _by_category(categories: Sequence[str | None], values: Sequence[bool | None]) -> dict:
    groups: dict[str, list[float]] = {}
    for category, value in zip(categories, values, strict=True):
        if category and value is not None:
            groups.setdefault(category, []).append(float(value))
    return {name: rate_entry(series) for name, series in sorted(groups.items())}


def side_effect_table(values: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    base = values.get("base", {})
    table = []
    for label, measures in values.items():
        entry: dict[str, Any] = {"condition": label}
        for name, series in measures.items():
            entry[name] = rate_entry(series)
            if label != "base" and name in base and len(base[name]) == len(series):
                entry[name] |= _paired(series, base[name])
        table.append(entry)
    return table
