"""Flags the analyses' tables share with the report (no heavy imports: the report reads them
without loading a model stack)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CLASS_NAMES = {"harmful": ("harmless", "harmful"), "refusal": ("complies", "refuses")}


def constant_note(row: dict[str, Any]) -> str:
    """What a reader must see when a probe's test predictions are one class: its accuracy is
    the rate of that class (the majority-class rate when it predicts the majority)."""
    if not row.get("constant_predictions"):
        return ""
    negative, positive = CLASS_NAMES.get(row["target"], ("class 0", "class 1"))
    said = positive if row.get("predicted_positive", 0.0) >= 0.5 else negative
    return f"CONSTANT: predicts '{said}' for all {row['n']}"


def constant_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """`features (test, subset)` of every row whose test predictions are one class."""
    return [
        f"{r['features']} ({r['test']}, {r['subset']}, target {r['target']})"
        for r in rows
        if r.get("constant_predictions")
    ]
