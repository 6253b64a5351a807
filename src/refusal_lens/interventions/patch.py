"""Patching SAE latents to given per-position values in one forward (not serialisable: the
values belong to one batch of prompts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..errors import UserError
from ..hooks import HookFn, HookPoint, check_layer, decoder_layers

if TYPE_CHECKING:
    from ..saes import SAESet


@dataclass(frozen=True)
class PatchLatents:
    """Set latents to given per-position values in one forward over a prompt batch.

    `values[layer]` is `[batch, seq, n]` for the n latents of `latents` at that layer;
    `rows[layer]` (`[batch, n]` bool) says which row patches which latent (None: every row
    every latent); `positions` (`[batch, seq]` bool) where. The SAE error is kept, as in
    `EditLatents`. Used to patch clean values into an edited run (`retain`) and to patch single
    latents from clean to ablated values (validating attributions). Not for generation: the
    values are tied to one batch of prompts.
    """

    saes: SAESet
    latents: dict[int, torch.Tensor]  # layer -> latent indices
    values: dict[int, torch.Tensor]  # layer -> [batch, seq, n]
    positions: torch.Tensor | None = None
    rows: dict[int, torch.Tensor] | None = None
    kind: ClassVar[str] = "patch_latents"

    def hooks(self, model: nn.Module) -> list[tuple[HookPoint, HookFn]]:
        check_layer(max(self.latents, default=0), len(decoder_layers(model)))
        return [
            (HookPoint(layer, "resid_post"), self._hook(layer)) for layer in sorted(self.latents)
        ]

    def _hook(self, layer: int) -> HookFn:
        sae = self.saes[HookPoint(layer, "resid_post")]
        indices = self.latents[layer]

        def hook(act: torch.Tensor, _point: HookPoint) -> torch.Tensor:
            target = self.values[layer].to(act.device)
            if target.shape[:2] != act.shape[:2]:
                raise UserError(
                    f"patched values are for {tuple(target.shape[:2])} tokens but the forward "
                    f"has {tuple(act.shape[:2])}; patches apply to the batch they were made for"
                )
            chooser = None if self.rows is None else self.rows[layer].to(act.device)

            def edit(current: torch.Tensor) -> torch.Tensor:
                wanted = target.reshape(-1, target.shape[-1]).to(current.dtype)
                if chooser is None:
                    return wanted
                pick = chooser.unsqueeze(1).expand(-1, act.shape[1], -1).reshape(wanted.shape)
                return torch.where(pick, wanted, current)

            with torch.no_grad():
                keep = None if self.positions is None else self.positions.to(act.device)
                return sae.steer(act, indices.to(act.device), edit, keep)

        return hook

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "saes": {"path": self.saes.path, "fingerprint": self.saes.fingerprint()},
            "latents": {str(k): v.tolist() for k, v in self.latents.items()},
            "note": "per-position values of one prompt batch (not serialised)",
        }
