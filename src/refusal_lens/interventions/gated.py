"""Conditional interventions: an edit applied only where a gate fires.

A defence that strengthens refusal everywhere also refuses safe requests (O'Brien et al.
2024); conditional activation steering (CAST, Lee et al. 2025) applies the edit only where a
condition holds. `Gated(edit, gate)` does that for any other intervention. The gate scores
every token at its layer: a weighted sum of SAE latents plus a bias (`LatentGate`: harm
latents, or a linear probe on them), or the cosine of the residual stream with a condition
vector (`DirectionGate`, the dense baseline, CAST-style). Its `scope` says where the edit goes:

- `token` (causal): a row's gate fires at the first of its tokens whose score reaches the
  threshold and stays fired for the rest of the prompt and the whole answer (a running maximum
  over the row's own tokens, carried across decoding steps); the edit changes only the tokens
  from there on;
- `prompt` (score the prompt, then edit all of it): a row fires when its score reaches the
  threshold at any of its prompt's tokens, and then the edit changes every token of that row,
  the prompt's from its first and every answer token; the answer's own tokens never change
  the decision. A prompt's forward holds the whole prompt, and a teacher-forced forward (prompt
  then completion) is told each row's prompt length (`bind(..., prompt_lengths=...)`), so KL
  and likelihood measures see what generation does.

The gate must sit at or before every layer the edit changes: it is read in the same forward,
before the edit runs (at one shared layer, the gate reads the activation the edit then changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .. import schema
from ..errors import UserError
from ..hooks import HookFn, HookPoint, check_layer, decoder_layers
from .latents import saes_from_dict
from .positions import row_pads, unpadded_mask
from .registry import read, reads
from .vectors import VECTOR_SCHEMA, checked_vector, vector_from_json, vector_to_json

if TYPE_CHECKING:
    from ..saes import SAESet


GATE_POOLS = ("max", "mean")


@dataclass(frozen=True)
class LatentGate:
    """Score `bias + sum_i weights[i] * f_i` over SAE latents `f_i` (weights default to 1:
    the harm latents' summed activation; a probe's weights and bias give its logit). `pool`
    says what a prompt's score is: `max`, the largest of its tokens' scores (any scope), or
    `mean`, the mean of its tokens' scores (prompt scope only: it needs the whole prompt)."""

    saes: SAESet
    latents: tuple[tuple[int, int], ...]
    threshold: float
    weights: tuple[float, ...] | None = None
    bias: float = 0.0
    pool: str = "max"
    kind: ClassVar[str] = "latents"

    def __post_init__(self) -> None:
        if self.pool not in GATE_POOLS:
            raise UserError(f"a latent gate pools by max or mean, not {self.pool!r}")
        if not self.latents:
            raise UserError("a latent gate needs at least one latent")
        if self.weights is not None and len(self.weights) != len(self.latents):
            raise UserError(
                f"a latent gate has {len(self.latents)} latents and {len(self.weights)} weights"
            )
        if not all(math.isfinite(x) for x in (self.threshold, self.bias, *(self.weights or ()))):
            raise UserError("a latent gate's threshold, weights and bias must be finite numbers")

    @property
    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.latents})

    def parts(self, model: nn.Module) -> list[tuple[HookPoint, Any]]:
        """Per layer: `score(act) -> [batch, seq]`, this layer's share of the score."""
        weights = self.weights or tuple(1.0 for _ in self.latents)
        out = []
        for layer in self.layers:
            check_layer(layer, len(decoder_layers(model)))
            point = HookPoint(layer, "resid_post")
            sae = self.saes[point]
            sae.to(next(decoder_layers(model)[layer].parameters()).device)
            chosen = [
                (i, w) for (at, i), w in zip(self.latents, weights, strict=True) if at == layer
            ]
            index = torch.tensor([i for i, _ in chosen], dtype=torch.long)
            weight = torch.tensor([w for _, w in chosen], dtype=torch.float32)

            def score(
                act: torch.Tensor, sae: Any = sae, index=index, weight=weight
            ) -> torch.Tensor:
                # a half-precision model's activations go through the SAE's copy in their dtype
                half = act.dtype in (torch.bfloat16, torch.float16)
                encoder = sae.cast(act.dtype) if half else sae
                values = encoder.encode_latents(act, index.to(act.device)).float()
                return values @ weight.to(act.device)

            out.append((point, score))
        return out

    def prompt_score(self, values: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """`[batch]`: the score's maximum (or mean) over each row's `window` tokens
        (`values`: the sum of the parts' `[batch, seq]` outputs)."""
        if self.pool == "max":
            return _window_max(values + self.bias, window)
        return _window_mean(values, window) + self.bias

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "saes": {"path": self.saes.path, "fingerprint": self.saes.fingerprint()},
            "latents": [list(pair) for pair in self.latents],
            "weights": None if self.weights is None else list(self.weights),
            "bias": self.bias,
            "threshold": self.threshold,
        }
        if self.pool != "max":  # the default stays out: stored keys unchanged
            out["pool"] = self.pool
        return out


