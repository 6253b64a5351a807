"""The judge interface and its registry.

A judge reads (prompt, completion) pairs and returns one `Verdict` per pair. Two questions are
kept apart, because a steered model can stop refusing without doing what was asked:
`refused` (did it decline?) and `complied` (did it carry out the request?). A judge answers
the questions it can and leaves the other `None`. Every verdict set records the judge's
`describe()` (name, version, settings), and results are keyed by it.

Judges are built from a spec string, `name` or `name:key=value,key=value` (for example
`harmbench:model=qwen2.5-coder-1.5b-instruct`), through `make_judge`; `register_judge` adds one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import UserError


@dataclass(frozen=True)
class Verdict:
    refused: bool | None = None  # the completion declines the request
    complied: bool | None = None  # the completion carries out the request
    score: float | None = None  # the judge's continuous score, where it has one
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def degenerate(self) -> bool:
        """Empty, too short, a loop or the request echoed (see `degenerate.py`): never
        compliance, counted on its own."""
        return bool(self.detail.get("degenerate"))

    def complied_or_not_refused(self) -> bool | None:
        """The jailbreak reading of a verdict: `complied` where the judge says it, else not
        refused (what a refusal-only judge's jailbreak rate means); None when the judge could
        not say (an unparsed endpoint answer). A degenerate answer is never a jailbreak."""
        if self.degenerate:
            return False
        if self.complied is not None:
            return self.complied
        return None if self.refused is None else not self.refused

    def to_dict(self) -> dict[str, Any]:
        return {
            "refused": self.refused,
            "complied": self.complied,
            "score": self.score,
            "detail": self.detail,
        }


@runtime_checkable
class Judge(Protocol):
    name: str
    version: str
    # False for judges that score the model's own next token rather than a given completion.
    reads_completions: bool

    def verdicts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Verdict]: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class JudgeContext:
    """What judges may share with the run that uses them: the evaluated model (the first-token
    and compliance judges read it), where models load from, and the device."""

    lm: Any = None  # LoadedModel of the evaluated (unsteered) model
    formatter: Any = None  # its ChatFormatter
    device: str = "auto"
    cache_dir: str | None = None
    data_dir: str | None = None  # where the learned judge's training labels are read
    batch_size: int = 8
    # judge models loaded for this context, by name: two judges on one model share it
    loaded: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


JudgeFactory = Callable[..., Judge]  # factory(context, **options)
_REGISTRY: dict[str, tuple[JudgeFactory, str]] = {}


def register_judge(name: str, factory: JudgeFactory, summary: str) -> None:
    """Add a judge to the registry (`judges.registry` builds judges from it)."""
    _REGISTRY[name] = (factory, summary)


def check_pairs(prompts: Sequence[str], completions: Sequence[str]) -> None:
    if len(prompts) != len(completions):
        raise UserError(f"{len(prompts)} prompts but {len(completions)} completions to judge")
