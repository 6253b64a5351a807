"""The learned judge on the real data: the packaged all-MiniLM-L6-v2 fine-tuned on a sample of
GPTFuzz's human labels, judged on GPTFuzz questions it never saw and on the labelled steered
answers of the default model (the packaged `steered` set). A small, honest size for CI: the full
judge (6,160 rows, 2 epochs) is `refusal-lens train-judge`, measured in docs/results.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from refusal_lens.data.labelled import load_labelled
from refusal_lens.evaluation.agreement import agreement_row
from refusal_lens.judges import make_judge
from refusal_lens.judges.learned import LearnedJudgeSettings, train

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_judge(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    pytest.importorskip("sentence_transformers")
    settings = LearnedJudgeSettings(limit=1024, epochs=2, max_tokens=128, learning_rate=1e-4)
    cache = tmp_path_factory.mktemp("judge-cache")
    return train(settings, shared_data, cache=cache, progress=False)


def _accuracy(folder: Path, rows: list) -> dict:
    judge = make_judge(f"learned:folder={folder}")
    verdicts = judge.verdicts([r.prompt for r in rows], [r.response for r in rows])
    said = [v.complied_or_not_refused() for v in verdicts]
    return agreement_row(judge.describe(), "set", [r.complied for r in rows], said)


def test_learned_judge_beats_the_majority_on_held_out_gptfuzz_questions(
    small_judge: Path, shared_data: Path
) -> None:
    rows = load_labelled("gptfuzz", shared_data, limit=300, seed=1)
    assert not {r.source for r in rows} & {f"gptfuzz/train/q{q}" for q in range(80)}
    row = _accuracy(small_judge, rows)
    majority = max(row["gold_complied_rate"], 1 - row["gold_complied_rate"])
    assert row["accuracy_ci95"][0] > majority, row
    assert row["kappa"] > 0.4, row


def test_learned_judge_reads_steered_answers_better_than_the_substring_judge(
    small_judge: Path,
) -> None:
    rows = load_labelled("steered")
    learned = _accuracy(small_judge, rows)
    substring = make_judge("substring")
    said = [
        v.complied_or_not_refused()
        for v in substring.verdicts([r.prompt for r in rows], [r.response for r in rows])
    ]
    keyword = agreement_row(substring.describe(), "set", [r.complied for r in rows], said)
    assert learned["accuracy"] > keyword["accuracy"], (learned, keyword)
