"""How a gate separates harmful from harmless prompts, before it gates anything.

A gated edit (`interventions.Gated`) fires for a row at the first token whose score reaches the
threshold (scope token) or on its prompt as a whole (scope prompt). Either way, what decides
whether it has fired when the answer starts is the prompt's score: the maximum over the
prompt's own tokens, or the cosine of their mean activation for a CAST-style gate pooled by
mean. `prompt_scores` computes it (a forward that stops after
the gate's last layer), `threshold_at` picks the threshold that keeps the share of harmless
validation prompts that fire at a target, and `trigger_rates` says how often the gate fires on
harmless prompts (false triggers: the defence's cost lands there) and stays silent on harmful
ones (misses: the attacks it cannot stop), with bootstrap intervals.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UserError
from ..evaluation.statistics import Estimate, bootstrap_mean
from ..generation import length_sorted_batches
from ..hooks import HookPoint, add_hooks
from ..interventions.gated import GATE_POOLS, Gate, LatentGate, _window_mean
from ..models import ChatFormatter, LoadedModel
from ..saes import SAESet


class _Done(Exception):
    """Raised after the gate's last layer: nothing later is needed."""


def prompt_scores(
    lm: LoadedModel,
    formatter: ChatFormatter,
    gate: Gate,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
) -> torch.Tensor:
    """`[len(texts)]`: each prompt's gate score over its own tokens (the chat template's
    included, as the gated edit sees them): the maximum, which a token-scope gate has reached
    by the prompt's last token, or what the gate pools (`prompt_score`)."""
    return gates_prompt_scores(lm, formatter, [gate], texts, batch_size=batch_size)[0]


