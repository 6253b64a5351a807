"""Int8 bounds on a bfloat16 encoder: every exact pre-activation inside its interval, and a
TopK copy's steering membership from them equal to a dense top-k."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.saes import SAEConfig, build_sae
from refusal_lens.saes.int8_bounds import Int8Bounds, exact_pre, int8_matmul_available

needs_kernel = pytest.mark.skipif(
    not int8_matmul_available(), reason="this build of torch has no CPU int8 weight kernel"
)


def _wide_topk(d_in: int = 64, d_sae: int = 2048, k: int = 16, seed: int = 1):
    torch.manual_seed(seed)
    sae = build_sae(SAEConfig("topk", d_in, d_sae, k=k))
    with torch.no_grad():
        sae.W_enc.normal_(0, d_in**-0.5)
        sae.b_enc.normal_(0, 0.5)
        sae.b_dec.normal_(0, 0.1)
    return sae


def _dense(copy, sae_in: torch.Tensor) -> torch.Tensor:
    """The TopK activations from exact pre-activations of every latent (ties count as in)."""
    assert copy.cfg.k is not None
    pre = exact_pre(sae_in - copy.b_dec, copy.W_enc, copy.b_enc)  # float64 sums: exact
    kth = pre.topk(copy.cfg.k, dim=-1).values.amin(-1, keepdim=True)
    return torch.relu(pre) * (pre >= kth)


@needs_kernel
def test_every_exact_pre_activation_lies_inside_its_interval() -> None:
    torch.manual_seed(0)
    w_enc = torch.randn(64, 512)
    w_enc[:, 0] = 0  # a latent with no weight
    w_enc[:, 1] *= 1e3  # and one far larger than the rest
    w_enc[3, 2] = 40  # one weight that sets its latent's scale
    w_enc = w_enc.bfloat16()
    b_enc = torch.randn(512).bfloat16()
    bounds = Int8Bounds.build(w_enc)
    assert bounds is not None and bounds.weight.dtype == torch.int8
    for scale in (1e-3, 1.0, 50.0):
        centred = (torch.randn(200, 64) * scale).bfloat16()
        pre = exact_pre(centred, w_enc, b_enc).float()
        centre, radius = bounds.interval(centred, b_enc)
        assert bool(((pre - centre).abs() <= radius).all())
        # and the intervals are narrow enough to decide most comparisons
        assert float((radius / pre.std()).median()) < 0.2


@needs_kernel
def test_bounds_built_in_column_blocks_equal_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    import refusal_lens.saes.int8_bounds as module

    torch.manual_seed(3)
    w_enc = (torch.randn(32, 1000) * torch.rand(1000) * 4).bfloat16()
    whole = Int8Bounds.build(w_enc)
    monkeypatch.setattr(module, "BUILD_COLUMNS", 96)  # 10 full blocks and a partial one
    blocks = Int8Bounds.build(w_enc)
    assert whole is not None and blocks is not None
    for name in ("weight", "scale", "error", "amax"):
        assert torch.equal(getattr(whole, name), getattr(blocks, name)), name
    assert blocks.weight.shape == (1000, 32) and blocks.weight.is_contiguous()


def test_no_bounds_where_the_kernel_cannot_read_the_width() -> None:
    assert Int8Bounds.build(torch.randn(24, 64).bfloat16()) is None  # 24 is not a block
    assert Int8Bounds.build(torch.randn(64, 64)) is None  # float32 steers with its own matmul


@needs_kernel
@pytest.mark.parametrize("rows", [1, 16, 300])
def test_bounded_topk_membership_equals_a_dense_top_k(rows: int) -> None:
    copy = _wide_topk().cast(torch.bfloat16)
    assert copy._int8_bounds is not None
    sae_in = (torch.randn(rows, 64) * 2).bfloat16()
    dense = _dense(copy, sae_in)
    assert torch.equal(copy.latent_values(sae_in, torch.arange(copy.d_sae)), dense)
    assert torch.equal(copy.latent_values(sae_in, torch.tensor([7, 1500])), dense[:, [7, 1500]])
    # a row with no positive selected latent reads no bounds and is zero
    assert not bool(copy.latent_values(-1e3 * copy.W_enc[:, 7:8].t(), torch.tensor([7])).any())


@needs_kernel
def test_bounded_membership_counts_a_tie_at_the_k_th_value_as_in() -> None:
    sae = _wide_topk()
    copy = sae.cast(torch.bfloat16)
    sae_in = (torch.randn(4, 64) * 2).bfloat16()
    top = _dense(copy, sae_in)[0].topk(copy.cfg.k or 1)
    kth = int(top.indices[top.values.argmin()])
    twin = next(i for i in range(copy.d_sae) if not bool(top.indices.eq(i).any()))
    with torch.no_grad():  # the twin's pre-activation equals the k-th's exactly
        sae.W_enc[:, twin] = sae.W_enc[:, kth]
        sae.b_enc[twin] = sae.b_enc[kth]
    copy = sae.cast(torch.bfloat16)  # a changed weight makes a new copy, with new bounds
    values = copy.latent_values(sae_in, torch.tensor([twin, kth]))
    assert float(values[0, 0]) > 0 and torch.equal(values[0, 0], values[0, 1])


@needs_kernel
def test_steering_a_bfloat16_copy_reads_the_bounds_and_edits_as_the_dense_path() -> None:
    sae = _wide_topk()
    x = (torch.randn(3, 5, 64) * 2).bfloat16()
    latents = torch.tensor([3, 17, 200, 1999])
    steered = sae.steer(x, latents, lambda f: -2 * f)
    copy = sae.cast(torch.bfloat16)
    dense = _dense(copy, x.reshape(-1, 64))[:, latents]
    delta = ((-3 * dense) @ copy.W_dec[latents]).reshape(x.shape)
    assert torch.equal(steered, x + delta.to(x.dtype))


@needs_kernel
def test_bounded_membership_in_row_chunks_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from refusal_lens.saes import architectures

    copy = _wide_topk().cast(torch.bfloat16)
    sae_in = (torch.randn(50, 64) * 2).bfloat16()
    latents = torch.arange(0, copy.d_sae, 7)
    whole = copy.latent_values(sae_in, latents)
    monkeypatch.setattr(architectures, "BOUNDED_ELEMENTS", copy.d_sae * len(latents) * 8)
    assert torch.equal(copy.latent_values(sae_in, latents), whole)  # 7 chunks of 8 rows
    assert copy.latent_values(sae_in[:0], latents).shape == (0, len(latents))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_membership_without_bounds_equals_a_dense_top_k_over_exact_values(
    dtype: torch.dtype,
) -> None:
    """Where there are no int8 bounds (a width the kernel cannot read, or float16), the
    product's rounding gets an interval of its own: still a top-k over exact values."""
    sae = _wide_topk(d_in=24, d_sae=1024)
    copy = sae.cast(dtype)
    assert copy._int8_bounds is None
    sae_in = (torch.randn(64, 24) * 2).to(dtype)
    assert torch.equal(copy.latent_values(sae_in, torch.arange(copy.d_sae)), _dense(copy, sae_in))
