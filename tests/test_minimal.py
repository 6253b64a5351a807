"""Minimal latent sets and pairwise interactions (analyses stage)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from conftest import random_sae_set
from refusal_lens.analyses.minimal import (
    EffectCache,
    MinimalSettings,
    greedy_prune,
    interaction_scores,
    minimal_job,
)
from refusal_lens.judges import register_judge
from refusal_lens.latents import LatentSet
from refusal_lens.models import ChatFormatter, LoadedModel
from refusal_lens.runs import RunDir
from test_probes import _ParityJudge

A, B, C, D = (1, 1), (1, 2), (2, 3), (2, 4)


def _effect(latents: Sequence[tuple[int, int]]) -> float:
    """A matters, B and C stand in for each other (either gives 0.5), D barely matters."""
    chosen = set(latents)
    return (A in chosen) * 1.0 + (0.5 if B in chosen or C in chosen else 0.0) + (D in chosen) * 0.01


def test_greedy_pruning_keeps_one_of_two_redundant_latents() -> None:
    minimal, trace = greedy_prune([A, B, C, D], _effect, keep=0.9)
    assert len(minimal) == 2 and A in minimal and (B in minimal) != (C in minimal)
    assert [step["size"] for step in trace] == [4, 3, 2]
    assert [step["removed"] for step in trace[1:]] == [list(B), list(D)]  # cheapest first
    # keeping all of the effect: only one of the redundant pair can go, D cannot
    assert greedy_prune([A, B, C, D], _effect, keep=1.0)[0] == [A, C, D]


def test_interactions_expose_redundancy() -> None:
    rows = {(tuple(r["a"]), tuple(r["b"])): r for r in interaction_scores([A, B, C], _effect)}
    assert rows[(B, C)]["interaction"] == pytest.approx(-0.5)  # either alone does the job
    assert rows[(A, B)]["interaction"] == pytest.approx(0.0)  # independent contributions


def test_effects_are_stored_and_reused(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute(latents: Sequence[tuple[int, int]]) -> float:
        calls.append(len(latents))
        return _effect(latents)

    run = RunDir(tmp_path)
    cache = EffectCache(run, "k", compute)
    assert cache([B, A]) == cache([A, B]) == 1.5 and len(calls) == 1
    again = EffectCache(run, "k", compute)
    assert again([A, B]) == 1.5 and len(calls) == 1
    assert EffectCache(run, "other settings", compute)([A, B]) == 1.5 and len(calls) == 2


def test_minimal_job_on_a_tiny_model(tiny: LoadedModel, tmp_path: Path) -> None:
    saes = random_sae_set(tiny)
    features = LatentSet(
        {"name": tiny.name, "weights_sha256": tiny.weights_sha256},
        {"path": "x", "fingerprint": saes.fingerprint()},
        "ours",
        "heldout",
        {},
        [(1, 3, 1.0), (2, 7, 0.5), (1, 11, 0.2), (2, 30, 0.1)],
        {"mode": "scale", "value": -3.0, "k": 4},
    )
    register_judge("test-parity", lambda context: _ParityJudge(), "refuses prompts of even CRC")
    settings = MinimalSettings(
        dataset="builtin_harmful_val",
        min_score=-1e9,  # a random model refuses nothing: every prompt counts
        n_prompts=4,
        interactions=3,
        test_dataset="builtin_harmful_test",
        n_test=4,
        judge="test-parity",
        max_new_tokens=3,
    )
    summary = minimal_job(
        tiny,
        ChatFormatter(tiny.tokenizer),
        saes,
        features,
        settings,
        tmp_path / "run",
        data_dir=None,
        echo=lambda _: None,
    )
    assert 1 <= len(summary["minimal"]["latents"]) <= 4
    assert len(summary["interactions"]) == 3
    assert [row["set"] for row in summary["test"]] == [
        "base",
        "full set",
        "minimal set",
        "random (seed 0)",
    ]
    lines = (tmp_path / "run" / "effects.jsonl").read_text().splitlines()
    assert len(lines) == len({line.split('"effect"')[0] for line in lines})  # each set once
