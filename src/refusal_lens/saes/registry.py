"""SAE sets named by SAELens' pretrained registry: `sae-lens:RELEASE[:ID_PATTERN]`.

Wherever an SAE set folder is asked for, `sae-lens:gemma-scope-2b-pt-res-canonical:layer_*/
width_16k/canonical` may stand instead: every SAE id of the release that matches the pattern
(a shell glob; default every id) is loaded through SAELens (`SAE.from_pretrained`, from the
hub), converted, and saved once as an SAE set in the user cache, which is then used (and sent
to workers) like any other folder.

`$REFUSAL_LENS_SAE_REGISTRY` names a local mirror of the registry instead (air-gapped
clusters, tests): `MIRROR/RELEASE/ID/` holds each SAE in SAELens' saved format (`cfg.json`,
`sae_weights.safetensors`), an id being a path such as `layer_20/width_16k/canonical`.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..hooks import HookPoint, parse_hook_point
from ..runs import stable_hash
from .architectures import SparseAutoencoder
from .io import load_pretrained, load_sae

PREFIX = "sae-lens:"
MIRROR_ENV = "REFUSAL_LENS_SAE_REGISTRY"


def is_registry_spec(text: str | Path) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)


def parse_spec(text: str) -> tuple[str, str]:
    """`sae-lens:RELEASE[:PATTERN]` -> (release, pattern)."""
    release, _, pattern = text.removeprefix(PREFIX).partition(":")
    if not release.strip():
        raise UserError(
            f"{text!r} names no release; write sae-lens:RELEASE[:ID_PATTERN], e.g. "
            "sae-lens:gemma-scope-2b-pt-res-canonical:layer_*/width_16k/canonical"
        )
    return release.strip(), pattern.strip() or "*"


def _mirror_ids(mirror: Path, release: str) -> list[str]:
    root = mirror / release
    if not root.is_dir():
        known = sorted(p.name for p in mirror.iterdir() if p.is_dir()) if mirror.is_dir() else []
        raise UserError(
            f"release {release!r} is not in the SAE registry mirror {mirror} "
            f"(${MIRROR_ENV}); it has: {', '.join(known) or 'nothing'}"
        )
    return sorted(str(cfg.parent.relative_to(root)) for cfg in root.rglob("cfg.json"))


def _registry_ids(release: str) -> list[str]:
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        raise UserError(
            "SAE sets from SAELens' registry need SAELens: pip install 'refusal-lens[sae-lens]'"
        ) from None
    directory = get_pretrained_saes_directory()
    if release not in directory:
        near = [name for name in directory if release.split("-")[0] in name][:8]
        raise UserError(
            f"release {release!r} is not in SAELens' pretrained registry"
            + (f"; similar: {', '.join(near)}" if near else "")
        )
    return sorted(directory[release].saes_map)


def _load(release: str, sae_id: str, mirror: Path | None) -> SparseAutoencoder:
    if mirror is not None:
        return load_sae(mirror / release / sae_id)
    return load_pretrained(release, sae_id)


@dataclass(frozen=True)
class RegistryChoice:
    """The SAEs a spec names: its release, pattern, the matching ids and where they come from
    (a mirror folder, or None for SAELens' hub)."""

    release: str
    pattern: str
    ids: tuple[str, ...]
    mirror: Path | None

    @property
    def folder_name(self) -> str:
        """Its set's folder name in the cache (`saes/sae-lens/NAME`)."""
        key = stable_hash({"release": self.release, "ids": self.ids, "mirror": str(self.mirror)})
        return f"{self.release}-{key[:16]}"

    @property
    def source(self) -> str:
        return f"{PREFIX}{self.release}:{self.pattern}"


def choose(text: str) -> RegistryChoice:
    """What `sae-lens:RELEASE[:ID_PATTERN]` names, checked without loading any SAE."""
    release, pattern = parse_spec(text)
    mirror_env = os.environ.get(MIRROR_ENV)
    mirror = Path(mirror_env).expanduser() if mirror_env else None
    ids = _mirror_ids(mirror, release) if mirror is not None else _registry_ids(release)
    chosen = tuple(sae_id for sae_id in ids if fnmatch.fnmatchcase(sae_id, pattern))
    if not chosen:
        shown = ", ".join(ids[:6]) + (" ..." if len(ids) > 6 else "")
        raise UserError(f"no SAE id of {release} matches {pattern!r}; its ids: {shown}")
    return RegistryChoice(release, pattern, chosen, mirror)


def load_chosen(choice: RegistryChoice) -> tuple[dict[HookPoint, SparseAutoencoder], str]:
    """Every chosen SAE by its hook point, and the model they were trained on."""
    saes: dict[HookPoint, SparseAutoencoder] = {}
    model_name = None
    for sae_id in choice.ids:
        sae = _load(choice.release, sae_id, choice.mirror)
        hook = sae.cfg.metadata.get("hook_name")
        if not hook:
            raise UserError(f"{choice.release}/{sae_id} does not record its hook_name")
        point = parse_hook_point(str(hook))
        if point in saes:
            raise UserError(
                f"{choice.pattern!r} matches two SAEs of {choice.release} at {point.name}; "
                "narrow the pattern to one SAE per hook point (e.g. one width)"
            )
        saes[point] = sae
        model_name = model_name or sae.cfg.metadata.get("model_name")
    return dict(sorted(saes.items())), str(model_name or choice.release)
