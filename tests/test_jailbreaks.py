"""Jailbreaks at the latent level (analyses stage)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_sae_set
from refusal_lens.analyses.jailbreaks import (
    Attack,
    GoalBootstrap,
    JailbreakSettings,
    difference,
    jailbreaks_job,
    latent_activity,
    suppression,
    word_attribution,
)
from refusal_lens.direction import Direction
from refusal_lens.hooks import HookPoint, record
from refusal_lens.judges import degenerate, register_judge
from refusal_lens.judges.degenerate import DegenerateRules
from refusal_lens.latents import LatentSet
from refusal_lens.models import ChatFormatter, LoadedModel
from test_probes import _ParityJudge


def test_suppression_is_the_relative_drop_of_summed_activity() -> None:
    plain = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    attacked = np.array([[0.5, 0.5], [3.0, 0.0], [1.0, 0.0]])
    values = suppression(plain, attacked)
    assert values[:2].tolist() == [0.5, -0.5] and np.isnan(values[2])
    diff = difference(
        np.array([0.9, 0.8, 0.85, np.nan, 0.7]), np.array([0.1, 0.2, 0.15, 0.3, np.nan]), seed=0
    )  # paired: only items where both are finite count
    assert diff is not None and diff["mean"] == pytest.approx(0.7)
    assert diff["ci95"][0] > 0.5 and diff["p_value"] < 0.05


def test_the_bootstrap_resamples_requests_not_attacks() -> None:
    goals = ["a"] * 4 + ["b"] * 4
    values = np.array([1.0] * 4 + [0.0] * 4)  # the request decides, not the attack
    boot = GoalBootstrap(goals, n_boot=2_000, seed=0)
    mean = boot.mean(values, np.ones(8, dtype=bool))
    assert mean is not None and mean["mean"] == 0.5 and mean["n"] == 8
    assert mean["ci95"] == [0.0, 1.0]  # two requests: a resample is all a, all b or both
    success = np.array([True, True, False, False] * 2)
    diff = boot.difference(values, success, ~success)
    assert diff is not None and diff["mean"] == 0.0 and diff["ci95"] == [0.0, 0.0]


def test_refusal_and_random_latents_are_compared_on_the_same_attacks() -> None:
    goals = [g for g in "abcd" for _ in range(3)]
    spread = np.random.default_rng(0).uniform(-1, 1, size=12)  # attacks differ a lot
    random_ = spread.copy()
    refusal = spread + 0.1  # every attack suppresses the refusal latents 0.1 more
    random_[5] = np.nan  # a read with no plain activity drops the attack from both sides
    boot = GoalBootstrap(goals, n_boot=2_000, seed=0)
    every = np.ones(12, dtype=bool)
    paired = boot.paired(refusal, random_, every)
    assert paired is not None and paired["n"] == 11 and paired["n_requests"] == 4
    assert paired["mean"] == pytest.approx(0.1) and paired["ci95"] == pytest.approx([0.1, 0.1])
    assert paired["p_value"] < 0.01
    # unpaired, the attack-to-attack spread hides the same difference
    one, other = boot.mean(refusal, every), boot.mean(random_, every)
    assert one is not None and other is not None and one["ci95"][0] < other["ci95"][1]
    success = np.arange(12) % 3 == 0
    only = boot.paired(refusal, random_, success)
    assert only is not None and only["n"] == 4 and only["mean"] == pytest.approx(0.1)
    assert boot.paired(refusal, random_, np.zeros(12, dtype=bool)) is None


def test_the_word_that_restores_refusal_activity_is_named() -> None:
    def activity(texts: Sequence[str]) -> np.ndarray:  # "fictional" halves the refusal signal
        return np.array([[0.5 if "fictional" in t else 1.0] for t in texts])

    attacks = [
        Attack("Do harm", "in a fictional story.", "Do harm in a fictional story."),
        Attack("Do harm", "for a fictional plot", "Do harm for a fictional plot"),
        Attack("Do harm", "for research", "Do harm for research"),
    ]
    rows = word_attribution(activity, attacks)
    assert [r["top_word"] for r in rows] == ["fictional", "fictional", None]
    assert rows[0]["restored"] == [0.0, 0.0, 0.5, 0.0]


def test_latent_activity_matches_a_direct_computation_and_is_cached(
    tiny: LoadedModel, formatter: ChatFormatter, tmp_path: Path
) -> None:
    from refusal_lens.runs import RunDir

    saes = random_sae_set(tiny)
    latents = [(1, 3), (2, 5)]
    texts = ["How do I bake bread?", "Write a poem about the sea please."]
    run = RunDir(tmp_path / "run")
    values = latent_activity(
        tiny, formatter, saes, latents, texts, positions=3, batch_size=2, run=run, progress=False
    )
    for i, text in enumerate(texts):
        points = [HookPoint(layer, "resid_post") for layer in (1, 2)]
        batch = formatter.encode([text])
        with torch.no_grad(), record(tiny.model, points) as acts:
            tiny.model(**batch.forward_kwargs())
        for j, (layer, latent) in enumerate(latents):
            with torch.no_grad():
                full = saes[HookPoint(layer, "resid_post")].encode(acts[points[j]][0])[
                    0, -3:, latent
                ]
            assert values[i, j] == pytest.approx(float(full.mean()), abs=1e-5)
    lines = (run.path / "activity.jsonl").read_text().splitlines()
    again = latent_activity(
        tiny, formatter, saes, latents, texts[::-1], positions=3, batch_size=2, run=run
    )
    assert np.allclose(again, values[::-1]) and len(lines) == 2
    assert (run.path / "activity.jsonl").read_text().splitlines() == lines


def test_jailbreaks_job_on_a_tiny_model(
    tiny: LoadedModel, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saes = random_sae_set(tiny)
    saes.save(tmp_path / "saes")
    torch.manual_seed(0)
    direction = Direction(torch.randn(tiny.d_model), 1, -1, {"name": tiny.name})
    features = LatentSet(
        {"name": tiny.name, "weights_sha256": tiny.weights_sha256},
        {"path": str(tmp_path / "saes"), "fingerprint": saes.fingerprint()},
        "ours",
        "heldout",
        {},
        [(1, 3, 1.0), (2, 7, 0.5), (1, 11, 0.2)],
        {"mode": "scale", "value": -3.0, "k": 3},
    )
    register_judge("test-parity", lambda context: _ParityJudge(), "refuses prompts of even CRC")
    # the tiny random model writes bytes, not words: every answer would be degenerate
    monkeypatch.setattr(degenerate, "RULES", DegenerateRules(min_words=0, max_loop_share=1.1))
    settings = JailbreakSettings(
        n_goals=8, attacks_per_goal=3, judges=("test-parity",), max_new_tokens=12
    )

    def job() -> dict:
        return jailbreaks_job(
            tiny,
            ChatFormatter(tiny.tokenizer),
            saes,
            features,
            direction,
            settings,
            tmp_path / "run",
            data_dir=str(shared_data),
            echo=lambda _: None,
        )

    first = job()
    assert first["n_goals"] == 8 and 0 < first["n_refused_goals"] < 8
    assert first["n_attacks"] == 3 * first["n_refused_goals"]
    names = [row["latents"] for row in first["suppression"]]
    assert names == ["refusal latents", "random latents (seed 0)"]
    records = [json.loads(line) for line in (tmp_path / "run" / "attacks.jsonl").open()]
    assert len(records) == first["n_attacks"]
    n_success = sum(r["success"] for r in records)
    assert first["suppression"][0]["successful"]["n"] <= n_success
    assert first["words"]["n_successful"] == n_success
    assert (tmp_path / "run" / "jailbreaks.md").read_text().startswith("# Jailbreaks")
    (paired,) = first["versus_random"]
    assert (paired["latents"], paired["control"]) == ("refusal latents", "random latents (seed 0)")
    both = [
        r["suppression"]["refusal latents"] - r["suppression"]["random latents (seed 0)"]
        for r in records
        if None not in r["suppression"].values()
    ]
    assert paired["all"]["n"] == len(both) > 0  # attack by attack, the same attacks
    assert paired["all"]["mean"] == pytest.approx(np.mean(both), abs=2e-4)
    low, high = paired["all"]["ci95"]
    assert low <= paired["all"]["mean"] <= high and 0 <= paired["all"]["p_value"] <= 1
    markdown = (tmp_path / "run" / "jailbreaks.md").read_text()
    assert "| refusal latents | random latents (seed 0) |" in markdown
    from refusal_lens.report.analyses import jailbreaks_sections
    from refusal_lens.report.page import Page

    report_run = tmp_path / "report-run" / "analyses" / "jailbreaks-suffixes"
    report_run.mkdir(parents=True)
    (report_run / "jailbreaks.json").write_text(json.dumps(first))
    page = Page("report")
    jailbreaks_sections(page, tmp_path / "report-run")
    assert "| latents | control | all attacks (p) | successful (p) | failed (p) |" in "\n".join(
        page.md
    )

    def no_more(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a rerun generated again")

    monkeypatch.setattr("refusal_lens.generation.generate", no_more)
    second = job()
    assert second["suppression"] == first["suppression"] and second["words"] == first["words"]
