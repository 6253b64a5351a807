"""Interventions on SAE latents: edit (scale or set) chosen latents, per prompt or for all,
and patch latents to given per-position values. The SAE error is kept throughout, so an edit
that changes nothing is the identity."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .. import schema
from ..data.promptset import normalize_text
from ..errors import UserError
from ..hooks import HookFn, HookPoint, check_layer, decoder_layers
from .positions import LATENT_POSITIONS, TokenPositions
from .registry import INTERVENTION_FIX, reads

if TYPE_CHECKING:
    from ..saes import SAESet, SparseAutoencoder


@dataclass(frozen=True)
class EditLatents:
    """Scale SAE latents by `value` (`mode="scale"`) or set them to `value` (`mode="set"`).

    At each layer with selected latents, `h <- h + D(f') - D(f)`: the SAE error is kept, so an
    edit that changes nothing is the identity. Layers run in forward order, so an upstream edit
    changes the downstream latents. Which tokens: `where` (`positions`, `last_prompt_tokens`,
    `from_position`, `edit_sinks`, `sink_factor`; see `TokenPositions`), with each row's left
    padding bound per batch by `bind` (`generate` does this).

    `retain` pins other latents to their values in a clean copy of each prompt run in the same
    (twin) batch. It stays a field of the edit, not an intervention of its own: the pinned
    values are read from the clean rows at the very layer and forward where the edit runs, and
    the serialised edit (retain included) is the key of every stored result made with it.
    """

    saes: SAESet
    latents: tuple[tuple[int, int], ...]  # (layer, latent index)
    mode: str = "scale"
    value: float = 0.0
    positions: str = "all"
    last_prompt_tokens: int | None = None
    edit_sinks: bool = False
    sink_factor: float = 10.0
    retain: tuple[tuple[int, int], ...] = ()  # pinned to their clean values (twin batch)
    # one latent list per batch row (per-prompt sets); `latents` is then their union
    rows: tuple[tuple[tuple[int, int], ...], ...] | None = None
    from_position: int | None = None
    left_pad: tuple[int, ...] | None = None  # per row, bound per batch (`bind`)
    kind: ClassVar[str] = "edit_latents"

    def __post_init__(self) -> None:
        if self.mode not in ("scale", "set"):
            raise UserError(f"latent edit mode {self.mode!r} is unknown; use scale or set")
        if not math.isfinite(self.value):
            raise UserError(f"latent edit value {self.value} is not a finite number")
        if self.rows is not None and self.retain:
            raise UserError("per-prompt latent sets cannot be combined with retain")
        _ = self.where  # TokenPositions checks the position fields

    @property
    def where(self) -> TokenPositions:
        """The tokens this edit touches (its position fields, as one object)."""
        return TokenPositions(
            self.positions,
            self.last_prompt_tokens,
            self.from_position,
            self.edit_sinks,
            self.sink_factor,
        )

    @property
    def needs_twin(self) -> bool:
        """`retain` compares with a clean copy of each prompt run in the same batch."""
        return bool(self.retain)

    def by_layer(self) -> dict[int, list[int]]:
        return _group(self.latents)

    def hooks(self, model: nn.Module) -> list[tuple[HookPoint, HookFn]]:
        edits, pins = self.by_layer(), _group(self.retain)
        hooks: list[tuple[HookPoint, HookFn]] = []
        for layer in sorted(set(edits) | set(pins)):
            point = HookPoint(layer, "resid_post")
            sae = _checked_sae(self.saes, point, model, edits.get(layer, []) + pins.get(layer, []))
            indices = edits.get(layer, [])
            hooks.append(
                (
                    point,
                    self._hook(
                        sae,
                        torch.tensor(indices, dtype=torch.long),
                        torch.tensor(pins.get(layer, []), dtype=torch.long),
                        self._row_chooser(layer, indices),
                    ),
                )
            )
        return hooks

    def _row_chooser(self, layer: int, indices: list[int]) -> torch.Tensor | None:
        """`[rows, len(indices)]` bool: which row edits which of this layer's latents."""
        if self.rows is None:
            return None
        chooser = torch.zeros(len(self.rows), len(indices), dtype=torch.bool)
        column = {latent: j for j, latent in enumerate(indices)}
        for r, row in enumerate(self.rows):
            for at, latent in row:
                if at == layer:
                    chooser[r, column[latent]] = True
        return chooser

    def _hook(
        self,
        sae: SparseAutoencoder,
        indices: torch.Tensor,
        pins: torch.Tensor,
        chooser: torch.Tensor | None = None,
    ) -> HookFn:
        value = self.value

        def edit_all(f: torch.Tensor) -> torch.Tensor:
            return f * value if self.mode == "scale" else torch.full_like(f, value)

        state: dict[str, torch.Tensor] = {}
        on_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}

        def hook(act: torch.Tensor, _point: HookPoint) -> torch.Tensor | None:
            # one host-to-device copy per device, not one per decoding step (a GPU stall)
            if act.device not in on_device:
                moved = (indices, pins, chooser if chooser is not None else pins)
                on_device[act.device] = tuple(t.to(act.device) for t in moved)
            device_indices, device_pins, device_chooser = on_device[act.device]
            edit = edit_all
            if chooser is not None:
                if act.shape[0] != chooser.shape[0]:
                    raise UserError(
                        f"per-prompt latent sets were bound to {chooser.shape[0]} prompts but "
                        f"the batch has {act.shape[0]}"
                    )
                pick = device_chooser.unsqueeze(1).expand(-1, act.shape[1], -1)
                pick = pick.reshape(-1, chooser.shape[1])

                def edit(f: torch.Tensor) -> torch.Tensor:
                    return torch.where(pick, edit_all(f), f)

            keep = self.where.mask(act, self.left_pad, state)
            if keep is None:
                return None
            with torch.no_grad():
                if self.retain:  # a twin batch: only the edited half [half:] is ever edited
                    return self._edit_and_pin(sae, act, device_indices, device_pins, edit, keep)
                return sae.steer(act, device_indices, edit, keep)

        return hook

    @staticmethod
    def _edit_and_pin(
        sae: SparseAutoencoder,
        act: torch.Tensor,
        indices: torch.Tensor,
        pins: torch.Tensor,
        edit: Callable[[torch.Tensor], torch.Tensor],
        keep: torch.Tensor,
    ) -> torch.Tensor:
        """Twin batch: rows [:half] are the clean prompts, rows [half:] the same prompts edited;
        the retained latents of the edited rows get the clean rows' values."""
        if act.shape[0] % 2:
            raise UserError(
                "a latent edit with retain needs a twin batch (a clean copy of every prompt); "
                "this forward has an odd number of rows"
            )
        half = act.shape[0] // 2
        clean, edited = act[:half], act[half:]
        if indices.numel():
            edited = sae.steer(edited, indices, edit, keep[half:])
        if pins.numel():
            target = sae.encode_latents(clean, pins).reshape(-1, len(pins))
            edited = sae.steer(edited, pins, lambda f: target.to(f.dtype), keep[half:])
        return torch.cat([clean, edited])

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "saes": {"path": self.saes.path, "fingerprint": self.saes.fingerprint()},
            "latents": [list(pair) for pair in self.latents],
            "mode": self.mode,
            "value": self.value,
            "positions": self.positions,
            "last_prompt_tokens": self.last_prompt_tokens,
            "from_position": self.from_position,
            "edit_sinks": self.edit_sinks,
            "sink_factor": self.sink_factor,
            "retain": [list(pair) for pair in self.retain],
            "rows": None if self.rows is None else [[list(p) for p in row] for row in self.rows],
        }


