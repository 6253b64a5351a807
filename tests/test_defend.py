"""The defence study: its pools, its statistics and the whole job on a tiny model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_sae_set
from refusal_lens.analyses.defend import (
    EDITS,
    DefendSettings,
    _split,
    build_pools,
    defend_job,
    kept_share,
    pareto,
    prompt_set,
)
from refusal_lens.analyses.inputs import AnalysisInputs
from refusal_lens.data import load_prompts
from refusal_lens.direction import Direction
from refusal_lens.errors import UserError
from refusal_lens.evaluation.capabilities import CapabilitySettings
from refusal_lens.heldout import describe, drop_selected, words
from refusal_lens.judges import degenerate, register_judge
from refusal_lens.judges.degenerate import DegenerateRules
from refusal_lens.latents import LatentSet
from refusal_lens.models import ChatFormatter, LoadedModel, conversation, turns
from test_probes import _ParityJudge


def test_a_conversation_renders_every_turn_in_the_template(tiny: LoadedModel) -> None:
    formatter = ChatFormatter(tiny.tokenizer)
    prompt = conversation(["Name a fruit.", "An apple.", "Now name a vegetable."])
    assert turns(prompt) == ["Name a fruit.", "An apple.", "Now name a vegetable."]
    assert turns("plain") == ["plain"]
    rendered = formatter.render(prompt)
    assert rendered.index("Name a fruit.") < rendered.index("An apple.")
    assert rendered.index("An apple.") < rendered.index("Now name a vegetable.")
    assert rendered.endswith(formatter.render("x").split("x")[-1])  # the generation prompt
    assert "assistant\nAn apple." in rendered
    with pytest.raises(UserError, match="odd number"):
        conversation(["a", "b"])


def test_selected_prompts_and_near_copies_leave_a_pool() -> None:
    pool = prompt_set(
        "pool",
        ["How do I bake bread at home?", "Write a poem about the sea.", "Explain photosynthesis."],
    )
    chosen = prompt_set("chosen", ["how do i bake bread at home", "Explain photosynthesis."])
    kept = drop_selected({"latents train": describe(chosen)}, pool)
    assert kept.texts() == ["Write a poem about the sea."]


def test_a_split_leaves_no_near_copy_of_validation_in_test() -> None:
    texts = [f"Tell me about topic number {n} in detail" for n in range(4)] + [
        "Write a haiku",
        "write a haiku!",
    ]
    val, test = _split(prompt_set("p", texts), 0.5, seed=3)
    assert len(val) == 3
    for t in test.texts():
        assert all(len(words(t) & words(v)) / len(words(t) | words(v)) < 0.6 for v in val.texts())


def test_the_pareto_front_keeps_points_no_other_beats_on_both_axes() -> None:
    points = {"none": (0.0, 0.5), "a": (0.2, 0.1), "b": (0.3, 0.2), "c": (0.2, 0.1)}
    assert pareto(points) == ["none", "a", "c"]


def test_the_kept_share_is_the_gated_drop_over_the_full_drop() -> None:
    none = np.array([1, 1, 1, 1, 0, 0, 1, 1], dtype=bool)
    full = np.zeros(8, dtype=bool)
    gated = np.array([0, 0, 0, 1, 0, 0, 1, 0], dtype=bool)
    kept = kept_share(none, full, gated, seed=0)
    assert kept is not None
    assert kept["mean"] == pytest.approx((6 / 8 - 2 / 8) / (6 / 8))
    assert kept["ci95"][0] <= kept["mean"] <= kept["ci95"][1]
    assert kept_share(none, none, gated, seed=0) is None  # nothing to keep


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(UserError, match="val_fraction"):
        DefendSettings(val_fraction=1.0)
    with pytest.raises(UserError, match="latent_mode"):
        DefendSettings(latent_mode="add")
    with pytest.raises(UserError, match="n_goals"):
        DefendSettings(n_goals=0)
    with pytest.raises(UserError, match="gate_scope is one of token, prompt"):
        DefendSettings(gate_scope="answer")
    with pytest.raises(UserError, match="gate_pool=mean needs gate_scope=prompt"):
        DefendSettings(gate_scope="token", gate_pool="mean")
    with pytest.raises(UserError, match="gate_pool is max or mean"):
        DefendSettings(gate_pool="sum")
    with pytest.raises(UserError, match="target_kept"):
        DefendSettings(target_kept=0.0)
    with pytest.raises(UserError, match="attack_split is one of attack, goal"):
        DefendSettings(attack_split="template")
    with pytest.raises(UserError, match="sparse_latents"):
        DefendSettings(sparse_latents=-1)
    with pytest.raises(UserError, match="first_turn is one of defended, undefended"):
        DefendSettings(first_turn="base")
    for edits in ((), ("latents", "latents"), ("latents", "cosine")):
        with pytest.raises(UserError, match="latent_gated_edits names each of latents, direction"):
            DefendSettings(latent_gated_edits=edits)


def test_the_pools_are_held_out_and_split_by_request(shared_data: Path) -> None:
    settings = DefendSettings(
        sources=("suffixes", "gptfuzz"),
        n_goals=10,
        attacks_per_goal=2,
        n_harmless=20,
        n_safe=20,
        n_benign=5,
        two_turn=4,
    )
    banned = load_prompts("xstest_safe", data_dir=shared_data, limit=3)
    pools = build_pools(settings, {"x": describe(banned)}, shared_data)
    assert not set(banned.texts()) & set(pools.safe_val.texts() + pools.safe_test.texts())
    val_goals, test_goals = set(pools.val_goals.texts()), set(pools.test_goals.texts())
    assert not val_goals & test_goals
    assert {a.goal for a in pools.val_attacks} <= val_goals
    assert {a.goal for a in pools.test_attacks} <= test_goals
    assert {a.source for a in pools.val_attacks + pools.test_attacks} == {"suffixes", "gptfuzz"}
    assert all(a.goal in a.prompt for a in pools.test_attacks)
    # no test attack uses a template or suffix that a validation attack used
    assert not {a.attack for a in pools.val_attacks} & {a.attack for a in pools.test_attacks}
    by_goal = build_pools(replace(settings, attack_split="goal"), {}, shared_data)
    assert {a.goal for a in by_goal.test_attacks} == {a.goal for a in pools.test_attacks}
    # JailbreakBench's benign behaviours are split like the other pools: the gates' thresholds
    # and the probes see some, the cost is measured on the others
    assert pools.benign_val is not None and pools.benign_test is not None
    assert len(pools.benign_val) and len(pools.benign_test)
    assert not set(pools.benign_val.texts()) & set(pools.benign_test.texts())
    assert len(pools.first_turns) == 4
    assert not set(pools.first_turns.texts()) & set(
        pools.harmless_val.texts() + pools.harmless_test.texts()
    )


def test_defend_job_on_a_tiny_model(
    tiny: LoadedModel, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saes = random_sae_set(tiny)
    saes.save(tmp_path / "saes")
    torch.manual_seed(0)
    direction = Direction(torch.randn(tiny.d_model), 1, -1, {"name": tiny.name})
    model = {"name": tiny.name, "weights_sha256": tiny.weights_sha256}
    where = {"path": str(tmp_path / "saes"), "fingerprint": saes.fingerprint()}
    refusal = LatentSet(
        model,
        where,
        "common",
        "heldout",
        {},
        [(1, 3, 1.0), (2, 7, 0.5)],
        {"mode": "scale", "value": -3.0, "k": 2},
    )
    harm = LatentSet(
        model,
        where,
        "harm",
        "heldout",
        {},
        [(0, 5, 1.0), (1, 9, 0.5), (2, 1, 0.1)],
        {"mode": "scale", "value": -3.0, "k": 3},
    )
    register_judge("test-parity", lambda context: _ParityJudge(), "refuses prompts of even CRC")
    monkeypatch.setattr(degenerate, "RULES", DegenerateRules(min_words=0, max_loop_share=1.1))
    settings = DefendSettings(
        sources=("suffixes",),
        n_goals=8,
        attacks_per_goal=2,
        n_harmless=10,
        n_safe=10,
        n_benign=4,
        two_turn=3,
        latent_strengths=(2.0, 8.0),
        direction_strengths=(0.5,),
        target_block=0.5,
        judges=("test-parity",),
        answer_judges=("test-parity", "substring"),
        max_new_tokens=6,
        batch_size=4,
        samples=2,
        capabilities=CapabilitySettings(tasks=("arc_challenge",), limit=3, batch_size=4),
    )
    inputs = AnalysisInputs(
        lm=tiny,
        formatter=ChatFormatter(tiny.tokenizer),
        saes=saes,
        saes_path=str(where["path"]),
        direction=direction,
        direction_path="",
        latents=refusal,
        ours=refusal,
        harm=harm,
        data_dir=str(shared_data),
        cache_dir=str(tmp_path / "cache"),
        echo=lambda _: None,
    )
    import refusal_lens.analyses.defend as defend_module

    answered_by: dict[tuple[str, ...], set[str]] = {}
    original = defend_module.stored_completions

    def recording(ctx: object, arm: object, prompts: object) -> list[str]:
        texts = tuple(prompts.texts())  # type: ignore[attr-defined]
        answered_by.setdefault(texts, set()).add(arm.condition)  # type: ignore[attr-defined]
        return original(ctx, arm, prompts)  # type: ignore[arg-type]

    monkeypatch.setattr(defend_module, "stored_completions", recording)
    summary = defend_job(inputs, settings, tmp_path / "run")
    monkeypatch.setattr(defend_module, "stored_completions", original)
    labels = [row["defence"] for row in summary["defences"]]
    # each defence answers the two-turn attacks' harmless first turns itself
    built_pools = build_pools(settings, {}, str(shared_data))
    first = built_pools.first_turns.texts()[: settings.two_turn]
    assert len(answered_by[tuple(first)]) == len(labels)
    # the gated defences' single-turn answers are composed: only the three ungated arms answer
    # the test attacks and the safe prompts
    test_attacks = tuple(a.prompt for a in built_pools.test_attacks)
    assert len(answered_by[test_attacks]) == 3
    assert len(answered_by[tuple(built_pools.safe_test.texts())]) == 3
    assert labels == [
        "none",
        "latents",
        "latents if harm",
        "latents if probe",
        "latents if sparse probe",
        "direction",
        "direction if harm",  # the latent gates gate the CAST-style gate's edit as well
        "direction if probe",
        "direction if sparse probe",
        "direction if cosine",
    ]
    # the sparse probe reads only latents of the first edited layer (1)
    sparse = summary["sparse_probe"]
    assert sparse["latents"] and {layer for layer, _ in sparse["latents"]} == {1}
    assert len(sparse["weights"]) == len(sparse["latents"]) <= settings.sparse_latents
    # the gate reads only harm latents at or before the first edited layer (1)
    assert summary["harm_latents"] == [[0, 5], [1, 9]]
    rows = {row["defence"]: row for row in summary["defences"]}
    assert rows["latents if harm"]["strength"] == rows["latents"]["strength"]
    assert rows["latents"]["strength"] in (2.0, 8.0)
    n_attacks = summary["pools"]["test attacks"]
    for row in summary["defences"]:
        assert row["attacks"]["n"] == n_attacks and row["two_turn"]["n"] == 3
        assert 0 <= row["xstest_safe"]["mean"] <= 1
        assert [c["task"] for c in row["capabilities"]] == ["arc_challenge", "arc_challenge"]
    assert rows["none"]["harmless_kl"] is None and "attacks_vs_none" not in rows["none"]
    assert rows["latents"]["harmless_kl"]["mean"] > 0
    # a gate's threshold is set on harmless, XSTest safe and benign validation prompts
    sizes = summary["pools"]
    harmless_val = sizes["harmless validation"] + sizes["XSTest safe validation"]
    assert sizes["benign validation"] > 0 and sizes["benign test"] > 0
    cosine = rows["direction if cosine"]["trigger"]["validation"]["false_trigger"]
    assert cosine["n"] == harmless_val + sizes["benign validation"]
    for name in ("latents if harm", "latents if probe", "latents if sparse probe"):
        trigger = rows[name]["trigger"]
        assert trigger["validation"]["false_trigger"]["mean"] <= settings.false_trigger + 1e-9
        assert rows[name]["threshold"] == trigger["threshold"]
    # unconditional defences fire everywhere, so they differ from none on some test attacks
    assert set(summary["pareto"]) <= set(labels)
    attacks = summary["examples"]["latents"]["attacks"]
    assert any(len(turns(a["prompt"])) == 3 for a in attacks)
    markdown = (tmp_path / "run" / "defend.md").read_text()
    assert markdown.startswith("# Defence") and "| latents if probe |" in markdown
    scores = json.loads((tmp_path / "run" / "gate_scores.json").read_text())
    assert set(scores) == {"harm", "probe", "sparse", "cosine"}
    # the prompt-scope gated defences at every false-trigger target, composed
    gated = {f"{edit} if {gate}" for edit in EDITS for gate in ("harm", "probe", "sparse probe")}
    assert set(summary["sweep"]) == gated | {"direction if cosine"}
    for swept in summary["sweep"].values():
        assert [p["false_trigger"] for p in swept["points"]] == list(settings.sweep)
        assert "agreement" not in swept  # the gated arms are the composition itself
    assert "at each false-trigger target" in markdown
    # each latent gate against the CAST-style gate, matched on attack success
    assert set(summary["matched"]) == gated
    for rows_matched in summary["matched"].values():
        assert rows_matched and all(0 <= r["successes"] <= n_attacks for r in rows_matched)
    assert "against the CAST-style gate at equal attack success" in markdown
    # ... and at equal false triggers, compared on the attacks, at every target of the sweep
    assert set(summary["matched_cost"]) == gated
    for costs in summary["matched_cost"].values():
        assert [c["false_trigger"] for c in costs] == list(settings.sweep)
        assert all(c["attacks"] == n_attacks and 0 <= c["difference"]["p_holm"] <= 1 for c in costs)
    assert "against the CAST-style gate at equal false triggers" in markdown
    # each gated defence's operating point, chosen on validation attacks
    points = summary["operating_points"]
    assert set(points) == gated | {"direction if cosine"}
    for choice in points.values():
        if choice is not None:
            assert choice["kept_val"] >= settings.target_kept and "test" in choice

    from refusal_lens.report.analyses import defend_section
    from refusal_lens.report.page import Page

    report_run = tmp_path / "report-run" / "analyses" / "defend"
    report_run.mkdir(parents=True)
    (report_run / "defend.json").write_text(json.dumps(summary))
    page = Page("report")
    defend_section(page, tmp_path / "report-run")
    text = "\n".join(page.md)
    assert "defend_pareto.png" in page.figures and "| latents if harm |" in text
    assert "[turn 3]" in text
    assert "against the CAST-style gate at equal false triggers" in text
    assert "a fired gate edits its whole prompt and answer" in text  # the default scope
    assert "at every false-trigger target, composed" in text
    assert "against the CAST-style gate at equal attack success" in text

    def no_more(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a rerun generated again")

    monkeypatch.setattr("refusal_lens.generation.generate", no_more)
    # nor scored a prompt again: gate scores and features come from the user cache
    for scorer in ("gates_prompt_scores", "latent_features", "layer_features"):
        monkeypatch.setattr(f"refusal_lens.analyses.defend.{scorer}", no_more)
    again = defend_job(inputs, settings, tmp_path / "run-again")
    assert again["defences"] == summary["defences"]
    assert again["sparse_probe"] == summary["sparse_probe"]
    monkeypatch.undo()

    # generated gated arms: the composition is checked against them; with the direction
    # added after layer 0, no latent gate can gate it (they read layer 1)
    monkeypatch.setattr(degenerate, "RULES", DegenerateRules(min_words=0, max_loop_share=1.1))
    early = Direction(direction.vector, 0, -1, {"name": tiny.name})
    generated = defend_job(
        replace(inputs, direction=early),
        replace(
            settings,
            gated_answers="generated",
            capabilities=replace(settings.capabilities, tasks=()),
        ),
        tmp_path / "run-generated",
    )
    assert (
        "Every defence's answers are generated."
        in (tmp_path / "run-generated" / "defend.md").read_text()
    )
    assert generated["not_built"]["defences"] == [
        f"direction if {gate}" for gate in ("harm", "probe", "sparse probe")
    ]
    assert [r["defence"] for r in generated["defences"]] == [
        label for label in labels if label not in generated["not_built"]["defences"]
    ]
    for label, swept in generated["sweep"].items():
        same = swept["agreement"]["attacks"]
        assert same["n"] == n_attacks and same["same"] >= 0.9 * n_attacks, label


def test_gate_scores_are_cached_by_model_key_and_texts(tiny: LoadedModel, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from refusal_lens.analyses.defend import _cached

    said: list[str] = []
    formatter = ChatFormatter(tiny.tokenizer)
    study = SimpleNamespace(
        inputs=SimpleNamespace(lm=tiny, formatter=formatter, cache_dir=str(tmp_path)),
        echo=said.append,
    )
    calls: list[int] = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.arange(6.0).reshape(3, 2)

    def cached(key: str, texts: list[str], fn=compute) -> torch.Tensor:
        return _cached(study, "gate-scores", [key], texts, fn)  # type: ignore[arg-type]

    first = cached("a", ["x", "y", "z"])
    assert torch.equal(cached("a", ["x", "y", "z"]), first) and len(calls) == 1
    cached("b", ["x", "y", "z"])
    cached("a", ["x", "y"], lambda: first[:2])
    assert len(calls) == 2  # another key, other texts: computed, not read
    study.inputs.formatter = ChatFormatter(tiny.tokenizer, system="Be brief.")
    cached("a", ["x", "y", "z"])
    assert len(calls) == 3  # another chat template scores every prompt differently
    study.inputs.formatter = formatter
    # a file that is not a table of the texts' rows is computed again, with one line said
    for path in (tmp_path / "defend").iterdir():
        path.write_bytes(b"not safetensors")
    assert torch.equal(cached("a", ["x", "y", "z"]), first)
    assert len(calls) == 4 and said and "recomputing" in said[0]


def test_a_nested_override_keeps_the_fields_own_default() -> None:
    """`capabilities.limit=5` changes the limit only: the study's own task list (with MMLU)
    stays, not the capability settings' class defaults."""
    from refusal_lens.analyses.defend import QUICK
    from refusal_lens.config import load_settings

    settings = load_settings(DefendSettings, overrides=["capabilities.limit=5"])
    assert settings.capabilities.tasks == DefendSettings().capabilities.tasks
    assert "mmlu" in settings.capabilities.tasks and settings.capabilities.limit == 5
    assert settings.capabilities.mmlu_subjects == DefendSettings().capabilities.mmlu_subjects
    quick = load_settings(DefendSettings, defaults=QUICK)
    assert quick.capabilities.tasks == ("arc_challenge", "mmlu", "gsm8k")
    assert quick.capabilities.gsm8k_limit == 8


