"""Interventions as data: small JSON-serialisable edits, applied through one context manager.

`apply(model, interventions)` is the only place editing hooks are installed. Every result stores
the `to_dict()` of the interventions that produced it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors.torch import load_file
from torch import nn

from . import schema
from .data.promptset import normalize_text
from .errors import UserError
from .hooks import HookFn, HookPoint, add_hooks, check_layer, decoder_layers

if TYPE_CHECKING:
    from .saes import SAESet, SparseAutoencoder


def vector_sha256(vector: torch.Tensor) -> str:
    """Content hash of a vector: results are keyed by what was applied, not by a file name."""
    return hashlib.sha256(vector.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def _vector_to_json(vector: torch.Tensor, source: str | None) -> dict[str, Any]:
    if source is not None:
        return {"file": source, "sha256": vector_sha256(vector)}
    return {"values": [float(x) for x in vector.float().tolist()]}


def read_direction_file(path: str | Path) -> torch.Tensor:
    """The `direction` tensor of a direction.safetensors: one finite, non-zero vector."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"direction file {file} does not exist; rerun `refusal-lens direction`")
    try:
        tensors = load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise UserError(f"direction file {file} is unreadable ({first}); recompute it") from None
    vector = tensors.get("direction")
    if vector is None:
        raise UserError(f"direction file {file} holds no 'direction' tensor; recompute it")
    if vector.ndim != 1 or not vector.is_floating_point() or not vector.numel():
        raise UserError(
            f"direction file {file}: the direction is a {vector.dtype} tensor of shape "
            f"{tuple(vector.shape)}, not a vector of floats; recompute it"
        )
    if not torch.isfinite(vector).all():
        raise UserError(f"direction file {file} holds NaN or infinite values; recompute it")
    return vector


_VECTOR_SCHEMA = schema.Either(
    (
        schema.Obj(required={"file": schema.Str(nonempty=True)}),
        schema.Obj(required={"values": schema.ListOf(schema.Number(), min_len=1)}),
    )
)
INTERVENTION_FIX = (
    "write it as `to_dict()` / `steer --json` do (kind, and that kind's fields with their types)"
)
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
        "positions": schema.OneOf(("all", "prompt", "generated")),  # LATENT_POSITIONS
        "last_prompt_tokens": schema.Maybe(schema.Int(min=1)),
        "edit_sinks": schema.Bool(),
        "sink_factor": schema.Number(),
        "retain": schema.ListOf(schema.LATENT_PAIR),
        "rows": schema.Maybe(schema.ListOf(schema.ListOf(schema.LATENT_PAIR))),
        "from_position": schema.Maybe(schema.Int(min=0)),
    },
)
_KIND_SCHEMAS = {
    "ablate_direction": schema.Obj(required={"direction": _VECTOR_SCHEMA}),
    "add_direction": schema.Obj(
        required={"direction": _VECTOR_SCHEMA, "layer": schema.INDEX},
        optional={"coeff": schema.Number()},
    ),
    "edit_latents": _EDIT_SCHEMA,
}


def _vector_from_json(data: dict[str, Any]) -> tuple[torch.Tensor, str | None]:
    if "file" in data:
        vector = read_direction_file(data["file"])
        expected = data.get("sha256")
        if isinstance(expected, str) and expected and vector_sha256(vector) != expected:
            raise UserError(
                f"direction file {data['file']} is not the one this intervention was written "
                f"with (sha256 {vector_sha256(vector)[:12]}..., recorded {expected[:12]}...); "
                "point it at the original direction or drop the sha256"
            )
        return vector, str(data["file"])
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


LATENT_POSITIONS = ("all", "prompt", "generated")


