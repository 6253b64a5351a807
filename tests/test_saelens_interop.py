"""SAEs move both ways between refusal-lens and SAELens (needs the `sae-lens` extra).

CI installs the extra and sets REFUSAL_LENS_REQUIRE_EXTRAS=1, so there these tests fail rather
than skip when SAELens is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from refusal_lens.saes import SAESet, from_saelens, load_sae, save_sae
from refusal_lens.saes.architectures import SAEConfig, build_sae

if os.environ.get("REFUSAL_LENS_REQUIRE_EXTRAS") == "1":
    import sae_lens
else:
    sae_lens = pytest.importorskip("sae_lens")

from sae_lens.saes.sae import SAEMetadata


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name == "threshold":
                param.copy_(torch.rand_like(param) * 0.2)
            else:
                param.copy_(torch.randn_like(param) * 0.3)


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard", "batchtopk"])
def test_saved_here_loads_in_saelens(arch: str, tmp_path: Path) -> None:
    k = 4 if arch in ("topk", "batchtopk") else None
    ours = build_sae(
        SAEConfig(arch, 16, 64, k=k, metadata={"hook_name": "blocks.2.hook_resid_post"})
    )
    _randomise(ours)
    save_sae(ours, tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=1e-5)
    assert theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_post"


def test_saved_by_saelens_loads_here(tmp_path: Path) -> None:
    meta = SAEMetadata(hook_name="blocks.3.hook_resid_post", model_name="tiny")
    theirs = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=16, d_sae=64, k=4, metadata=meta))
    _randomise(theirs)
    theirs.save_model(str(tmp_path / "topk"))
    jump = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=16, d_sae=64, metadata=meta))
    _randomise(jump, seed=1)
    jump.save_model(str(tmp_path / "jump"))
    x = torch.randn(3, 16)
    for folder, sae in (("topk", theirs), ("jump", jump)):
        ours = load_sae(tmp_path / folder)
        with torch.no_grad():
            torch.testing.assert_close(ours.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours(x), sae(x), atol=1e-5, rtol=1e-5)
    # its hook name maps to our hook point
    single = SAESet.from_single(tmp_path / "topk")
    assert [p.name for p in single.points] == ["resid_post.3"]


def test_decoder_norm_rescaling_with_non_unit_rows(tmp_path: Path) -> None:
    cfg = sae_lens.TopKSAEConfig(d_in=16, d_sae=64, k=4, rescale_acts_by_decoder_norm=True)
    theirs = sae_lens.TopKSAE(cfg)
    _randomise(theirs)
    with torch.no_grad():
        theirs.W_dec.mul_(torch.rand(64, 1) * 3 + 0.2)  # rows far from unit norm
    theirs.save_model(str(tmp_path / "rescaled"))
    ours = load_sae(tmp_path / "rescaled")
    x = torch.randn(6, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_saelens_training_sae_with_decoder_norm_rescaling(tmp_path: Path) -> None:
    cfg = sae_lens.TopKTrainingSAEConfig(d_in=16, d_sae=64, k=4)
    trained = sae_lens.TopKTrainingSAE(cfg)
    _randomise(trained)
    x = torch.randn(6, 16)
    with torch.no_grad():
        expected = trained(x)
    trained.save_inference_model(str(tmp_path / "inference"))
    ours = load_sae(tmp_path / "inference")
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
        in_memory = from_saelens(sae_lens.SAE.load_from_disk(str(tmp_path / "inference")))
        torch.testing.assert_close(in_memory(x), expected, atol=1e-5, rtol=1e-5)