@dataclass(frozen=True)
class PerPromptLatents:
    """Each prompt gets its own latent set (per-prompt latent sets): bound to a batch's
    prompts by `for_batch` (which `generate` calls) as an `EditLatents` with one list per row.
    A prompt without a set is an error, not a silent base run."""

    saes: SAESet
    by_prompt: dict[str, tuple[tuple[int, int], ...]]  # normalised prompt text -> latents
    mode: str = "scale"
    value: float = 0.0
    positions: str = "all"
    from_position: int | None = None
    kind: ClassVar[str] = "per_prompt_latents"

    def for_batch(self, texts: Sequence[str]) -> EditLatents:
        rows = []
        for text in texts:
            found = self.by_prompt.get(normalize_text(text))
            if found is None:
                raise UserError(
                    f"no per-prompt latent set for the prompt {text[:60]!r}; per-prompt sets "
                    "exist only for the prompts they were selected on (--protocol transductive)"
                )
            rows.append(found)
        union = tuple(sorted({pair for row in rows for pair in row}))
        return EditLatents(
            self.saes,
            union,
            self.mode,
            self.value,
            self.positions,
            rows=tuple(rows),
            from_position=self.from_position,
        )

    def hooks(self, model: nn.Module) -> list[tuple[HookPoint, HookFn]]:
        raise UserError("per-prompt latent sets apply through generate(), which binds each batch")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "saes": {"path": self.saes.path, "fingerprint": self.saes.fingerprint()},
            "mode": self.mode,
            "value": self.value,
            "positions": self.positions,
            "from_position": self.from_position,
            "by_prompt_sha256": hashlib.sha256(
                repr(sorted(self.by_prompt.items())).encode()
            ).hexdigest(),
            "n_prompts": len(self.by_prompt),
        }


