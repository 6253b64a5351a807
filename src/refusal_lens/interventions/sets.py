"""Applying interventions: the one context manager that installs editing hooks, the ordered
set results are keyed by, and what a batch binds (per-prompt latents, each row's padding, a
clean twin of every prompt for `retain`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..hooks import add_hooks
from . import registry
from .direction import AblateDirection, AddDirection
from .gated import Gated
from .latents import EditLatents, PerPromptLatents
from .patch import PatchLatents

Intervention = (
    AblateDirection | AddDirection | EditLatents | Gated | PatchLatents | PerPromptLatents
)


def from_dict(data: dict[str, Any], origin: str = "intervention") -> Intervention:
    """An intervention from its `to_dict()` (any registered kind; see `registry.reads`): every
    field is checked for its type first, so a hand-written one is a one-line error naming
    `origin` and the field."""
    made: Intervention = registry.read(data, origin)
    return made


@dataclass(frozen=True)
class InterventionSet:
    """An ordered list of interventions, applied together (hooks compose in list order)."""

    items: tuple[Intervention, ...] = field(default_factory=tuple)

    def to_dict(self) -> list[dict[str, Any]]:
        return [item.to_dict() for item in self.items]

    def label(self) -> str:
        return "+".join(item.kind for item in self.items) or "none"


def needs_twin(interventions: Sequence[Intervention] | InterventionSet) -> bool:
    """Whether a forward must carry a clean copy of every prompt (latent `retain`)."""
    items = interventions.items if isinstance(interventions, InterventionSet) else interventions
    return any(getattr(item, "needs_twin", False) for item in items)


def twin_logits(model: nn.Module, twin: bool, **kwargs: Any) -> torch.Tensor:
    """The logits of one forward, run as a twin batch when `twin` (latent `retain`): a clean
    copy of every row rides along, and only the edited rows' logits are returned."""
    if not twin:
        return model(**kwargs).logits
    rows = next(v.shape[0] for v in kwargs.values() if torch.is_tensor(v))
    doubled = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    return model(**doubled).logits[rows:]


def bind(
    interventions: Sequence[Intervention] | InterventionSet,
    texts: Sequence[str],
    attention_mask: torch.Tensor | None = None,
    prompt_lengths: Sequence[int] | None = None,
) -> list[Intervention]:
    """Interventions for one batch: per-prompt ones bound to its prompts, and latent edits
    and gates told each row's left padding (from a left-padded `attention_mask`). Where the
    forward holds more than each prompt (a completion after it, teacher-forced),
    `prompt_lengths` gives each row's prompt tokens: a prompt-scope gate decides on those.
    Right-padded rows (lm-eval's) pass `prompt_lengths` and no mask: their padding is 0."""
    items = interventions.items if isinstance(interventions, InterventionSet) else interventions
    bound = [
        item.for_batch(texts) if isinstance(item, PerPromptLatents) else item for item in items
    ]
    if attention_mask is None and prompt_lengths is None:
        return bound
    if attention_mask is not None:
        pads = tuple(int(n) for n in (attention_mask == 0).sum(dim=1).tolist())
    else:
        pads = (0,) * len(prompt_lengths or ())
    lengths = None if prompt_lengths is None else tuple(int(n) for n in prompt_lengths)
    if lengths is not None and len(lengths) != len(pads):
        raise ValueError(f"{len(lengths)} prompt lengths for a batch of {len(pads)} rows")
    # every latent edit is told the padding: `from_position` counts from each prompt's start,
    # and the attention-sink threshold is a median over each prompt's own tokens
    return [
        replace(item, left_pad=pads)
        if isinstance(item, EditLatents)
        else item.for_batch(pads, lengths)
        if isinstance(item, Gated)
        else item
        for item in bound
    ]


@contextmanager
def apply(
    model: nn.Module, interventions: Sequence[Intervention] | InterventionSet = ()
) -> Iterator[None]:
    """Apply interventions to every forward pass in the block (prompt and generated tokens)."""
    items = interventions.items if isinstance(interventions, InterventionSet) else interventions
    hooks = [hook for item in items for hook in item.hooks(model)]
    with add_hooks(model, hooks):
        yield
