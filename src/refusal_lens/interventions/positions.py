"""Which tokens of a forward a latent edit touches: prompt or generated positions, a window of
the prompt, and the attention-sink tokens left alone.

A forward over more than one token is the prompt; one token is a decoding step. Rows are left
padded; each row's padding is bound per batch (`bind`), so positions count from each prompt's
own start and the sink threshold is a median over each prompt's own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError

LATENT_POSITIONS = ("all", "prompt", "generated")


@dataclass(frozen=True)
class TokenPositions:
    """`positions`: `all` (prompt and every generated token), `prompt` (the forward over the
    prompt only), `generated` (decoding steps only); `last_prompt_tokens=n`: only the last n
    prompt tokens; `from_position=p`: only the prompt tokens from index p of the formatted
    prompt on (template tokens count, padding does not). Attention-sink tokens (norm above
    `sink_factor` x the median of the prompt's tokens) were never in an SAE's training data and
    stay untouched unless `edit_sinks`."""

    positions: str = "all"
    last_prompt_tokens: int | None = None
    from_position: int | None = None
    edit_sinks: bool = False
    sink_factor: float = 10.0

    def __post_init__(self) -> None:
        if self.positions not in LATENT_POSITIONS:
            raise UserError(
                f"latent edit positions {self.positions!r} unknown; use one of "
                + ", ".join(LATENT_POSITIONS)
            )
        if self.from_position is not None and self.from_position < 0:
            raise UserError(
                f"from_position {self.from_position} is negative; count from the prompt's "
                "start, or use last_prompt_tokens to count from its end"
            )

    def mask(
        self,
        act: torch.Tensor,
        left_pad: tuple[int, ...] | None,
        state: dict[str, torch.Tensor],
    ) -> torch.Tensor | None:
        """`[batch, seq]`: True at the tokens of this forward to edit; None when it edits none
        (a decoding step of a prompt-only edit, or the prompt of a generated-only one).
        `state` carries each prompt's sink threshold from its prompt into its decoding steps."""
        is_prompt = act.shape[1] > 1
        if (self.positions == "prompt" and not is_prompt) or (
            self.positions == "generated" and is_prompt
        ):
            return None
        keep = torch.ones(act.shape[:2], dtype=torch.bool, device=act.device)
        if is_prompt and self.last_prompt_tokens is not None:
            keep[:, : max(0, act.shape[1] - self.last_prompt_tokens)] = False
        if is_prompt and self.from_position is not None:
            keep &= self._from_position_mask(act, row_pads(left_pad, act))
        if not self.edit_sinks:
            norms = act.float().norm(dim=-1)
            reference = state.get("median")
            if is_prompt or reference is None or reference.shape[0] != act.shape[0]:
                # per prompt, over its own tokens: padding and other rows do not count
                reference = row_median(norms, unpadded_mask(act, row_pads(left_pad, act)))
                state["median"] = reference
            keep &= norms <= self.sink_factor * reference.unsqueeze(1)
        return keep

    def _from_position_mask(self, act: torch.Tensor, pads: tuple[int, ...] | None) -> torch.Tensor:
        """`[batch, seq]`: True from token `from_position` of each (left-padded) prompt on."""
        if pads is None:
            if act.shape[0] != 1:
                raise UserError(
                    "from_position needs each prompt's padding; generate through "
                    "refusal_lens.generation.generate, or bind(interventions, prompts, mask)"
                )
            pads = (0,)
        assert self.from_position is not None
        start = torch.tensor(pads, device=act.device).unsqueeze(1) + self.from_position
        return torch.arange(act.shape[1], device=act.device).unsqueeze(0) >= start


def row_pads(left_pad: tuple[int, ...] | None, act: torch.Tensor) -> tuple[int, ...] | None:
    """Each row's left padding as bound for this batch (twin batches: both halves)."""
    if left_pad is None:
        return None
    pads = left_pad
    if act.shape[0] == 2 * len(pads):  # a twin batch (retain): clean rows, then edited
        pads = pads + pads
    if act.shape[0] != len(pads):
        raise UserError(f"padding was bound for {len(pads)} prompts, the batch has {act.shape[0]}")
    return pads


def unpadded_mask(act: torch.Tensor, pads: tuple[int, ...] | None) -> torch.Tensor:
    """`[batch, seq]`: True at each row's own tokens (every token when no padding is known)."""
    if pads is None:
        return torch.ones(act.shape[:2], dtype=torch.bool, device=act.device)
    start = torch.tensor(pads, device=act.device).unsqueeze(1)
    return torch.arange(act.shape[1], device=act.device).unsqueeze(0) >= start


def row_median(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`[batch]`: the median of each row's values where `valid` (a row with none: all)."""
    valid = valid | ~valid.any(dim=1, keepdim=True)
    masked = torch.where(valid, values, torch.full_like(values, float("nan")))
    return masked.nanmedian(dim=1).values
