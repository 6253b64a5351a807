"""Judges: one interface (`Judge.verdicts(prompts, completions)`), a registry built from spec
strings (`make_judge("harmbench:model=...")`), and the built-in judges."""

from ..scoring import RefusalTokens, refusal_scores
from .base import Judge, JudgeContext, Verdict, register_judge
from .first_token import FirstTokenJudge
from .registry import check_judge_spec, judge_names, make_judge, parse_judge_spec
from .substring import REFUSAL_PHRASES, SubstringJudge

__all__ = [
    "REFUSAL_PHRASES",
    "FirstTokenJudge",
    "Judge",
    "JudgeContext",
    "RefusalTokens",
    "SubstringJudge",
    "Verdict",
    "check_judge_spec",
    "judge_names",
    "make_judge",
    "parse_judge_spec",
    "refusal_scores",
    "register_judge",
]
