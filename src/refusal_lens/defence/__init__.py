"""Defences: strengthen refusal only where harm is present, and measure what that costs.

`gates` scores how a gate (harm latents, a probe on latents, or a condition direction)
separates harmful from harmless prompts and sets its threshold on validation prompts.
"""

from .gates import TriggerRates, prompt_scores, threshold_at, trigger_rates

__all__ = ["TriggerRates", "prompt_scores", "threshold_at", "trigger_rates"]