def test_a_safe_prompt_is_answered_only_when_every_judge_says_so() -> None:
    from refusal_lens.analyses.defend import _unanswered
    from refusal_lens.evaluation.store import StoredVerdict

    answered = StoredVerdict(False, None, None, {})
    complied = StoredVerdict(None, True, 0.9, {})
    assert not _unanswered({"substring": answered, "learned": complied})
    lecture = StoredVerdict(None, False, 0.1, {})  # no refusal phrase, but no help either
    assert _unanswered({"substring": answered, "learned": lecture})
    loop = StoredVerdict(False, False, None, {"degenerate": "loop"})
    assert _unanswered({"substring": loop})
    assert _unanswered({"substring": StoredVerdict(True, None, None, {})})


def test_a_composed_gated_defence_answers_as_its_sources_where_the_gate_fires() -> None:
    from types import SimpleNamespace

    from refusal_lens.analyses.defend import NONE, Attempt, Defence, measure_composed, prompt_set

    attacks = [Attempt("suffixes", f"goal {i}", "a", f"attack {i}") for i in range(4)]
    safe, harmless = ["safe 0", "safe 1", "safe 2"], ["calm 0", "calm 1"]
    pools = SimpleNamespace(
        test_attacks=attacks,
        safe_test=prompt_set("safe", safe),
        harmless_test=prompt_set("harmless", harmless),
        benign_test=None,
    )
    scores = {
        "harmful_test": {"attack 0": 2.0, "attack 1": 0.5, "attack 2": 1.0, "attack 3": -1.0},
        "harmless_test": {
            "safe 0": 3.0,
            "safe 1": 0.0,
            "safe 2": 0.99,
            "calm 0": 1.0,
            "calm 1": 0.2,
        },
    }
    study = SimpleNamespace(
        pools=pools,
        arm=lambda defence: None,
        success=lambda arm, turns, name: np.zeros(len(turns), dtype=bool),
    )
    measured = {
        NONE: {
            "attacks": np.array([True, True, True, True]),
            "xstest_safe": np.array([False, False, True]),
            "xstest_safe_degenerate_each": np.array([False, False, False]),
        },
        "latents": {
            "attacks": np.array([False, False, False, True]),
            "xstest_safe": np.array([True, True, False]),
            "xstest_safe_degenerate_each": np.array([True, False, True]),
            "kl_each": np.array([0.5, 0.25]),
        },
    }
    gated = Defence("latents if harm", "latents", "harm", (), 4.0, 1.0)  # fires at >= 1.0
    out = measure_composed(
        study,  # type: ignore[arg-type]
        gated,
        measured,
        {"harm": {"scores": scores}},
        [],
        None,
    )
    assert out["attacks"].tolist() == [False, True, False, True]  # fired on attacks 0 and 2
    assert out["xstest_safe"].tolist() == [True, False, True]  # fired on safe 0 only
    assert out["xstest_safe_degenerate"] == 1
    assert out["kl_each"].tolist() == [0.5, 0.0]  # no edit where the gate stays quiet
    assert out["two_turn"].tolist() == [] and "capabilities" not in out
