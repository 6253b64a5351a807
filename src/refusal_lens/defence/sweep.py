"""The false-trigger rate as an axis: a prompt-scope gated defence at every threshold, from
answers already judged.

A prompt-scope gate (`interventions.Gated(..., scope="prompt")`) decides once per prompt, and
then the model answers either with the edit on every token or with no edit at all. So on a
prompt the gate fires on, the gated defence's answer is the unconditional defence's answer, and
elsewhere it is the undefended model's. Given both arms' per-prompt outcomes and the gate's
per-prompt scores, the gated defence at any threshold is a composition: no generation.

`compose_sweep` does that for a list of false-trigger targets: each target's threshold is set
on the harmless validation scores (`gates.threshold_at`), and test attack success, test safe
prompts left unanswered and the share of the unconditional drop kept are read off the
composition, with bootstrap intervals. `at_equal_success` and `at_equal_false_trigger`
compare two gates on one axis with the other held equal. `agreement` checks the premise at
the threshold the study generated with: how often the composition's outcome equals the
generated gated arm's (greedy decoding in a different batch can differ in the last bits, so
it is measured, not assumed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..evaluation.statistics import bootstrap_mean
from .gates import threshold_at


@dataclass(frozen=True)
class Outcomes:
    """Per test prompt, aligned: the gate's score, and the outcome (a success, an unanswered
    safe prompt) without a defence and under the unconditional one."""

    scores: np.ndarray
    none: np.ndarray
    full: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.scores) == len(self.none) == len(self.full):
            raise UserError(
                f"a sweep needs aligned outcomes: {len(self.scores)} scores, "
                f"{len(self.none)} undefended and {len(self.full)} defended outcomes"
            )

    def at(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(fired, composed outcome) at `threshold`."""
        fired = self.scores.astype(np.float64) >= threshold
        return fired, np.where(fired, self.full, self.none).astype(bool)


@dataclass(frozen=True)
class Swept:
    """One prompt-scope gated defence, ready to compose: its harmless validation scores (for
    thresholds) and its test outcomes (attacks, XSTest safe prompts and, where the study has
    them, benign behaviours: a cost that lands elsewhere than on XSTest is shown too)."""

    harmless_val: torch.Tensor
    attacks: Outcomes
    safe: Outcomes
    benign: Outcomes | None = None

    def at_target(self, target: float) -> tuple[float, np.ndarray, np.ndarray]:
        """(threshold, composed attack successes, composed unanswered safe prompts)."""
        threshold = threshold_at(self.harmless_val, target)
        return threshold, self.attacks.at(threshold)[1], self.safe.at(threshold)[1]


def compose_sweep(targets: Sequence[float], swept: Swept, *, seed: int = 0) -> list[dict[str, Any]]:
    """One point per false-trigger target: its validation threshold, the composed test attack
    success and safe prompts unanswered (95% bootstrap intervals), the share of attacks and safe
    prompts the gate fires on, and the share of the unconditional drop in success kept."""
    out = []
    attacks = swept.attacks
    drop_full = attacks.none.mean() - attacks.full.mean()
    for target in targets:
        threshold = threshold_at(swept.harmless_val, target)
        fired_attacks, success = attacks.at(threshold)
        fired_safe, unanswered = swept.safe.at(threshold)
        kept = None
        if drop_full > 0:
            kept = float((attacks.none.mean() - success.mean()) / drop_full)
        point = {
            "false_trigger": float(target),
            "threshold": threshold,
            "attacks": bootstrap_mean(success.astype(float), seed=seed).entry(),
            "xstest_safe": bootstrap_mean(unanswered.astype(float), seed=seed).entry(),
            "fired_attacks": float(fired_attacks.mean()) if len(fired_attacks) else None,
            "fired_safe": float(fired_safe.mean()) if len(fired_safe) else None,
            "kept_share": kept,
        }
        if swept.benign is not None:
            fired_benign, benign = swept.benign.at(threshold)
            point["jbb_benign"] = bootstrap_mean(benign.astype(float), seed=seed).entry()
            point["fired_benign"] = float(fired_benign.mean()) if len(fired_benign) else None
        out.append(point)
    return out


