"""Refusal rate of a model (under any intervention) on a prompt set, with a bootstrap interval.

Completions are written to the run folder as each batch finishes (`completions/NAME.jsonl`,
one record per prompt); a rerun with the same key generates only what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..data import PromptSet
from ..generation import generate
from ..interventions import Intervention, InterventionSet
from ..judges import SubstringJudge
from ..models import ChatFormatter, LoadedModel
from ..runs import RunDir, stable_hash
from .statistics import Estimate, bootstrap_mean


@dataclass
class RefusalResult:
    dataset: str
    condition: str
    rate: Estimate
    refusals: list[bool]
    judge: dict[str, str]
    max_new_tokens: int
    interventions: list[dict[str, Any]]
    completions_file: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "condition": self.condition,
            "refusal_rate": self.rate.mean,
            "ci95": [self.rate.low, self.rate.high],
            "n": self.rate.n,
            "judge": self.judge,
            "max_new_tokens": self.max_new_tokens,
            "interventions": self.interventions,
            "completions_file": self.completions_file,
        }


def measure_refusal(
    lm: LoadedModel,
    formatter: ChatFormatter,
    prompts: PromptSet,
    *,
    condition: str = "base",
    interventions: Sequence[Intervention] | InterventionSet = (),
    judge: SubstringJudge | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    run: RunDir | None = None,
    seed: int = 0,
) -> RefusalResult:
    judge = judge or SubstringJudge()
    items = interventions.items if isinstance(interventions, InterventionSet) else interventions
    described = [item.to_dict() for item in items]
    texts = prompts.texts()
    key = stable_hash(
        {
            "model": lm.weights_sha256,
            "dtype": str(lm.dtype),
            "prompts": texts,
            "interventions": described,
            "max_new_tokens": max_new_tokens,
            "system": formatter.system,
        }
    )
    name = f"completions/{prompts.name}.{condition}.jsonl"
    completions: dict[int, str] = {}
    if run:
        completions = {r["index"]: r["completion"] for r in run.read_jsonl(name, key)}
    missing = [i for i in range(len(texts)) if i not in completions]
    if missing:

        def write(batch_indices: list[int], outputs: list[str]) -> None:
            records = []
            for local, text in zip(batch_indices, outputs, strict=True):
                index = missing[local]
                completions[index] = text
                records.append(
                    {
                        "index": index,
                        "prompt": texts[index],
                        "completion": text,
                        "refusal": judge.is_refusal(text),
                    }
                )
            if run:
                run.append_jsonl(name, key, records)

        generate(
            lm,
            formatter,
            [texts[i] for i in missing],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            interventions=items,
            on_batch=write,
            desc=f"{prompts.name} ({condition})",
        )
    refusals = judge.judge([completions[i] for i in range(len(texts))])
    return RefusalResult(
        prompts.name,
        condition,
        bootstrap_mean(refusals, seed=seed),
        refusals,
        judge.describe(),
        max_new_tokens,
        described,
        str(run.path / name) if run else None,
    )
