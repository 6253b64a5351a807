"""Choosing a defence's strength on validation prompts only.

A stronger edit blocks more attacks and refuses more safe requests. The study fixes the
robustness it asks for and pays as little as it can for it: `choose_strength` takes, for each
strength tried, the share of validation attacks the unconditional defence blocks, and returns
the weakest strength that blocks at least `target` of them (or the one that blocks the most,
when none reaches it, saying so). Its gated versions then use the same strength, so that what
a gate changes is where the edit applies, not how hard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UserError


@dataclass(frozen=True)
class StrengthChoice:
    strength: float
    blocked: float  # share of validation attacks blocked at this strength
    reached: bool  # whether it reaches the target
    tried: dict[float, float]  # strength -> share blocked

    def to_dict(self) -> dict[str, Any]:
        return {
            "strength": self.strength,
            "blocked": self.blocked,
            "reached_target": self.reached,
            "tried": [{"strength": s, "blocked": b} for s, b in sorted(self.tried.items())],
        }


def choose_strength(blocked: Mapping[float, float], target: float) -> StrengthChoice:
    """The weakest strength (by absolute value) whose block rate reaches `target`, else the
    one that blocks the most (the weaker one on a tie)."""
    if not blocked:
        raise UserError("no defence strength was tried; give at least one")
    if not 0 < target <= 1:
        raise UserError(f"the target block rate is in (0, 1], got {target}")
    order = sorted(blocked, key=abs)
    for strength in order:
        if blocked[strength] >= target:
            return StrengthChoice(strength, blocked[strength], True, dict(blocked))
    best = max(order, key=lambda s: (blocked[s], -abs(s)))
    return StrengthChoice(best, blocked[best], False, dict(blocked))
