"""Defences: strengthen refusal only where harm is present, and measure what that costs.

`arms` builds the defences a study compares as interventions (refusal latents set up, the
direction added, each gated on harm latents, a probe on them, or the direction itself);
`gates` scores how a gate separates harmful from harmless prompts and sets its threshold on
validation prompts; `calibrate` chooses a defence's strength on validation attacks; `sweep`
composes a prompt-scope gated defence at every threshold from answers already judged;
`markdown` writes a study's summary as a report.
"""

from . import arms
from .gates import (
    TriggerRates,
    gates_prompt_scores,
    latent_features,
    layer_features,
    prompt_scores,
    threshold_at,
    trigger_rates,
)

__all__ = [
    "TriggerRates",
    "arms",
    "gates_prompt_scores",
    "latent_features",
    "layer_features",
    "prompt_scores",
    "threshold_at",
    "trigger_rates",
]
