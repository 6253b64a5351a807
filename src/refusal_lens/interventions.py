"""Interventions as data: small JSON-serialisable edits, applied through one context manager.

`apply(model, interventions)` is the only place editing hooks are installed. Every result stores
the `to_dict()` of the interventions that produced it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file
from torch import nn

from .errors import UserError
from .hooks import HookFn, HookPoint, add_hooks, check_layer, decoder_layers


def vector_sha256(vector: torch.Tensor) -> str:
    """Content hash of a vector: results are keyed by what was applied, not by a file name."""
    return hashlib.sha256(vector.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def _vector_to_json(vector: torch.Tensor, source: str | None) -> dict[str, Any]:
    if source is not None:
        return {"file": source, "sha256": vector_sha256(vector)}
    return {"values": [float(x) for x in vector.float().tolist()]}


def _vector_from_json(data: dict[str, Any]) -> tuple[torch.Tensor, str | None]:
    if "file" in data:
        path = Path(data["file"])
        if not path.is_file():
            raise UserError(f"direction file {path} does not exist; rerun `refusal-lens direction`")
        try:
            return load_file(str(path))["direction"], str(path)
        except Exception as exc:  # safetensors raises its own error types
            raise UserError(f"direction file {path} is unreadable ({exc}); recompute it") from exc
    return torch.tensor(data["values"], dtype=torch.float32), None


@dataclass(frozen=True)
class AblateDirection:
    """Directional ablation `h <- h - (h . d) d` (d unit) at every layer and position.

    Applied where Arditi et al. do: the stream entering every block and the outputs of every
    attention and MLP sub-layer, so no component along d is ever written to the stream.
    """

    direction: torch.Tensor
    source: str | None = None
    kind: ClassVar[str] = "ablate_direction"

    def hooks(self, model: nn.Module) -> list[tuple[HookPoint, HookFn]]:
        unit = _unit(self.direction, model)
        cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

        def ablate(act: torch.Tensor, _point: HookPoint) -> torch.Tensor:
            d = cache.setdefault((act.device, act.dtype), unit.to(act.device))
            act32 = act.float()
            return (act32 - (act32 @ d).unsqueeze(-1) * d).to(act.dtype)

        n_layers = len(decoder_layers(model))
        return [
            (HookPoint(layer, kind), ablate)
            for layer in range(n_layers)
            for kind in ("resid_pre", "attn_out", "mlp_out")
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "direction": _vector_to_json(self.direction, self.source)}


@dataclass(frozen=True)
class AddDirection:
    """Activation addition `h <- h + coeff * r` on the residual stream after block `layer`."""

    direction: torch.Tensor
    layer: int
    coeff: float = 1.0
    source: str | None = None
    kind: ClassVar[str] = "add_direction"

    def hooks(self, model: nn.Module) -> list[tuple[HookPoint, HookFn]]:
        check_layer(self.layer, len(decoder_layers(model)))
        vector = _checked(self.direction, model) * self.coeff

        def add(act: torch.Tensor, _point: HookPoint) -> torch.Tensor:
            return act + vector.to(act.device, act.dtype)

        return [(HookPoint(self.layer, "resid_post"), add)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "coeff": self.coeff,
            "direction": _vector_to_json(self.direction, self.source),
        }


Intervention = AblateDirection | AddDirection


@dataclass(frozen=True)
class InterventionSet:
    """An ordered list of interventions, applied together (hooks compose in list order)."""

    items: tuple[Intervention, ...] = field(default_factory=tuple)

    def to_dict(self) -> list[dict[str, Any]]:
        return [item.to_dict() for item in self.items]

    def label(self) -> str:
        return "+".join(item.kind for item in self.items) or "none"


def from_dict(data: dict[str, Any]) -> Intervention:
    kind = data.get("kind")
    if kind == AblateDirection.kind:
        vector, source = _vector_from_json(data["direction"])
        return AblateDirection(vector, source)
    if kind == AddDirection.kind:
        vector, source = _vector_from_json(data["direction"])
        return AddDirection(vector, int(data["layer"]), float(data.get("coeff", 1.0)), source)
    raise UserError(f"unknown intervention kind {kind!r}; known: ablate_direction, add_direction")


@contextmanager
def apply(
    model: nn.Module, interventions: Sequence[Intervention] | InterventionSet = ()
) -> Iterator[None]:
    """Apply interventions to every forward pass in the block (prompt and generated tokens)."""
    items = interventions.items if isinstance(interventions, InterventionSet) else interventions
    hooks = [hook for item in items for hook in item.hooks(model)]
    with add_hooks(model, hooks):
        yield


def _checked(vector: torch.Tensor, model: nn.Module) -> torch.Tensor:
    d_model = int(model.config.hidden_size)
    if vector.ndim != 1 or vector.shape[0] != d_model:
        raise UserError(
            f"direction has shape {tuple(vector.shape)} but the model's d_model is "
            f"{d_model}; use a direction computed for this model"
        )
    if not torch.isfinite(vector).all():
        raise UserError("direction contains NaN or inf values; recompute it")
    return vector.float()


def _unit(vector: torch.Tensor, model: nn.Module) -> torch.Tensor:
    checked = _checked(vector, model)
    norm = checked.norm()
    if norm == 0:
        raise UserError("direction has zero norm; it cannot be ablated")
    return checked / norm