@dataclass(frozen=True)
class EditLatents:
    """Scale SAE latents by `value` (`mode="scale"`) or set them to `value` (`mode="set"`).

    At each layer with selected latents, `h <- h + D(f') - D(f)`: the SAE error is kept, so an
    edit that changes nothing is the identity. Layers run in forward order, so an upstream edit
    changes the downstream latents. Positions: `all` (prompt and every generated token, KV cache
    on), `prompt` (the forward over the prompt only), `generated` (decoding steps only);
    `last_prompt_tokens=n` edits only the last n prompt tokens, `from_position=p` only the
    prompt tokens from index p of the formatted prompt on (template tokens count; padding does
    not), plus the generated ones unless `positions="prompt"`. `from_position` needs each row's
    left padding, which `bind` supplies per batch (`generate` does this); an unbound batch of
    one row has none. A forward over more than one token is the prompt; one token is a
    decoding step. Attention-sink tokens (norm above `sink_factor` x the median of the prompt's
    tokens) were never in the SAE's training data and stay untouched unless `edit_sinks`.
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
        if self.positions not in LATENT_POSITIONS:
            raise UserError(
                f"latent edit positions {self.positions!r} unknown; use one of "
                + ", ".join(LATENT_POSITIONS)
            )
        if not math.isfinite(self.value):
            raise UserError(f"latent edit value {self.value} is not a finite number")
        if self.rows is not None and self.retain:
            raise UserError("per-prompt latent sets cannot be combined with retain")
        if self.from_position is not None and self.from_position < 0:
            raise UserError(
                f"from_position {self.from_position} is negative; count from the prompt's "
                "start, or use last_prompt_tokens to count from its end"
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

            is_prompt = act.shape[1] > 1
            if (self.positions == "prompt" and not is_prompt) or (
                self.positions == "generated" and is_prompt
            ):
                return None
            keep = torch.ones(act.shape[:2], dtype=torch.bool, device=act.device)
            if is_prompt and self.last_prompt_tokens is not None:
                keep[:, : max(0, act.shape[1] - self.last_prompt_tokens)] = False
            if is_prompt and self.from_position is not None:
                keep &= self._from_position_mask(act)
            if not self.edit_sinks:
                norms = act.float().norm(dim=-1)
                reference = state.get("median")
                if is_prompt or reference is None or reference.shape[0] != act.shape[0]:
                    # per prompt, over its own tokens: padding and other rows do not count
                    reference = _row_median(norms, self._unpadded_mask(act))
                    state["median"] = reference
                keep &= norms <= self.sink_factor * reference.unsqueeze(1)
            with torch.no_grad():
                if self.retain:  # a twin batch: only the edited half [half:] is ever edited
                    return self._edit_and_pin(sae, act, device_indices, device_pins, edit, keep)
                return sae.steer(act, device_indices, edit, keep)

        return hook

    def _row_pads(self, act: torch.Tensor) -> tuple[int, ...] | None:
        """Each row's left padding as bound for this batch (twin batches: both halves)."""
        pads = self.left_pad
        if pads is None:
            return None
        if act.shape[0] == 2 * len(pads):  # a twin batch (retain): clean rows, then edited
            pads = pads + pads
        if act.shape[0] != len(pads):
            raise UserError(
                f"padding was bound for {len(pads)} prompts, the batch has {act.shape[0]}"
            )
        return pads

    def _unpadded_mask(self, act: torch.Tensor) -> torch.Tensor:
        """`[batch, seq]`: True at each row's own tokens (every token when no padding was
        bound)."""
        pads = self._row_pads(act)
        if pads is None:
            return torch.ones(act.shape[:2], dtype=torch.bool, device=act.device)
        start = torch.tensor(pads, device=act.device).unsqueeze(1)
        return torch.arange(act.shape[1], device=act.device).unsqueeze(0) >= start

    def _from_position_mask(self, act: torch.Tensor) -> torch.Tensor:
        """`[batch, seq]`: True from token `from_position` of each (left-padded) prompt on."""
        pads = self._row_pads(act)
        if pads is None:
            if act.shape[0] != 1:
                raise UserError(
                    "from_position needs each prompt's padding; generate through "
                    "refusal_lens.generation.generate, or bind(interventions, prompts, mask)"
                )
            pads = (0,)
        start = torch.tensor(pads, device=act.device).unsqueeze(1) + self.from_position
        return torch.arange(act.shape[1], device=act.device).unsqueeze(0) >= start

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


