"""Uncertainty: percentile bootstrap intervals and paired bootstrap differences."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def entry(self) -> dict[str, Any]:
        """As stored summaries and report tables read it: mean, 95% interval, n."""
        return {"mean": self.mean, "ci95": [self.low, self.high], "n": self.n}

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def interval_cell(entry: Mapping[str, Any] | None, digits: int = 2) -> str:
    """A stored estimate ({"mean": m, "ci95": [low, high]}) as a table cell, "m [low, high]";
    "-" when there is none, the mean alone when it has no interval."""
    if entry is None or entry.get("mean") is None:
        return "-"
    mean = entry["mean"]
    low, high = entry.get("ci95") or (None, None)
    if low is None or high is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean with a percentile-bootstrap confidence interval."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise UserError("cannot estimate a rate from zero samples: the dataset is empty")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(data.mean()), float(low), float(high), int(data.size), confidence)


def paired_difference(
    after: Sequence[float],
    before: Sequence[float],
    *,
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[Estimate, float]:
    """Mean of `after - before` over the same prompts, its interval and a two-sided bootstrap
    p-value for a zero difference."""
    a, b = np.asarray(after, dtype=np.float64), np.asarray(before, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    diff = a - b
    estimate = bootstrap_mean(diff, n_boot=n_boot, confidence=confidence, seed=seed)
    rng = np.random.default_rng(seed + 1)
    means = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    centered = means - diff.mean()
    p_value = float((np.abs(centered) >= abs(diff.mean())).mean())
    return estimate, p_value


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (each stays in [0, 1]; a test is
    significant at level a when its adjusted p-value is at most a)."""
    order = np.argsort(np.asarray(p_values, dtype=np.float64), kind="stable")
    m, running = len(order), 0.0
    adjusted = [0.0] * m
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Agreement of two binary raters beyond chance; 0 when chance agreement is total."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape or x.size == 0:
        raise ValueError("kappa needs two equally long, non-empty label lists")
    observed = float((x == y).mean())
    chance = float(x.mean() * y.mean() + (1 - x.mean()) * (1 - y.mean()))
    return 0.0 if chance >= 1.0 else (observed - chance) / (1.0 - chance)


def bootstrap_kappa(
    a: Sequence[bool],
    b: Sequence[bool],
    *,
    n_boot: int = 2_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Cohen's kappa with a percentile-bootstrap interval over resampled pairs."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.size == 0:
        raise UserError("cannot measure agreement on zero items: the labelled set is empty")
    rng = np.random.default_rng(seed)
    draws = [cohen_kappa(x[i], y[i]) for i in rng.integers(0, x.size, size=(n_boot, x.size))]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Estimate(cohen_kappa(x, y), float(low), float(high), int(x.size), confidence)


def bootstrap_statistic(
    n: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    n_boot: int = 2_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Any statistic of `n` items with a percentile-bootstrap interval. `statistic` maps an
    index matrix `[B, n]` (one resample per row) to `[B]` values; resamples where it is
    undefined (NaN, e.g. AUROC with one class) are left out."""
    if n == 0:
        raise UserError("cannot estimate a statistic from zero items: the set is empty")
    rng = np.random.default_rng(seed)
    draws = np.asarray(statistic(rng.integers(0, n, size=(n_boot, n))), dtype=float)
    draws = draws[np.isfinite(draws)]
    value = float(statistic(np.arange(n)[None])[0])
    if draws.size == 0:
        return Estimate(value, math.nan, math.nan, n, confidence)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Estimate(value, float(low), float(high), n, confidence)


def auroc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row of `[B, n]` labels and scores (Mann-Whitney U, ties averaged); NaN for
    a row with one class."""
    from scipy.stats import rankdata

    labels = np.atleast_2d(labels).astype(bool)
    ranks = rankdata(np.atleast_2d(scores), axis=1)
    n_pos = labels.sum(axis=1)
    n_neg = labels.shape[1] - n_pos
    u = (ranks * labels).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
