"""Interventions as data: small JSON-serialisable edits, applied through one context manager.

`apply(model, interventions)` is the only place editing hooks are installed. Every result stores
the `to_dict()` of the interventions that produced it, and `from_dict` reads one back.

One module per kind of edit: `direction` (ablate or add a direction), `latents` (edit and
per-prompt SAE latents, with `positions` saying which tokens), `patch` (latents patched to
given values), `gated` (any edit applied only where a gate on latents or a direction
fires); `registry` reads each kind back from its JSON; `sets` applies them, binds them
to a batch and holds `from_dict`. A new kind is one new module whose reader is registered with
`@reads(kind, schema)`.
"""

from .direction import AblateDirection, AddDirection
from .gated import GATE_POOLS, GATE_SCOPES, DirectionGate, Gated, LatentGate
from .latents import EditLatents, PerPromptLatents
from .patch import PatchLatents
from .positions import LATENT_POSITIONS, TokenPositions
from .registry import INTERVENTION_FIX, reads
from .sets import Intervention, InterventionSet, apply, bind, from_dict, needs_twin, twin_logits
from .vectors import read_direction_file, vector_sha256

__all__ = [
    "GATE_POOLS",
    "GATE_SCOPES",
    "INTERVENTION_FIX",
    "LATENT_POSITIONS",
    "AblateDirection",
    "AddDirection",
    "DirectionGate",
    "EditLatents",
    "Gated",
    "Intervention",
    "InterventionSet",
    "LatentGate",
    "PatchLatents",
    "PerPromptLatents",
    "TokenPositions",
    "apply",
    "bind",
    "from_dict",
    "needs_twin",
    "read_direction_file",
    "reads",
    "twin_logits",
    "vector_sha256",
]