def bind(
    interventions: Sequence[Intervention] | InterventionSet,
    texts: Sequence[str],
    attention_mask: torch.Tensor | None = None,
) -> list[Intervention]:
    """Interventions for one batch: per-prompt ones bound to its prompts, and latent edits
    that start at a prompt position told each row's left padding (from `attention_mask`)."""
    items = interventions.items if isinstance(interventions, InterventionSet) else interventions
    bound = [
        item.for_batch(texts) if isinstance(item, PerPromptLatents) else item for item in items
    ]
    if attention_mask is None:
        return bound
    pads = tuple(int(n) for n in (attention_mask == 0).sum(dim=1).tolist())
    # every latent edit is told the padding: `from_position` counts from each prompt's start,
    # and the attention-sink threshold is a median over each prompt's own tokens
    return [
        replace(item, left_pad=pads) if isinstance(item, EditLatents) else item for item in bound
    ]


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


def _row_median(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`[batch]`: the median of each row's values where `valid` (a row with none: all)."""
    valid = valid | ~valid.any(dim=1, keepdim=True)
    masked = torch.where(valid, values, torch.full_like(values, float("nan")))
    return masked.nanmedian(dim=1).values


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
    sae.to(next(model.parameters()).device)
    return sae


Intervention = AblateDirection | AddDirection | EditLatents | PatchLatents | PerPromptLatents


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


# How each serialisable kind is read back: kind -> (schema of its fields, reader). A new kind
# registers itself with `@reads(kind, schema)`; `from_dict` checks the fields, then calls it.
_READERS: dict[str, tuple[Any, Callable[[dict[str, Any]], Intervention]]] = {}


def reads(
    kind: str, fields: Any
) -> Callable[[Callable[[dict[str, Any]], Intervention]], Callable[[dict[str, Any]], Intervention]]:
    """Register the reader of one intervention kind (its `to_dict()` back to the object)."""

    def register(
        reader: Callable[[dict[str, Any]], Intervention],
    ) -> Callable[[dict[str, Any]], Intervention]:
        _READERS[kind] = (fields, reader)
        return reader

    return register


def from_dict(data: dict[str, Any], origin: str = "intervention") -> Intervention:
    """An intervention from its `to_dict()`; every field is checked for its type first, so a
    hand-written one is a one-line error naming `origin` and the field."""
    schema.validate(data, schema.Obj(required={"kind": schema.Str()}), origin, INTERVENTION_FIX)
    kind = data["kind"]
    if kind not in _READERS:
        raise UserError(f"unknown intervention kind {kind!r}; known: {', '.join(_READERS)}")
    fields, reader = _READERS[kind]
    schema.validate(data, fields, origin, INTERVENTION_FIX)
    return reader(data)


@reads(AblateDirection.kind, _KIND_SCHEMAS["ablate_direction"])
def _ablate_direction_from_dict(data: dict[str, Any]) -> AblateDirection:
    vector, source = _vector_from_json(data["direction"])
    return AblateDirection(vector, source)


@reads(AddDirection.kind, _KIND_SCHEMAS["add_direction"])
def _add_direction_from_dict(data: dict[str, Any]) -> AddDirection:
    vector, source = _vector_from_json(data["direction"])
    return AddDirection(vector, int(data["layer"]), float(data.get("coeff", 1.0)), source)


@reads(EditLatents.kind, _KIND_SCHEMAS["edit_latents"])
def _edit_latents_from_dict(data: dict[str, Any]) -> EditLatents:
    from .saes import SAESet

    saes = SAESet.load(data["saes"]["path"])
    expected = data["saes"].get("fingerprint")
    if expected and saes.fingerprint() != expected:
        raise UserError(
            f"the SAE set at {data['saes']['path']} is not the one this intervention was made "
            "with; point it at the original SAEs"
        )
    by_layer = {point.layer: sae for point, sae in saes}
    for layer, latent in [*data["latents"], *data.get("retain", [])]:
        if layer not in by_layer:
            have = ", ".join(str(x) for x in by_layer)
            raise UserError(
                f"the intervention edits layer {layer} but the SAE set at {data['saes']['path']} "
                f"has SAEs at layers {have}; {INTERVENTION_FIX}"
            )
        if latent >= by_layer[layer].d_sae:
            raise UserError(
                f"the intervention edits latent {latent} at layer {layer}, but that SAE has "
                f"{by_layer[layer].d_sae} latents; {INTERVENTION_FIX}"
            )
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