def agreement(outcomes: Outcomes, threshold: float, generated: np.ndarray) -> dict[str, int]:
    """How many prompts' composed outcome at `threshold` equals the generated gated arm's."""
    if len(generated) != len(outcomes.scores):
        raise UserError(f"{len(generated)} generated outcomes for {len(outcomes.scores)} prompts")
    _, composed = outcomes.at(threshold)
    return {"same": int((composed == generated.astype(bool)).sum()), "n": len(generated)}


def at_equal_success(
    a: Swept, b: Swept, targets: Sequence[float], *, seed: int = 0
) -> list[dict[str, Any]]:
    """`a` against `b` on safe prompts at equal attack success: for every number of test
    attacks both reach at some false-trigger target, each takes the lowest target that reaches
    it (a rule that never looks at the safe prompts), and the safe prompts each leaves
    unanswered are compared pair by pair (paired bootstrap, `a - b`). Matching on attacks and
    comparing on the separate safe prompts keeps the compared axis out of the choice."""

    def first_reaching(swept: Swept) -> dict[int, tuple[float, float]]:
        found: dict[int, tuple[float, float]] = {}
        for target in sorted(targets):
            threshold, success, _ = swept.at_target(target)
            found.setdefault(int(success.sum()), (float(target), threshold))
        return found

    def compared(mine: Outcomes, theirs: Outcomes, ta: float, tb: float) -> dict[str, Any]:
        return _paired(mine.at(ta)[1], theirs.at(tb)[1], seed)

    mine, theirs = first_reaching(a), first_reaching(b)
    out = []
    for count in sorted(set(mine) & set(theirs)):
        (ta, tha), (tb, thb) = mine[count], theirs[count]
        safe = compared(a.safe, b.safe, tha, thb)
        row = {
            "successes": count,
            "attacks": len(a.attacks.scores),
            "targets": [ta, tb],
            "xstest_safe": safe.pop("means"),
            "difference": safe,
        }
        if a.benign is not None and b.benign is not None:
            row["jbb_benign"] = compared(a.benign, b.benign, tha, thb)
        out.append(row)
    return out


def at_equal_false_trigger(
    a: Swept, b: Swept, targets: Sequence[float], *, seed: int = 0
) -> list[dict[str, Any]]:
    """`a` against `b` on attacks at equal cost: at every false-trigger target each gate takes
    its own threshold on its own harmless validation scores (a rule that never looks at
    attacks), and the test attacks each lets through are compared pair by pair (paired
    bootstrap, `a - b`; p-values also Holm-adjusted over the targets, since a reader looks
    for the best one). The safe prompts' difference at the same thresholds sits beside it:
    equal false triggers on validation need not mean equal over-refusal on test."""
    from ..evaluation.statistics import holm

    def compared(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        return _paired(x, y, seed)

    out = []
    for target in targets:
        tha, success_a, unanswered_a = a.at_target(target)
        thb, success_b, unanswered_b = b.at_target(target)
        row = {
            "false_trigger": float(target),
            "thresholds": [tha, thb],
            "attacks": len(success_a),
            "difference": compared(success_a, success_b),
            "xstest_safe": compared(unanswered_a, unanswered_b),
        }
        if a.benign is not None and b.benign is not None:
            row["jbb_benign"] = compared(a.benign.at(tha)[1], b.benign.at(thb)[1])
        out.append(row)
    for row, adjusted in zip(out, holm([r["difference"]["p_value"] for r in out]), strict=True):
        row["difference"]["p_holm"] = adjusted
    return out


def _paired(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    """Two gates' outcomes on the same prompts: both means, and `x - y` paired (bootstrap)."""
    from ..evaluation.statistics import paired_difference

    diff, p = paired_difference(x.astype(float), y.astype(float), seed=seed)
    return {"means": [float(x.mean()), float(y.mean())], **diff.entry(), "p_value": p}