@torch.inference_mode()
def gates_prompt_scores(
    lm: LoadedModel,
    formatter: ChatFormatter,
    gates: Sequence[Gate],
    texts: Sequence[str],
    *,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """`prompt_scores` of several gates from one forward per batch (up to the deepest
    gate's layer), not one forward per gate."""
    parts, owner = [], []
    for g, gate in enumerate(gates):
        for part in gate.parts(lm.model):
            parts.append(part)
            owner.append(g)
    out: list[list[tuple[list[int], torch.Tensor]]] = [[] for _ in gates]
    for indices, values, mask in _part_batches(lm, formatter, parts, texts, batch_size):
        for g, gate in enumerate(gates):
            mine = [v for v, o in zip(values, owner, strict=True) if o == g]
            # the gate's own reduction over the prompt (a maximum, or CAST's mean pooling)
            out[g].append((indices, gate.prompt_score(sum(mine), mask.bool()).float().cpu()))
    return [_in_order(scores, torch.zeros(0)) for scores in out]


@torch.inference_mode()
def latent_features(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    latents: Sequence[tuple[int, int]],
    texts: Sequence[str],
    *,
    pool: str = "max",
    batch_size: int = 16,
) -> torch.Tensor:
    """`[len(texts), len(latents)]`: each latent's activation pooled (max or mean) over each
    prompt's own tokens (a probe gate's features; a one-latent gate's prompt score is its
    column)."""
    if not latents:
        raise UserError("latent features need at least one latent")
    # one part per latent (a one-latent gate), all read in one forward per batch
    one = [LatentGate(saes, (pair,), 0.0, pool=pool) for pair in latents]
    parts = [part for gate in one for part in gate.parts(lm.model)]
    out = [
        (
            indices,
            torch.stack(
                [g.prompt_score(v, mask.bool()) for g, v in zip(one, values, strict=True)], dim=-1
            )
            .float()
            .cpu(),
        )
        for indices, values, mask in _part_batches(lm, formatter, parts, texts, batch_size)
    ]
    return _in_order(out, torch.zeros(0, len(latents)))


@torch.inference_mode()
def layer_features(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    layer: int,
    texts: Sequence[str],
    *,
    pool: str = "mean",
    batch_size: int = 16,
) -> torch.Tensor:
    """`[len(texts), d_sae]`: every latent of the SAE at `layer`, pooled (max or mean) over
    each prompt's own tokens, as `latent_features` pools a chosen few (a sparse probe picks
    its latents from these)."""
    if pool not in GATE_POOLS:
        raise UserError(f"latent features pool by max or mean, not {pool!r}")
    point = HookPoint(layer, "resid_post")
    sae = saes[point]

    def encode(act: torch.Tensor) -> torch.Tensor:
        encoder = sae.cast(act.dtype) if act.dtype in (torch.bfloat16, torch.float16) else sae
        return encoder.encode(act).float()

    out = []
    batches = _part_batches(lm, formatter, [(point, encode)], texts, batch_size)
    for indices, (values,), mask in batches:
        window = mask.bool().to(values.device)
        if pool == "max":
            pooled = values.masked_fill(~window.unsqueeze(-1), -math.inf).amax(dim=1)
        else:  # the gates' own masked mean
            pooled = _window_mean(values, window)
        out.append((indices, pooled.cpu()))
    return _in_order(out, torch.zeros(0, sae.d_sae))


def _part_batches(
    lm: LoadedModel,
    formatter: ChatFormatter,
    parts: Sequence[tuple[Any, Any]],
    texts: Sequence[str],
    batch_size: int,
) -> Iterator[tuple[list[int], list[torch.Tensor], torch.Tensor]]:
    """Per batch of prompts of similar length (less padding: a jailbreak template beside a
    one-line request would pad the request to the template's length), longest first: the
    prompts' indices in `texts`, each part's `[batch, seq]` values (the forward stops once the
    last is read) and the attention mask. `_in_order` puts per-batch results back in order."""
    from tqdm.auto import tqdm

    last = max(point.layer for point, _ in parts)
    found: dict[int, torch.Tensor] = {}

    def reader(n: int, score: Any) -> Any:
        def read(act: torch.Tensor, point: Any) -> None:
            found[n] = score(act)
            if len(found) == len(parts) and point.layer == last:
                raise _Done

        return read

    hooks = [(point, reader(n, score)) for n, (point, score) in enumerate(parts)]
    batches = length_sorted_batches(texts, batch_size)
    for indices in tqdm(batches, desc="gate scores", unit="batch", disable=len(batches) < 2):
        batch = formatter.encode([texts[i] for i in indices]).to(lm.device)
        found.clear()
        try:
            with add_hooks(lm.model, hooks):
                lm.model(**batch.forward_kwargs())
        except _Done:
            pass
        yield indices, [found[n] for n in range(len(parts))], batch.attention_mask


def _in_order(
    pieces: Sequence[tuple[list[int], torch.Tensor]], empty: torch.Tensor
) -> torch.Tensor:
    """Per-batch rows (indices, values) stacked back in the prompts' own order."""
    if not pieces:
        return empty
    values = torch.cat([v for _, v in pieces])
    order = torch.tensor([i for indices, _ in pieces for i in indices])
    out = torch.empty_like(values)
    out[order] = values
    return out


def threshold_at(harmless: torch.Tensor, false_trigger: float) -> float:
    """The lowest threshold at which at most `false_trigger` of the harmless prompts fire
    (a prompt fires when its score reaches the threshold)."""
    if not 0 <= false_trigger < 1:
        raise UserError(f"a false-trigger rate is in [0, 1), got {false_trigger}")
    if harmless.numel() == 0:
        raise UserError("a gate's threshold needs harmless validation prompts; none were given")
    ordered = harmless.float().sort(descending=True).values
    allowed = math.floor(false_trigger * ordered.numel())
    return float(torch.nextafter(ordered[allowed], torch.tensor(math.inf)))


@dataclass(frozen=True)
class TriggerRates:
    threshold: float
    false_trigger: Estimate  # harmless prompts on which the gate fires
    miss: Estimate  # harmful prompts on which it does not

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "false_trigger": self.false_trigger.entry(),
            "miss": self.miss.entry(),
        }


def trigger_rates(
    threshold: float, harmful: torch.Tensor, harmless: torch.Tensor, *, seed: int = 0
) -> TriggerRates:
    """How often a gate at `threshold` fires on harmless prompts and stays silent on harmful
    ones, each with a 95% bootstrap interval."""
    fired = (harmless.double() >= threshold).float().tolist()
    silent = (harmful.double() < threshold).float().tolist()
    return TriggerRates(
        threshold, bootstrap_mean(fired, seed=seed), bootstrap_mean(silent, seed=seed)
    )
