"""Guaranteed bounds on every pre-activation of a bfloat16 encoder from half its bytes.

A steering edit on a TopK SAE needs, at each edited layer of every decoding step, whether a
few selected latents are among the k largest pre-activations. Decoding is bound by memory on a
CPU: reading `W_enc` (`d_in x d_sae` bfloat16) costs about what it would cost the model to
read that many of its own weights. `Int8Bounds` keeps `W_enc` quantized per latent to int8
(half the bytes) with each latent's worst-case weight error, so one int8 matmul gives an
interval around every pre-activation that provably holds the exact one. A selected latent is
then decided by counting the latents certainly above it and those possibly above it; only
the few whose interval straddles it are computed exactly (`exact_pre`).

"Exact" here is `rnd(rnd(x . w_j) + b_j)`: the dot product of the bfloat16 input and weights
accumulated in float64 (exact for all but extreme ranges of magnitude), rounded to bfloat16,
plus the bias in bfloat16, as a bfloat16 matmul that accumulates in float32 computes it up to
its last bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

# slack on every bound, far above the float32 rounding of the bound's own arithmetic
BUILD_COLUMNS = 4096  # latents quantized at a time
_SLACK = 1.0 + 2.0**-10
# twice a bfloat16 rounding (relative): each rounding a bound covers
_ROUNDING = 2.0**-7
# exact pre-activations for at most this many encoder columns at once (a float64 copy each)
EXACT_COLUMNS = 1024


def accumulation(d_in: int) -> float:
    """What a float32 sum of `d_in` products can miss, relative to the sum of their absolute
    values (`d_in * 2**-24`, doubled), whatever order a kernel adds them in."""
    return 2.0 * d_in * 2.0**-24


# the CPU int8 kernel reads its input in blocks of this many values: other widths give wrong
# products or crash, so only encoders whose input width is a multiple of it get bounds
KERNEL_BLOCK = 16


@functools.cache
def int8_matmul_available() -> bool:
    """Whether this build of torch has the CPU int8 weight kernel `Int8Bounds` uses, and it
    computes a known product right."""
    try:
        probe = torch.ops.aten._weight_int8pack_mm(
            torch.ones(1, KERNEL_BLOCK, dtype=torch.bfloat16),
            torch.ones(2, KERNEL_BLOCK, dtype=torch.int8),
            torch.ones(2, dtype=torch.bfloat16),
        )
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(torch.equal(probe, torch.full((1, 2), float(KERNEL_BLOCK), dtype=torch.bfloat16)))


def exact_pre(centred: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
    """Pre-activations `[N, C]` of the given encoder columns (`w_enc` `[d_in, C]`): for half
    precision exact (accumulated in float64, rounded once), else the plain product, whose
    float32 rounding no top-k decision between distinct latents can tell from exact."""
    if centred.dtype not in (torch.bfloat16, torch.float16):
        return centred @ w_enc + b_enc
    wide = centred.double()
    dot = torch.cat(
        [
            (wide @ w_enc[:, start : start + EXACT_COLUMNS].double()).to(centred.dtype)
            for start in range(0, w_enc.shape[1], EXACT_COLUMNS)
        ]
        or [centred.new_zeros(len(centred), 0)],
        dim=-1,
    )
    return dot + b_enc


@dataclass(frozen=True)
class Int8Bounds:
    """`W_enc` (`[d_in, d_sae]`, bfloat16) as int8 per latent, with its worst-case error."""

    weight: torch.Tensor  # [d_sae, d_in] int8: round(W_enc[:, j] / scale[j])
    scale: torch.Tensor  # [d_sae] bfloat16
    error: torch.Tensor  # [d_sae] float32: max_i |W_enc[i, j] - weight[j, i] * scale[j]|
    amax: torch.Tensor  # [d_sae] float32: max_i |W_enc[i, j]|

    @classmethod
    def build(cls, w_enc: torch.Tensor) -> Int8Bounds | None:
        """The bounds of a CPU bfloat16 encoder, or None where they cannot be used."""
        if w_enc.dtype != torch.bfloat16 or w_enc.device.type != "cpu":
            return None
        if w_enc.shape[0] % KERNEL_BLOCK:
            return None
        if not int8_matmul_available():
            return None
        parts: list[tuple[torch.Tensor, ...]] = []
        # in column blocks: the float32 temporaries stay BUILD_COLUMNS wide, not W_enc's size
        for start in range(0, w_enc.shape[1], BUILD_COLUMNS):
            w = w_enc[:, start : start + BUILD_COLUMNS].detach().float()
            amax = w.abs().amax(0)
            scale = (amax / 127).clamp_min(torch.finfo(torch.bfloat16).tiny).bfloat16()
            weight = torch.round(w / scale.float()).clamp(-127, 127)
            error = (w - weight * scale.float()).abs().amax(0) * _SLACK
            parts.append((weight.to(torch.int8).t(), scale, error, amax))
        weight, scale, error, amax = (torch.cat(column) for column in zip(*parts, strict=True))
        return cls(weight.contiguous(), scale, error, amax)

    def interval(
        self, centred: torch.Tensor, b_enc: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(centre, radius)` `[N, d_sae]`, float32: every exact pre-activation `p` of the
        bfloat16 inputs `centred` (`x - b_dec`, `[N, d_in]`) has `|p - centre| <= radius`."""
        approx = torch.ops.aten._weight_int8pack_mm(centred, self.weight, self.scale).float()
        l1 = centred.float().abs().sum(-1, keepdim=True) * _SLACK
        centre = approx + b_enc.float()
        # quantization, the kernel's accumulation and its output's rounding, then the two
        # roundings of the exact pre-activation (its dot product, then the bias added)
        radius = l1 * (self.error + accumulation(centred.shape[-1]) * self.amax)
        radius += _ROUNDING * (2 * approx.abs() + centre.abs() + 2 * radius)
        return centre, radius * _SLACK


def rounding_interval(
    dot: torch.Tensor, b_enc: torch.Tensor, centred: torch.Tensor, amax: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(centre, radius)` `[N, C]`, float32: every exact pre-activation `p` of the inputs
    `centred` (`[N, d_in]`) has `|p - centre| <= radius`, from `dot`, a product with C encoder
    columns before the bias (in the inputs' dtype, accumulated in float32 and rounded once),
    and `amax`, those columns' largest absolute weights: the product's accumulation, its
    rounding and the bias's, and the two of the exact value."""
    l1 = centred.float().abs().sum(-1, keepdim=True) * _SLACK
    wide = dot.float()
    centre = wide + b_enc.float()
    radius = l1 * (accumulation(centred.shape[-1]) * amax)
    relative = _ROUNDING if dot.dtype in (torch.bfloat16, torch.float16) else 2.0**-22
    radius += relative * (wide.abs() + centre.abs() + 2 * radius)
    return centre, radius * _SLACK
