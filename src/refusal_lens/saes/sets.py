"""An SAE set: one SAE per chosen layer of one model, with that model's identity.

On disk: `saeset.json` (model name and weights sha256, hook kind, layers, how the SAEs were
made) and one SAELens-format folder per hook point (`resid_post.12/cfg.json` + weights), so
each SAE also loads on its own in SAELens.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import schema
from ..errors import UserError
from ..hooks import HookPoint, decoder_layers, parse_hook_point
from ..models import LoadedModel
from ..runs import stable_hash, write_json
from . import registry
from .architectures import SparseAutoencoder
from .io import load_sae, save_sae

SET_FILE = "saeset.json"


def _is_hook_point(name: Any) -> bool:
    try:
        parse_hook_point(name)
    except UserError:
        return False
    return True


SET_FIX = "fix it or pass the folder that train-saes wrote"
SET_SCHEMA = schema.Obj(
    required={
        "model": schema.MODEL_IDENTITY,
        "points": schema.ListOf(
            schema.Test(
                lambda v: isinstance(v, str) and _is_hook_point(v),
                "a hook point name such as resid_post.12",
            ),
            min_len=1,
        ),
    },
    optional={"layers": schema.ListOf(schema.INDEX), "info": schema.Maybe(schema.Obj())},
)


def read_set_index(index: Path) -> dict[str, Any]:
    """`saeset.json`, checked for the types of every field the set reads."""
    data = schema.read_json(index, "SAE set index", SET_FIX)
    schema.validate(data, SET_SCHEMA, str(index), SET_FIX)
    if len(set(data["points"])) != len(data["points"]):
        raise UserError(f"{index}: points lists a hook point twice; {SET_FIX}")
    return data


@dataclass
class SAESet:
    model: dict[str, Any]  # {"name", "weights_sha256"}
    saes: dict[HookPoint, SparseAutoencoder]
    info: dict[str, Any] = field(default_factory=dict)
    path: str | None = None  # the folder it was loaded from or saved to

    @property
    def points(self) -> list[HookPoint]:
        return sorted(self.saes)

    @property
    def layers(self) -> list[int]:
        return [point.layer for point in self.points]

    def __getitem__(self, point: HookPoint | str) -> SparseAutoencoder:
        key = parse_hook_point(point) if isinstance(point, str) else point
        if key not in self.saes:
            have = ", ".join(p.name for p in self.points)
            raise UserError(f"this SAE set has no SAE at {key.name}; it has {have}")
        return self.saes[key]

    def __iter__(self) -> Iterator[tuple[HookPoint, SparseAutoencoder]]:
        return iter(sorted(self.saes.items()))

    def __len__(self) -> int:
        return len(self.saes)

    def to(self, device: Any) -> SAESet:
        """Move every SAE to `device` (in place; returns the set)."""
        for sae in self.saes.values():
            sae.to(device)
        return self

    def place(self, model: Any) -> SAESet:
        """Move each SAE to the device of its layer of `model` (in place; returns the set):
        the model's device, or, for a model spread over GPUs, the GPU holding that layer."""
        layers = decoder_layers(model)
        for point, sae in self.saes.items():
            sae.to(next(layers[point.layer].parameters()).device)
        return self

    def subset(self, layers: list[int] | tuple[int, ...]) -> SAESet:
        """The SAEs of some layers only (same model, info and folder)."""
        missing = sorted(set(layers) - set(self.layers))
        if missing:
            have = ", ".join(str(layer) for layer in self.layers)
            raise UserError(f"this SAE set has no SAE at layer {missing[0]}; it has {have}")
        chosen = {p: s for p, s in self.saes.items() if p.layer in set(layers)}
        return SAESet(self.model, chosen, self.info, self.path)

    def fingerprint(self) -> str:
        """Identifies the set in result keys: its model, hook points, training recipe (for a set
        trained here) and a hash of its weights' first bytes. The weights count even where the
        recipe is known: the same recipe trained with another thread count or device gives
        another set (TopK training amplifies float rounding), whose results are not these."""
        parts: dict[str, Any] = {"model": self.model, "points": [p.name for p in self.points]}
        if "recipe_key" in self.info:
            parts["recipe"] = self.info["recipe_key"]
        parts["weights"] = [
            hashlib.sha256(
                sae.W_dec[:8].detach().float().cpu().numpy().tobytes()
                + sae.b_enc.detach().float().cpu().numpy().tobytes()
            ).hexdigest()
            for _, sae in self
        ]
        return stable_hash(parts)

    def check_model(self, lm: LoadedModel) -> None:
        """One-line errors for a set used with another model, a missing layer, a wrong width."""
        if self.model.get("weights_sha256") not in (None, lm.weights_sha256):
            raise UserError(
                f"these SAEs were trained on {self.model.get('name')} "
                f"(weights {str(self.model.get('weights_sha256'))[:12]}), not on {lm.name} "
                f"(weights {lm.weights_sha256[:12]}); train SAEs for this model "
                "(refusal-lens train-saes)"
            )
        for point, sae in self:
            if point.layer >= lm.n_layers:
                raise UserError(
                    f"the SAE set has an SAE at layer {point.layer} but {lm.name} has layers "
                    f"0..{lm.n_layers - 1}"
                )
            if sae.d_in != lm.d_model:
                raise UserError(
                    f"the SAE at {point.name} has d_in={sae.d_in} but {lm.name} has "
                    f"d_model={lm.d_model}"
                )

    def save(self, folder: str | Path) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for point, sae in self:
            sae.cfg.metadata.setdefault("hook_name", f"blocks.{point.layer}.hook_{point.kind}")
            sae.cfg.metadata.setdefault("model_name", self.model.get("name"))
            save_sae(sae, out / point.name)
        write_json(
            out / SET_FILE,
            {
                "model": self.model,
                "points": [p.name for p in self.points],
                "layers": self.layers,
                "info": self.info,
            },
        )
        self.path = str(out)
        return out

    @classmethod
    def load(cls, folder: str | Path) -> SAESet:
        """An SAE set folder (or a single SAELens-format SAE), or a registry spec
        `sae-lens:RELEASE[:ID_PATTERN]` (see `saes.registry`), fetched once into the cache."""
        if registry.is_registry_spec(folder):
            folder = cls.from_registry(str(folder))
        path = Path(folder)
        index = path / SET_FILE
        if not index.exists():
            if (path / "cfg.json").exists():
                return cls.from_single(path)
            raise UserError(
                f"no SAE set at {path} ({SET_FILE} missing); pass the folder that train-saes wrote"
            )
        data = read_set_index(index)
        saes = {parse_hook_point(name): load_sae(path / name) for name in data["points"]}
        return cls(data["model"], saes, data.get("info") or {}, str(path))

    @classmethod
    def from_registry(cls, spec: str, cache: str | Path | None = None) -> Path:
        """The set folder of `sae-lens:RELEASE[:ID_PATTERN]` in the user cache, made on first
        use from SAELens' registry (or its local mirror): whole or absent."""
        from ..settings import cache_dir

        choice = registry.choose(spec)
        folder = cache_dir(cache) / "saes" / "sae-lens" / choice.folder_name
        if (folder / SET_FILE).is_file():
            return folder
        saes, model_name = registry.load_chosen(choice)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model = {"name": model_name, "weights_sha256": None}
        cls(model, saes, {"source": choice.source, "sae_ids": list(choice.ids)}).save(partial)
        partial.rename(folder)
        return folder

    @classmethod
    def from_single(cls, folder: Path) -> SAESet:
        """A set of one SAELens-format SAE; its hook point from its `hook_name` metadata."""
        sae = load_sae(folder)
        hook = sae.cfg.metadata.get("hook_name")
        if not hook:
            raise UserError(f"the SAE at {folder} does not record its hook_name")
        model = {"name": sae.cfg.metadata.get("model_name"), "weights_sha256": None}
        return cls(model, {parse_hook_point(str(hook)): sae}, {"source": str(folder)}, str(folder))
