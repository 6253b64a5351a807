from __future__ import annotations

import numpy as np
import pytest

from refusal_lens.errors import UserError
from refusal_lens.evaluation.statistics import bootstrap_mean, paired_difference


def test_bootstrap_interval_covers_mean_and_shrinks_with_n() -> None:
    small = bootstrap_mean([1, 0] * 10)
    large = bootstrap_mean([1, 0] * 500)
    assert small.low < 0.5 < small.high
    assert large.high - large.low < small.high - small.low
    # binomial standard error for n=100, p=0.5 is 0.05: the 95% interval is about +-0.1
    mid = bootstrap_mean([1, 0] * 50)
    assert 0.17 < mid.high - mid.low < 0.22


def test_constant_data_and_empty() -> None:
    assert bootstrap_mean([1, 1, 1]).low == 1.0
    with pytest.raises(UserError, match="zero samples"):
        bootstrap_mean([])


def test_paired_difference_detects_a_shift() -> None:
    rng = np.random.default_rng(0)
    before = rng.integers(0, 2, 200)
    after = np.zeros(200)
    diff, p_value = paired_difference(after, before)
    assert diff.mean == pytest.approx(-before.mean())
    assert diff.high < 0 and p_value < 0.01
    same, p_same = paired_difference(before, before)
    assert same.mean == 0 and p_same == 1.0


def test_interval_cell_is_the_one_way_to_print_an_estimate() -> None:
    from refusal_lens.evaluation.statistics import interval_cell

    assert interval_cell({"mean": 0.5, "ci95": [0.25, 0.75]}) == "0.50 [0.25, 0.75]"
    assert interval_cell({"mean": 0.5, "ci95": [0.25, 0.75]}, digits=3) == "0.500 [0.250, 0.750]"
    assert interval_cell({"mean": 0.5, "ci95": [None, None]}) == "0.50"
    assert interval_cell({"mean": None, "ci95": [None, None]}) == "-"
    assert interval_cell(None) == "-"