@dataclass(frozen=True)
class DirectionGate:
    """Score the cosine of the residual stream after block `layer` with `vector` (a condition
    vector, e.g. harmful minus harmless means): the dense, CAST-style gate. `pool` says what a
    prompt's score is: `max`, the largest of its tokens' cosines (any scope), or `mean`, the
    cosine of the mean of its tokens' activations, as CAST checks its condition (prompt scope
    only: it needs the whole prompt)."""

    vector: torch.Tensor
    layer: int
    threshold: float
    source: str | None = None
    pool: str = "max"
    kind: ClassVar[str] = "direction"

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold):
            raise UserError("a direction gate's threshold must be a finite number")
        if self.pool not in GATE_POOLS:
            raise UserError(f"a direction gate pools by max or mean, not {self.pool!r}")

    @property
    def layers(self) -> list[int]:
        return [self.layer]

    def parts(self, model: nn.Module) -> list[tuple[HookPoint, Any]]:
        check_layer(self.layer, len(decoder_layers(model)))
        unit = checked_vector(self.vector, model).float()
        unit = unit / unit.norm()

        def score(act: torch.Tensor) -> torch.Tensor:
            x = act.float()
            return (x @ unit.to(act.device)) / x.norm(dim=-1).clamp_min(1e-6)

        def activation(act: torch.Tensor) -> torch.Tensor:  # pooled later: `prompt_score`
            return act.float()

        return [(HookPoint(self.layer, "resid_post"), score if self.pool == "max" else activation)]

    def prompt_score(self, values: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """`[batch]`: the largest cosine over each row's `window` tokens (`max`), or the
        cosine of their mean activation (`mean`; `values` are then the activations)."""
        if self.pool == "max":
            return _window_max(values, window)
        mean = _window_mean(values, window)
        unit = self.vector.float().to(values.device)
        unit = unit / unit.norm()
        return (mean @ unit) / mean.norm(dim=-1).clamp_min(1e-6)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "direction": vector_to_json(self.vector, self.source),
            "layer": self.layer,
            "threshold": self.threshold,
        }
        if self.pool != "max":  # the default stays out: stored keys unchanged
            out["pool"] = self.pool
        return out


