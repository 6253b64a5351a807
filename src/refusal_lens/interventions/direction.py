"""Interventions with a direction: ablate it everywhere, or add it at one layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .. import schema
from ..hooks import HookFn, HookPoint, check_layer, decoder_layers
from .registry import reads
from .vectors import (
    VECTOR_SCHEMA,
    checked_vector,
    unit_vector,
    vector_from_json,
    vector_to_json,
)


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
        unit = unit_vector(self.direction, model)
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
        return {"kind": self.kind, "direction": vector_to_json(self.direction, self.source)}


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
        vector = checked_vector(self.direction, model) * self.coeff

        def add(act: torch.Tensor, _point: HookPoint) -> torch.Tensor:
            return act + vector.to(act.device, act.dtype)

        return [(HookPoint(self.layer, "resid_post"), add)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "coeff": self.coeff,
            "direction": vector_to_json(self.direction, self.source),
        }


@reads(AblateDirection.kind, schema.Obj(required={"direction": VECTOR_SCHEMA}))
def _ablate_direction_from_dict(data: dict[str, Any]) -> AblateDirection:
    vector, source = vector_from_json(data["direction"])
    return AblateDirection(vector, source)


@reads(
    AddDirection.kind,
    schema.Obj(
        required={"direction": VECTOR_SCHEMA, "layer": schema.INDEX},
        optional={"coeff": schema.Number()},
    ),
)
def _add_direction_from_dict(data: dict[str, Any]) -> AddDirection:
    vector, source = vector_from_json(data["direction"])
    return AddDirection(vector, int(data["layer"]), float(data.get("coeff", 1.0)), source)
