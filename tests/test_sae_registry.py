"""`sae-lens:RELEASE[:ID_PATTERN]` wherever an SAE set is: resolved through a local mirror of
SAELens' registry (the hub itself cannot be reached in tests), saved once as a set."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import random_sae_set
from refusal_lens.errors import UserError
from refusal_lens.hooks import HookPoint
from refusal_lens.models import LoadedModel
from refusal_lens.saes import SAESet, save_sae
from refusal_lens.saes.registry import MIRROR_ENV, parse_spec


@pytest.fixture()
def mirror(tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry mirror laid out as `RELEASE/ID/` in SAELens' format: two widths per layer."""
    root = tmp_path / "registry"
    for width, seed in ((256, 0), (128, 1)):
        saes = random_sae_set(tiny, d_sae=width, seed=seed)
        for point, sae in saes:
            sae.cfg.metadata["hook_name"] = f"blocks.{point.layer}.hook_resid_post"
            sae.cfg.metadata["model_name"] = "tiny-scope"
            save_sae(sae, root / "tiny-scope-res" / f"layer_{point.layer}" / f"width_{width}")
    monkeypatch.setenv(MIRROR_ENV, str(root))
    monkeypatch.setenv("REFUSAL_LENS_CACHE", str(tmp_path / "cache"))
    return root


def test_a_registry_spec_loads_as_a_set_once(mirror: Path, tiny: LoadedModel) -> None:
    saes = SAESet.load("sae-lens:tiny-scope-res:layer_*/width_256")
    assert saes.points == [HookPoint(layer, "resid_post") for layer in range(tiny.n_layers)]
    assert {sae.d_sae for _, sae in saes} == {256}
    assert saes.model["name"] == "tiny-scope" and saes.info["sae_ids"]
    saes.check_model(tiny)  # no weights hash: any model of the right width
    folder = Path(saes.path or "")
    assert folder.is_relative_to(Path(mirror).parent / "cache")
    again = SAESet.load("sae-lens:tiny-scope-res:layer_*/width_256")
    assert again.path == saes.path and again.fingerprint() == saes.fingerprint()
    assert SAESet.load(folder).fingerprint() == saes.fingerprint()  # an ordinary folder now


def test_registry_specs_with_no_match_are_one_line_errors(mirror: Path) -> None:
    with pytest.raises(UserError, match=r"not in the SAE registry mirror.*it has: tiny-scope-res"):
        SAESet.load("sae-lens:gemma-scope-2b-pt-res-canonical")
    with pytest.raises(UserError, match="no SAE id of tiny-scope-res matches 'layer_9/\\*'"):
        SAESet.load("sae-lens:tiny-scope-res:layer_9/*")
    with pytest.raises(UserError, match=r"matches two SAEs .* narrow the pattern"):
        SAESet.load("sae-lens:tiny-scope-res")  # both widths at each layer
    with pytest.raises(UserError, match="names no release"):
        parse_spec("sae-lens:")
