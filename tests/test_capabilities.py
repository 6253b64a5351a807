"""Capabilities through lm-eval on a tiny model: local task configs, items stored and resumed,
interventions active inside lm-eval, and the same numbers as our own scorer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from refusal_lens.errors import UserError
from refusal_lens.evaluation.capabilities import (
    CapabilityRunner,
    CapabilitySettings,
    TaskSpec,
    _check_applicable,
    direct_multiple_choice,
    numeric_equal,
    sample_metrics,
    task_specs,
)
from refusal_lens.evaluation.store import Condition, ResultStore
from refusal_lens.hooks import HookPoint, record
from refusal_lens.interventions import AddDirection, DirectionGate, EditLatents, Gated
from refusal_lens.models import LoadedModel

if os.environ.get("REFUSAL_LENS_REQUIRE_EXTRAS") != "1":
    pytest.importorskip("lm_eval")

ARC = [
    {
        "id": f"q{i}",
        "question": question,
        "choices": {"text": options, "label": ["A", "B", "C"]},
        "answerKey": "ABC"[i % 3],
    }
    for i, (question, options) in enumerate(
        [
            ("Which bakes bread?", ["an oven", "a fox", "the sea"]),
            ("What is quick?", ["a brown fox", "a lazy dog", "flour"]),
            ("What does a poem describe?", ["the sea", "salt", "a computer"]),
        ]
    )
]


def write_capability_data(root: Path) -> Path:
    cap = root / "capability"
    (cap / "arc_challenge").mkdir(parents=True)
    (cap / "arc_challenge" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in ARC))
    (cap / "openbookqa").mkdir()
    obqa = {
        "id": "1",
        "question": {
            "stem": "Bread needs",
            "choices": [{"text": "flour", "label": "A"}, {"text": "a fox", "label": "B"}],
        },
        "answerKey": "A",
    }
    (cap / "openbookqa" / "openbookqa.jsonl").write_text(json.dumps(obqa) + "\n")
    for split in ("test", "dev"):
        (cap / "mmlu" / split).mkdir(parents=True)
        (cap / "mmlu" / split / f"baking_{split}.csv").write_text(
            "question,choice0,choice1,choice2,choice3,answer\n"
            "What is bread made of?,flour,sea,fox,dog,0\n"
        )
    (cap / "gsm8k").mkdir()
    gsm = {"question": "2 + 2?", "answer": "2 + 2 = 4\n#### 4"}
    (cap / "gsm8k" / "test.jsonl").write_text(json.dumps(gsm) + "\n")
    (cap / "truthfulqa").mkdir()
    (cap / "truthfulqa" / "TruthfulQA.csv").write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
        "A,B,What is bread?,Food,Food,A fox; The sea,s\n"
    )
    return root


def test_task_configs_read_the_local_files(tmp_path: Path) -> None:
    root = write_capability_data(tmp_path / "data")
    settings = CapabilitySettings(
        tasks=("arc_challenge", "openbookqa", "mmlu", "gsm8k", "truthfulqa_mc1")
    )
    specs = {s.family: s for s in task_specs(settings, root, tmp_path / "work")}
    assert (
        specs["arc_challenge"].config["dataset_kwargs"]["data_files"]["test"].startswith(str(root))
    )
    assert specs["arc_challenge"].n_items == 3
    assert specs["mmlu"].name == "rl_mmlu_baking" and specs["mmlu"].config["fewshot_split"] == "dev"
    assert specs["gsm8k"].config["num_fewshot"] == 8  # lm-eval's 8-shot chain of thought
    assert "numeric_match,flexible-extract" in specs["gsm8k"].metrics
    derived = (tmp_path / "work" / "truthfulqa_mc1.jsonl").read_text()
    assert json.loads(derived)["mc1_targets"] == {
        "choices": ["Food", "A fox", "The sea"],
        "labels": [1, 0, 0],
    }
    with pytest.raises(UserError, match="unknown capability task 'hellaswag'"):
        task_specs(CapabilitySettings(tasks=("hellaswag",)), root, tmp_path / "w")
    with pytest.raises(UserError, match="unknown MMLU subject"):
        task_specs(CapabilitySettings(tasks=("mmlu",), mmlu_subjects=("x",)), root, tmp_path / "w")
    with pytest.raises(UserError, match="GSM8K data not found"):
        task_specs(CapabilitySettings(tasks=("gsm8k",)), tmp_path, tmp_path / "w")


def test_numeric_match_normalises_numbers() -> None:
    assert numeric_equal("18.0", "18") and numeric_equal("$1,000.", "1000")
    assert not numeric_equal("17", "18") and numeric_equal("[invalid]", "[invalid]")
    assert not numeric_equal("[invalid]", "18")


def test_gsm8k_samples_become_exact_and_numeric_rows() -> None:
    spec = TaskSpec("rl_gsm8k_cot", "gsm8k", {}, 1, [])
    sample = {
        "doc_id": 3,
        "filter": "strict-match",
        "filtered_resps": ["18.0"],
        "target": "18",
        "exact_match": 0.0,
    }
    rows = sample_metrics(spec, [sample])
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("3", "exact_match,strict-match", 0.0),
        ("3", "numeric_match,strict-match", 1.0),
    ]


def test_position_dependent_edits_are_refused(tiny_saes) -> None:
    edit = EditLatents(tiny_saes, ((1, 0),), positions="prompt")
    with pytest.raises(UserError, match="at all positions"):
        _check_applicable([edit])
    with pytest.raises(UserError, match="retain"):
        _check_applicable([EditLatents(tiny_saes, ((1, 0),), retain=((1, 1),))])
    gate = DirectionGate(torch.ones(tiny_saes[HookPoint(1, "resid_post")].d_in), 0, 0.5)
    _check_applicable([Gated(EditLatents(tiny_saes, ((1, 0),)), gate)])  # causal: it can run
    with pytest.raises(UserError, match="at all positions"):
        _check_applicable([Gated(edit, gate)])


def test_lm_eval_runs_our_model_under_our_intervention(tiny: LoadedModel, tmp_path: Path) -> None:
    root = write_capability_data(tmp_path / "data")
    settings = CapabilitySettings(tasks=("arc_challenge",), limit=None, chunk=2, batch_size=4)
    with ResultStore(tmp_path / "r.sqlite") as store:
        runner = CapabilityRunner(tiny, store, settings, root, tmp_path / "work")
        base = Condition(tiny.weights_sha256, store.intervention_id([]), label="base")
        torch.manual_seed(0)
        push = AddDirection(torch.randn(tiny.d_model), layer=1, coeff=8.0)
        edited = Condition(
            tiny.weights_sha256, store.intervention_id([push.to_dict()]), label="add"
        )
        progress: list[int] = []
        runner.evaluate(base, [], on_progress=lambda _t, n, _m: progress.append(n))
        assert progress == [2, 1]  # two chunks, each stored as it finished
        runner.evaluate(edited, [push])
        contexts = [f"Question: {r['question']}\nAnswer:" for r in ARC]
        options = [r["choices"]["text"] for r in ARC]
        for condition, edits in ((base, []), (edited, [push])):
            direct = direct_multiple_choice(tiny, contexts, options, interventions=edits)
            stored = store.query(
                "measurements", {"intervention": condition.intervention, "metric": "acc"}
            )
            by_item = {row["item"]: json.loads(row["detail"]) for row in stored}
            for i, mine in enumerate(direct):
                assert by_item[str(i)]["loglikelihoods"] == pytest.approx(
                    mine["loglikelihoods"], abs=1e-3
                )
        base_ll = json.loads(
            store.query("measurements", {"intervention": "base", "item": "0", "metric": "acc"})[0][
                "detail"
            ]
        )
        edit_ll = json.loads(
            store.query(
                "measurements", {"intervention": edited.intervention, "item": "0", "metric": "acc"}
            )[0]["detail"]
        )
        assert base_ll["loglikelihoods"] != pytest.approx(edit_ll["loglikelihoods"], abs=1e-3)
        progress.clear()
        runner.evaluate(base, [], on_progress=lambda _t, n, _m: progress.append(n))
        assert progress == []  # everything was already stored
        results = {r.metric: r for r in runner.results(edited, base)}
        assert results["acc"].estimate.n == 3 and results["acc"].difference_vs_base is not None


def test_a_prompt_scope_gate_inside_lm_eval_decides_on_the_question_alone(
    tiny: LoadedModel, tmp_path: Path
) -> None:
    """lm-eval scores each choice in one forward over question + choice. The gate's condition
    is the activation of the first choice's first token after the first question: a causal gate
    fires there, on that choice alone; a prompt-scope gate is bound with each row's question
    length, so no question fires it and every item keeps the base model's numbers."""
    root = write_capability_data(tmp_path / "data")
    settings = CapabilitySettings(tasks=("arc_challenge",), limit=None, chunk=3, batch_size=4)
    contexts = [f"Question: {r['question']}\nAnswer:" for r in ARC]
    first = ARC[0]["choices"]["text"][0].split()[0]  # "an" of "an oven"
    ids = tiny.tokenizer(contexts[0] + " " + first, add_special_tokens=False)["input_ids"]
    point = HookPoint(0, "resid_post")
    with record(tiny.model, [point]) as found, torch.no_grad():
        tiny.model(input_ids=torch.tensor([ids]))
    act = found[point][0][0].float()
    vector = act[-1]
    n_context = len(tiny.tokenizer(contexts[0], add_special_tokens=False)["input_ids"])
    assert float((act[:n_context] @ vector / act[:n_context].norm(dim=-1)).max()) < (
        0.99 * vector.norm()
    )
    torch.manual_seed(0)
    push = AddDirection(torch.randn(tiny.d_model), layer=1, coeff=8.0)
    gate = DirectionGate(vector, 0, 0.99)
    with ResultStore(tmp_path / "r.sqlite") as store:
        runner = CapabilityRunner(tiny, store, settings, root, tmp_path / "work")

        def loglikelihoods(items: list) -> dict[str, list[float]]:
            key = store.intervention_id([i.to_dict() for i in items])
            runner.evaluate(Condition(tiny.weights_sha256, key, label=key), items)
            rows = store.query("measurements", {"intervention": key, "metric": "acc"})
            return {r["item"]: json.loads(r["detail"])["loglikelihoods"] for r in rows}

        base = loglikelihoods([])
        prompt = loglikelihoods([Gated(push, gate, scope="prompt")])
        token = loglikelihoods([Gated(push, gate)])
    for item, values in base.items():
        assert prompt[item] == pytest.approx(values, abs=1e-3)
    assert token["0"][0] != pytest.approx(base["0"][0], abs=1e-3)  # the choice fired it
    assert token["0"][1:] == pytest.approx(base["0"][1:], abs=1e-3)