def _group(pairs: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    layers: dict[int, list[int]] = {}
    for layer, latent in sorted(set(pairs)):
        layers.setdefault(layer, []).append(latent)
    return layers


def _checked_sae(
    saes: SAESet, point: HookPoint, model: nn.Module, indices: list[int]
) -> SparseAutoencoder:
    check_layer(point.layer, len(decoder_layers(model)))
    sae = saes[point]
    d_model = int(model.config.hidden_size)
    if sae.d_in != d_model:
        raise UserError(
            f"the SAE at {point.name} has d_in={sae.d_in} but the model has "
            f"d_model={d_model}; use SAEs trained for this model"
        )
    bad = [i for i in indices if not 0 <= i < sae.d_sae]
    if bad:
        raise UserError(f"latent {bad[0]} does not exist at {point.name} (the SAE has {sae.d_sae})")
    sae.to(next(decoder_layers(model)[point.layer].parameters()).device)  # where it runs
    return sae


_EDIT_SCHEMA = schema.Obj(
    required={
        "saes": schema.Obj(
            required={"path": schema.Str(nonempty=True)},
            optional={"fingerprint": schema.Maybe(schema.Str())},
        ),
        "latents": schema.ListOf(schema.LATENT_PAIR, min_len=1),
    },
    optional={
        "mode": schema.OneOf(("scale", "set")),
        "value": schema.Number(),
        "positions": schema.OneOf(LATENT_POSITIONS),
        "last_prompt_tokens": schema.Maybe(schema.Int(min=1)),
        "edit_sinks": schema.Bool(),
        "sink_factor": schema.Number(),
        "retain": schema.ListOf(schema.LATENT_PAIR),
        "rows": schema.Maybe(schema.ListOf(schema.ListOf(schema.LATENT_PAIR))),
        "from_position": schema.Maybe(schema.Int(min=0)),
    },
)


def saes_from_dict(saes: dict[str, Any], latents: Sequence[Sequence[int]]) -> SAESet:
    """The SAE set a serialised intervention names (`{"path", "fingerprint"}`), checked to be
    the one it was made with and to hold every `(layer, latent)` it reads."""
    from ..saes import SAESet

    loaded = SAESet.load(saes["path"])
    expected = saes.get("fingerprint")
    if expected and loaded.fingerprint() != expected:
        raise UserError(
            f"the SAE set at {saes['path']} is not the one this intervention was made "
            "with; point it at the original SAEs"
        )
    by_layer = {point.layer: sae for point, sae in loaded}
    for layer, latent in latents:
        if layer not in by_layer:
            have = ", ".join(str(x) for x in by_layer)
            raise UserError(
                f"the intervention edits layer {layer} but the SAE set at {saes['path']} "
                f"has SAEs at layers {have}; {INTERVENTION_FIX}"
            )
        if latent >= by_layer[layer].d_sae:
            raise UserError(
                f"the intervention edits latent {latent} at layer {layer}, but that SAE has "
                f"{by_layer[layer].d_sae} latents; {INTERVENTION_FIX}"
            )
    return loaded


@reads(EditLatents.kind, _EDIT_SCHEMA)
def _edit_latents_from_dict(data: dict[str, Any]) -> EditLatents:
    saes = saes_from_dict(data["saes"], [*data["latents"], *data.get("retain", [])])
    rows = data.get("rows")
    return EditLatents(
        saes=saes,
        latents=tuple((int(a), int(b)) for a, b in data["latents"]),
        mode=data.get("mode", "scale"),
        value=float(data.get("value", 0.0)),
        positions=data.get("positions", "all"),
        last_prompt_tokens=data.get("last_prompt_tokens"),
        edit_sinks=bool(data.get("edit_sinks", False)),
        sink_factor=float(data.get("sink_factor", 10.0)),
        retain=tuple((int(a), int(b)) for a, b in data.get("retain", [])),
        rows=None if rows is None else tuple(tuple((int(a), int(b)) for a, b in r) for r in rows),
        from_position=data.get("from_position"),
    )