def _window_max(values: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """`[batch]`: each row's maximum of `values` over its `window` tokens."""
    return values.masked_fill(~window, -math.inf).max(dim=1).values


def _window_mean(values: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """`[batch, ...]`: each row's mean of `values` (`[batch, seq, ...]`) over its `window`
    tokens."""
    weight = window.float().reshape(*window.shape, *([1] * (values.dim() - 2)))
    return (values * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


Gate = LatentGate | DirectionGate
GATE_SCOPES = ("token", "prompt")


@dataclass(frozen=True)
class Gated:
    """`edit` applied only where `gate` has fired for a row, from the firing token on (`scope`
    token) or at every token of a row whose prompt fired it (`prompt`; see the module's
    docstring). `left_pad` (each row's padding) and `prompt_lengths` (each row's prompt tokens,
    where a forward also holds a completion) are bound per batch (`bind`)."""

    edit: Any  # an Intervention (any kind with hooks and to_dict)
    gate: Gate
    scope: str = "token"
    left_pad: tuple[int, ...] | None = None
    prompt_lengths: tuple[int, ...] | None = None
    kind: ClassVar[str] = "gated"

    def __post_init__(self) -> None:
        if self.scope not in GATE_SCOPES:
            raise UserError(
                f"gate scope {self.scope!r} unknown; use token (from the firing token on) or "
                "prompt (the whole row once its prompt fires)"
            )
        if self.gate.pool != "max" and self.scope != "prompt":
            raise UserError(
                "a gate pooled over the prompt (pool mean) decides once per prompt; give the "
                "gated edit scope prompt"
            )
        if getattr(self.edit, "needs_twin", False):
            raise UserError("a gated edit cannot use retain (a twin batch); drop retain")
        if not hasattr(self.edit, "hooks") or not hasattr(self.edit, "to_dict"):
            raise UserError(f"a gate wraps an intervention, not {type(self.edit).__name__}")

    def for_batch(
        self, pads: tuple[int, ...], prompt_lengths: tuple[int, ...] | None = None
    ) -> Gated:
        """This gated edit told each row's left padding (its inner edit too, where it has a
        use for it) and, where the forward goes on past the prompt, each prompt's length."""
        edit = self.edit
        if hasattr(edit, "left_pad"):
            edit = replace(edit, left_pad=pads)
        return replace(self, edit=edit, left_pad=pads, prompt_lengths=prompt_lengths)

    def hooks(self, model: nn.Module) -> list[tuple[HookPoint, HookFn]]:
        inner = self.edit.hooks(model)
        edited = sorted({point.layer for point, _ in inner})
        last = max(self.gate.layers)
        if edited and last > edited[0]:
            raise UserError(
                f"the gate reads layer {last} but the edit changes layer {edited[0]}, before it; "
                "gate on an earlier layer, or edit later ones"
            )
        state: dict[str, Any] = {}
        parts = self.gate.parts(model)
        hooks: list[tuple[HookPoint, HookFn]] = []
        for n, (point, score) in enumerate(parts):
            hooks.append((point, self._reader(score, state, final=n == len(parts) - 1)))
        hooks += [(point, self._masked(fn, state)) for point, fn in inner]
        return hooks

    def _reader(self, score: Any, state: dict[str, Any], *, final: bool) -> HookFn:
        threshold = self.gate.threshold
        bias = getattr(self.gate, "bias", 0.0)

        def read_gate(act: torch.Tensor, _point: HookPoint) -> None:
            rows = state.get("rows")
            if (
                self.scope == "prompt"
                and act.shape[1] == 1
                and rows is not None
                and rows.shape[0] == act.shape[0]
            ):  # a decoding step: the prompt has decided, nothing to score
                if final:
                    state["fired"] = rows.unsqueeze(1).expand(act.shape[:2])
                return None
            with torch.no_grad():
                part = score(act)
            if "partial" not in state or state["partial"].shape != part.shape:
                state["partial"] = part
            else:
                state["partial"] = state["partial"] + part
            if not final:
                return None
            values = state.pop("partial")
            pads = row_pads(self.left_pad, act)
            before = state.get("max")
            decoding = act.shape[1] == 1 and before is not None and before.shape[0] == act.shape[0]
            if self.scope == "prompt":  # the prompt's forward decides for the whole row
                state["max"] = self.gate.prompt_score(values, self._prompt_mask(act, pads))
                state["rows"] = state["max"].double() >= threshold  # exactly the float threshold
                state["fired"] = state["rows"].unsqueeze(1).expand(act.shape[:2])
                return None
            valid = unpadded_mask(act, pads)
            total = values + bias
            total = torch.where(valid, total, torch.full_like(total, -math.inf))
            running = total.cummax(dim=1).values
            if decoding:
                running = torch.maximum(running, before.unsqueeze(1))
            state["max"] = running[:, -1]
            state["fired"] = running.double() >= threshold  # exactly the float threshold
            return None

        return read_gate

    def _prompt_mask(self, act: torch.Tensor, pads: tuple[int, ...] | None) -> torch.Tensor:
        """`[batch, seq]`: True at each row's prompt tokens (all its own tokens, unless the
        forward was bound with prompt lengths because it goes on past them)."""
        if self.prompt_lengths is None:
            return unpadded_mask(act, pads)
        lengths = self.prompt_lengths
        if len(lengths) != act.shape[0]:
            raise UserError(
                f"prompt lengths were bound for {len(lengths)} prompts, the batch has "
                f"{act.shape[0]}"
            )
        start = torch.tensor(pads or (0,) * len(lengths), device=act.device).unsqueeze(1)
        end = start + torch.tensor(lengths, device=act.device).unsqueeze(1)
        position = torch.arange(act.shape[1], device=act.device).unsqueeze(0)
        return (position >= start) & (position < end)

    @staticmethod
    def _masked(fn: HookFn, state: dict[str, Any]) -> HookFn:
        def masked(act: torch.Tensor, point: HookPoint) -> torch.Tensor | None:
            fired = state.get("fired")
            if fired is None or fired.shape != act.shape[:2]:
                raise UserError(
                    "a gated edit ran before its gate in this forward; keep the gate at or "
                    "before the edit's layers"
                )
            if not fired.any():
                return None
            edited = fn(act, point)
            if edited is None:
                return None
            return torch.where(fired.unsqueeze(-1), edited, act)

        return masked

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind, "edit": self.edit.to_dict(), "gate": self.gate.to_dict()}
        if self.scope != "token":  # the default stays out: stored token-scope keys unchanged
            out["scope"] = self.scope
        return out


_LATENT_GATE = schema.Obj(
    required={
        "kind": schema.OneOf(("latents",)),
        "saes": schema.Obj(
            required={"path": schema.Str(nonempty=True)},
            optional={"fingerprint": schema.Maybe(schema.Str())},
        ),
        "latents": schema.ListOf(schema.LATENT_PAIR, min_len=1),
        "threshold": schema.Number(),
    },
    optional={
        "weights": schema.Maybe(schema.ListOf(schema.Number())),
        "bias": schema.Number(),
        "pool": schema.OneOf(GATE_POOLS),
    },
)
_DIRECTION_GATE = schema.Obj(
    required={
        "kind": schema.OneOf(("direction",)),
        "direction": VECTOR_SCHEMA,
        "layer": schema.INDEX,
        "threshold": schema.Number(),
    },
    optional={"pool": schema.OneOf(GATE_POOLS)},
)


def gate_from_dict(data: dict[str, Any], origin: str = "gate") -> Gate:
    schema.validate(data, schema.Obj(required={"kind": schema.OneOf(("latents", "direction"))}),
                    origin, "give the gate's kind: latents or direction")  # fmt: skip
    if data["kind"] == "latents":
        schema.validate(data, _LATENT_GATE, origin, "see Gated's to_dict()")
        weights = data.get("weights")
        return LatentGate(
            saes_from_dict(data["saes"], data["latents"]),
            tuple((int(a), int(b)) for a, b in data["latents"]),
            float(data["threshold"]),
            None if weights is None else tuple(float(w) for w in weights),
            float(data.get("bias", 0.0)),
            str(data.get("pool", "max")),
        )
    schema.validate(data, _DIRECTION_GATE, origin, "see Gated's to_dict()")
    vector, source = vector_from_json(data["direction"])
    return DirectionGate(
        vector, int(data["layer"]), float(data["threshold"]), source, str(data.get("pool", "max"))
    )


@reads(
    Gated.kind,
    schema.Obj(required={"edit": schema.Obj(required={"kind": schema.Str()}), "gate": schema.Obj(
        required={"kind": schema.Str()})}, optional={"scope": schema.OneOf(GATE_SCOPES)}),
)  # fmt: skip
def _gated_from_dict(data: dict[str, Any]) -> Gated:
    return Gated(
        read(data["edit"], "gated edit"),
        gate_from_dict(data["gate"]),
        str(data.get("scope", "token")),
    )
