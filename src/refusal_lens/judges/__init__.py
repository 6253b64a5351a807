"""Refusal judges: substring matching on completions, first-token refusal score on logits."""

from .first_token import RefusalTokens, refusal_scores
from .substring import REFUSAL_PHRASES, SubstringJudge

__all__ = ["REFUSAL_PHRASES", "RefusalTokens", "SubstringJudge", "refusal_scores"]
