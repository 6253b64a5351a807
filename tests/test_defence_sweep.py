"""The false-trigger sweep: a prompt-scope gated defence composed from the undefended and the
unconditional arms' outcomes at each threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refusal_lens.defence.sweep import Outcomes, Swept, agreement, compose_sweep
from refusal_lens.errors import UserError


def test_the_composition_takes_the_defended_outcome_where_the_gate_fires() -> None:
    attacks = Outcomes(
        scores=np.array([0.9, 0.1, 0.8, 0.2]),
        none=np.array([True, True, True, False]),
        full=np.array([False, False, False, False]),
    )
    safe = Outcomes(
        scores=np.array([0.05, 0.7]),
        none=np.array([False, False]),
        full=np.array([True, True]),
    )
    harmless_val = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.85])
    points = compose_sweep([0.0, 0.2, 0.5], Swept(harmless_val, attacks, safe))
    # 0%: the threshold sits just above the highest harmless score (0.85): only 0.9 fires
    assert points[0]["fired_attacks"] == 0.25 and points[0]["attacks"]["mean"] == 0.5
    assert points[0]["xstest_safe"]["mean"] == 0.0 and points[0]["kept_share"] == pytest.approx(
        1 / 3
    )
    # 20%: two harmless may fire, the threshold is just above 0.7: 0.9 and 0.8 fire
    assert points[1]["attacks"]["mean"] == 0.25 and points[1]["kept_share"] == pytest.approx(2 / 3)
    # 50%: just above 0.4: the 0.7 safe prompt fires and is left unanswered
    assert points[2]["xstest_safe"]["mean"] == 0.5
    assert [p["threshold"] for p in points] == sorted(
        (p["threshold"] for p in points), reverse=True
    )
    generated = np.array([False, True, False, False])
    assert agreement(attacks, points[1]["threshold"], generated) == {"same": 4, "n": 4}
    assert agreement(attacks, points[0]["threshold"], generated) == {"same": 3, "n": 4}


def test_misaligned_outcomes_are_refused() -> None:
    with pytest.raises(UserError, match="aligned outcomes"):
        Outcomes(np.zeros(3), np.zeros(2, dtype=bool), np.zeros(3, dtype=bool))
    ok = Outcomes(np.zeros(2), np.zeros(2, dtype=bool), np.zeros(2, dtype=bool))
    with pytest.raises(UserError, match="3 generated outcomes for 2 prompts"):
        agreement(ok, 0.5, np.zeros(3, dtype=bool))


def test_gates_are_compared_on_safe_prompts_at_equal_attack_success() -> None:
    """Two gates over the same arms: at each attack success both reach, each takes its lowest
    false-trigger target reaching it, and their unanswered safe prompts are paired."""
    from refusal_lens.defence.sweep import at_equal_success

    none_a = np.array([True, True, True, True])
    full_a = np.zeros(4, dtype=bool)
    none_s, full_s = np.zeros(4, dtype=bool), np.ones(4, dtype=bool)
    harmless_val = torch.linspace(0.0, 0.9, 10)
    # gate a separates: attacks score high, safe prompts low
    a = Swept(
        harmless_val,
        Outcomes(np.array([0.95, 0.95, 0.6, 0.6]), none_a, full_a),
        Outcomes(np.array([0.0, 0.1, 0.2, 0.3]), none_s, full_s),
    )
    # gate b fires on safe prompts as soon as it fires on attacks
    b = Swept(
        harmless_val,
        Outcomes(np.array([0.95, 0.95, 0.6, 0.6]), none_a, full_a),
        Outcomes(np.array([0.96, 0.96, 0.65, 0.65]), none_s, full_s),
    )
    rows = at_equal_success(a, b, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    by_count = {row["successes"]: row for row in rows}
    # even at 0% false triggers both fire on the two strongest attacks; then on all four
    assert set(by_count) == {2, 0}
    assert by_count[2]["xstest_safe"] == [0.0, 0.5]
    assert by_count[0]["xstest_safe"] == [0.0, 1.0]
    assert by_count[0]["difference"]["mean"] == -1.0
    assert by_count[0]["targets"][0] == by_count[0]["targets"][1]  # matched on attacks alone


def test_benign_behaviours_are_composed_and_compared_beside_the_safe_prompts() -> None:
    """A gate whose cost lands on benign behaviours rather than on XSTest shows it: the sweep
    composes them too, and the matched comparison pairs them."""
    from refusal_lens.defence.sweep import at_equal_success

    harmless_val = torch.linspace(0.0, 0.9, 10)
    attacks = Outcomes(np.array([0.95, 0.6]), np.array([True, True]), np.zeros(2, dtype=bool))
    safe = Outcomes(np.array([0.0, 0.1]), np.zeros(2, dtype=bool), np.ones(2, dtype=bool))
    benign_high = Outcomes(np.array([0.97, 0.7]), np.zeros(2, dtype=bool), np.ones(2, dtype=bool))
    benign_low = Outcomes(np.array([0.0, 0.0]), np.zeros(2, dtype=bool), np.ones(2, dtype=bool))
    a = Swept(harmless_val, attacks, safe, benign_high)
    b = Swept(harmless_val, attacks, safe, benign_low)
    points = compose_sweep([0.0, 0.4], a)
    assert points[0]["jbb_benign"]["mean"] == 0.5 and points[0]["fired_benign"] == 0.5
    assert points[1]["jbb_benign"]["mean"] == 1.0
    assert "jbb_benign" not in compose_sweep([0.0], Swept(harmless_val, attacks, safe))[0]
    rows = {row["successes"]: row for row in at_equal_success(a, b, [0.0, 0.4])}
    assert rows[1]["xstest_safe"] == [0.0, 0.0]  # equal on XSTest ...
    assert rows[1]["jbb_benign"]["means"] == [0.5, 0.0]  # ... the cost is on benign ones
    assert rows[1]["jbb_benign"]["mean"] == 0.5


def test_gates_are_compared_on_attacks_at_equal_false_triggers() -> None:
    """Two gates at the same false-trigger target, each on its own harmless validation
    scores: the attacks each lets through are paired, the safe prompts' difference sits beside
    it, and the p-values are Holm-adjusted over the targets."""
    from refusal_lens.defence.sweep import at_equal_false_trigger

    n = 40
    none_a, full_a = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    safe = Outcomes(np.zeros(4), np.zeros(4, dtype=bool), np.ones(4, dtype=bool))
    # a's harmless scores sit low, so at every target its threshold is low and it fires on
    # every attack; b's harmless scores overlap the attacks, so it lets half through
    a = Swept(torch.linspace(0.0, 0.5, 20), Outcomes(np.full(n, 0.9), none_a, full_a), safe)
    b_scores = np.where(np.arange(n) % 2 == 0, 0.9, 0.3)
    b = Swept(torch.linspace(0.0, 0.6, 20), Outcomes(b_scores, none_a, full_a), safe)
    rows = at_equal_false_trigger(a, b, [0.0, 0.1, 0.5])
    assert [r["false_trigger"] for r in rows] == [0.0, 0.1, 0.5]
    zero = rows[0]
    assert zero["attacks"] == n and zero["thresholds"][0] < zero["thresholds"][1]
    assert zero["difference"]["means"] == [0.0, 0.5] and zero["difference"]["mean"] == -0.5
    assert zero["difference"]["p_value"] < 0.01
    assert zero["xstest_safe"]["means"] == [0.0, 0.0]  # no safe prompt fires for either
    # at 50% b's threshold falls below 0.3 as well: both block everything, no difference
    assert rows[2]["difference"]["mean"] == 0.0 and rows[2]["difference"]["p_value"] == 1.0
    holm = [r["difference"]["p_holm"] for r in rows]
    assert all(h >= r["difference"]["p_value"] for h, r in zip(holm, rows, strict=True))
    assert holm[2] == 1.0


def test_holm_adjusts_a_family_of_p_values() -> None:
    from refusal_lens.evaluation.statistics import holm

    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.02), max(0.04, 0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == []
