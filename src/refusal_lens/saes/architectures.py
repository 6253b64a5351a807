"""SAE architectures behind one registry: TopK, BatchTopK, JumpReLU and ReLU (L1).

Parameters and math follow SAELens (`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`,
`b_dec [d_in]`, `threshold [d_sae]` for JumpReLU; with `apply_b_dec_to_input` the encoder sees
`x - b_dec`), so the same weights give the same latents in either library.

Every method takes any leading dimensions: `[..., d_in] -> [..., d_sae]`. The input is flattened
to `[N, d_in]` first, so TopK always selects over the latent axis and never over positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UserError
from .int8_bounds import Int8Bounds, exact_pre, rounding_interval
from .sparse_ops import ActiveLatents, decode_active

NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")
HALF = (torch.bfloat16, torch.float16)
# a TopK SAE screens membership with the k-th largest of this share of its latents (at least
# SCREEN_PER_K * k of them) before counting over all of them (bench/steering_hooks.py)
SCREEN_SHARE = 8
SCREEN_PER_K = 4
# a TopK SAE's int8-bounded membership holds at most this many float32 comparisons at once
BOUNDED_ELEMENTS = 1 << 24


@dataclass
class SAEConfig:
    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None  # TopK / BatchTopK
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    dtype: str = "float32"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.d_in <= 0 or self.d_sae <= 0:
            raise UserError(f"SAE sizes must be positive, got d_in={self.d_in} d_sae={self.d_sae}")
        if self.architecture in ("topk", "batchtopk") and not (self.k and 0 < self.k <= self.d_sae):
            raise UserError(f"a {self.architecture} SAE needs 0 < k <= d_sae, got k={self.k}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise UserError(
                f"unsupported normalize_activations={self.normalize_activations!r}; "
                f"supported: {', '.join(NORMALIZATIONS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SAE_CLASSES: dict[str, type[SparseAutoencoder]] = {}


def register_sae_class(name: str) -> Callable[[type[SparseAutoencoder]], type[SparseAutoencoder]]:
    def register(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
        cls.architecture = name
        SAE_CLASSES[name] = cls
        return cls

    return register


def build_sae(cfg: SAEConfig) -> SparseAutoencoder:
    if cfg.architecture not in SAE_CLASSES:
        raise UserError(
            f"unknown SAE architecture {cfg.architecture!r}; known: {', '.join(SAE_CLASSES)}"
        )
    return SAE_CLASSES[cfg.architecture](cfg)


class SparseAutoencoder(nn.Module):
    architecture: ClassVar[str] = ""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        self._casts: dict[torch.dtype, tuple[tuple[object, ...], SparseAutoencoder]] = {}
        self._packed_enc: torch.Tensor | None = None  # oneDNN's blocked W_enc (CPU casts)
        self._int8_bounds: Int8Bounds | None = None  # TopK membership from int8 (CPU casts)
        self._amax: tuple[tuple[object, ...], torch.Tensor] | None = None  # per latent

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    # -- public API over any leading dimensions --------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations `[..., d_sae]`."""
        flat, lead = self._flatten(x)
        sae_in, _ = self._normalize(flat)
        return self.activation(self.pre_activation(sae_in)).reshape(*lead, self.d_sae)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decoder output `[..., d_in]` from latents `[..., d_sae]`: in the model's units when
        `normalize_activations` is "none"; `forward` also undoes an input normalisation."""
        lead = latents.shape[:-1]
        flat = latents.reshape(-1, self.d_sae).to(self.W_dec.dtype)
        return (flat @ self.W_dec + self.b_dec).reshape(*lead, self.d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of `x`."""
        flat, lead = self._flatten(x)
        sae_in, norm = self._normalize(flat)
        recon = self._decode_flat(sae_in)
        return self._denormalize(recon, norm).reshape(*lead, self.d_in)

    def encode_and_reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(encode(x), forward(x))` from one encoder pass."""
        flat, lead = self._flatten(x)
        sae_in, norm = self._normalize(flat)
        latents = self.activation(self.pre_activation(sae_in))
        recon = self._denormalize(latents @ self.W_dec + self.b_dec, norm)
        return latents.reshape(*lead, self.d_sae), recon.reshape(*lead, self.d_in)

    def error(self, x: torch.Tensor) -> torch.Tensor:
        """`x - forward(x)`: what the SAE misses; `forward(x) + error(x) == x` exactly."""
        return x - self.forward(x)

    def steer(
        self,
        x: torch.Tensor,
        latents: torch.Tensor,
        edit: Callable[[torch.Tensor], torch.Tensor],
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`x + D(f') - D(f)`, with `f' = f` except `f'[latents] = edit(f[latents])`.

        The SAE error is kept, so an edit that changes nothing is the identity. Only the
        decoder rows of `latents` are touched; `keep` (`[...]` bool) leaves other rows alone.
        """
        if x.dtype in HALF and self.W_enc.dtype == torch.float32:
            return self.cast(x.dtype).steer(x, latents, edit, keep)
        flat, _ = self._flatten(x)
        sae_in, norm = self._normalize(flat)
        values = self.latent_values(sae_in, latents)
        delta = (edit(values) - values) @ self.W_dec[latents]
        delta = self._denormalize_delta(delta, norm).reshape(x.shape)
        if keep is not None:
            delta = delta * keep.unsqueeze(-1).to(delta.dtype)
        return x + delta.to(x.dtype)

    def cast(self, dtype: torch.dtype) -> SparseAutoencoder:
        """This SAE with its weights in `dtype`, made once and kept until a weight changes.

        `steer` runs in the dtype of the activations it edits when that is bfloat16 or float16:
        the encoder of a TopK SAE computes every pre-activation at each edited layer of every
        decoding step, and in the model's own dtype that matmul costs a third of float32's on a
        CPU with bfloat16 instructions (docs/guide.md, section 1). Which latents are in the top
        k can then differ from a float32 encoding where two pre-activations are within bfloat16's
        rounding of each other, as the activations themselves are rounded to bfloat16.
        """
        versions = (self.W_enc.device, *map(weight_version, self.parameters()))
        found = self._casts.get(dtype)
        if found is not None and found[0] == versions:
            return found[1]
        copy = build_sae(SAEConfig(**{**asdict(self.cfg), "dtype": str(dtype).split(".")[-1]}))
        copy.load_state_dict({k: v.detach().to(dtype) for k, v in self.state_dict().items()})
        copy.to(self.W_enc.device).requires_grad_(False)
        if copy.W_enc.device.type == "cpu":
            # the same `[d_in, d_sae]` values, stored as `nn.Linear` stores a weight: oneDNN's
            # half-precision matmul runs about 1.5x faster on this layout at decoding's few rows
            # (bench/steering_overhead.py); float32 is faster as it is, so only casts change
            copy.W_enc.data = copy.W_enc.data.t().contiguous().t()
            copy._packed_enc = _packed_weight(copy.W_enc)
            if copy.architecture == "topk":
                copy._int8_bounds = Int8Bounds.build(copy.W_enc)
        self._casts[dtype] = (versions, copy)
        return copy

    def encode_latents(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """`encode(x)[..., latents]`, computing no more of the encoder than needed."""
        flat, lead = self._flatten(x)
        sae_in, _ = self._normalize(flat)
        return self.latent_values(sae_in, latents).reshape(*lead, len(latents))

    def latent_values(self, sae_in: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Activations `[N, len(latents)]` of the given latents for normalised inputs."""
        return self.activation(self.pre_activation(sae_in))[:, latents]

    def active(self, x: torch.Tensor) -> ActiveLatents:
        """The non-zero latents of `x` (flattened to rows) as sparse triples."""
        flat, _ = self._flatten(x)
        sae_in, _ = self._normalize(flat)
        dense = self.activation(self.pre_activation(sae_in))
        rows, cols = dense.nonzero(as_tuple=True)
        return ActiveLatents(rows, cols, dense[rows, cols], dense.shape[0])

    # -- pieces subclasses override ---------------------------------------------------------
    def pre_activation(self, sae_in: torch.Tensor) -> torch.Tensor:
        return self._product(self._centred(sae_in)) + self.b_enc

    def _centred(self, sae_in: torch.Tensor) -> torch.Tensor:
        """What the encoder reads: `sae_in - b_dec` where the SAE applies it."""
        return sae_in - self.b_dec if self.cfg.apply_b_dec_to_input else sae_in

    def _product(self, centred: torch.Tensor) -> torch.Tensor:
        """`centred @ W_enc`."""
        packed = self._packed_enc
        if packed is not None and centred.device.type == "cpu" and not centred.requires_grad:
            # the same products as `centred @ W_enc`, bit for bit, from a weight oneDNN
            # reordered once instead of at every call (bench/steering_hooks.py)
            return torch.ops.mkldnn._linear_pointwise(
                centred.contiguous(), packed, None, "none", [], ""
            )
        return centred @ self.W_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode_flat(self, sae_in: torch.Tensor) -> torch.Tensor:
        return self.activation(self.pre_activation(sae_in)) @ self.W_dec + self.b_dec

    # -- helpers ---------------------------------------------------------------------------
    def _flatten(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        if x.shape[-1] != self.d_in:
            raise UserError(
                f"activation width {x.shape[-1]} does not match this SAE's d_in={self.d_in}; "
                "use the SAE trained for this model and hook point"
            )
        return x.reshape(-1, self.d_in).to(self.W_enc.dtype), x.shape[:-1]

    def _normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            scale = math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            return x * scale, (scale,)
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True).clamp_min(1e-5)
            return (x - mu) / std, (mu, std)
        return x, ()

    def _denormalize(self, recon: torch.Tensor, norm: tuple[torch.Tensor, ...]) -> torch.Tensor:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            return recon / norm[0]
        if mode == "layer_norm":
            return recon * norm[1] + norm[0]
        return recon

    def _denormalize_delta(
        self, delta: torch.Tensor, norm: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """A difference of two reconstructions, back in the model's units."""
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            return delta / norm[0]
        if mode == "layer_norm":
            return delta * norm[1]
        return delta

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on `x / scale` act on `x` itself (same latents, exact)."""
        self.W_enc.div_(scale)
        self.W_dec.mul_(scale)
        self.b_dec.mul_(scale)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


@register_sae_class("standard")
class ReluSAE(SparseAutoencoder):
    """ReLU latents, trained with an L1 penalty (SAELens `standard`)."""

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def latent_values(self, sae_in: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return torch.relu(_selected_pre(self, sae_in, latents))


@register_sae_class("jumprelu")
class JumpReluSAE(SparseAutoencoder):
    """`pre * (pre > threshold)` with a learned per-latent threshold (Gemma Scope)."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=self.W_enc.dtype))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre) * (pre > self.threshold)

    def latent_values(self, sae_in: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        pre = _selected_pre(self, sae_in, latents)
        return torch.relu(pre) * (pre > self.threshold[latents])


@register_sae_class("topk")
class TopKSAE(SparseAutoencoder):
    """The k largest pre-activations per input (ReLU'd); all others zero."""

    def topk(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.cfg.k is not None
        top = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.relu(top.values), top.indices

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = self.topk(pre)
        return torch.zeros_like(pre).scatter_(-1, indices, values)

    def latent_values(self, sae_in: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """A selected latent is in the top k exactly when fewer than k pre-activations exceed
        it (ties count as in, as `selected >= kth` would), and only a positive one can be
        non-zero. On a CPU the selected latents are computed first (`exact_pre`), and the rest
        of the encoder is read only for rows where one of them is positive (`_membership`: a
        bound from a fixed share of the latents, then int8 bounds or a count over the rest).
        On an accelerator, where each such decision waits for the device, a top-k over every
        latent decides instead (the same result)."""
        assert self.cfg.k is not None
        if sae_in.device.type != "cpu":
            # no data-dependent branch on an accelerator: each would wait for the device at
            # every edited layer of every decoding step
            pre = self.pre_activation(sae_in)
            selected = pre[:, latents]
            kth = pre.topk(self.cfg.k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
            return torch.relu(selected) * (selected >= kth)
        centred = self._centred(sae_in)
        selected = exact_pre(centred, self.W_enc[:, latents], self.b_enc[latents])
        inside = torch.zeros(selected.shape, dtype=torch.bool)
        rows = (selected > 0).any(-1).nonzero().flatten()
        # rows in chunks: each holds `[rows x latents, d_sae]` comparisons at most
        size = max(1, BOUNDED_ELEMENTS // (self.d_sae * max(1, len(latents))))
        with torch.no_grad():  # a decision: gradients flow through `selected` only
            for part in rows.split(size) if rows.numel() else ():
                inside[part] = self._membership(centred[part], selected[part], latents)
        return torch.relu(selected) * inside

    def _membership(
        self, centred: torch.Tensor, selected: torch.Tensor, latents: torch.Tensor
    ) -> torch.Tensor:
        """Whether each positive selected latent (`selected`, exact, `[N, L]`) is in its
        row's top k. A latent below a lower bound on the k-th largest of a fixed share of the
        latents has k others above it. The rest, for their rows only, are decided from an
        interval around every exact pre-activation: int8 bounds where the SAE has them, else
        the encoder's product and what its rounding can miss. A latent with k others certainly
        above it is out, one with fewer than k possibly above it is in, and only the latents
        whose intervals straddle an undecided one are computed exactly."""
        assert self.cfg.k is not None
        k, open_ = self.cfg.k, selected > 0
        share = max(SCREEN_PER_K * k, self.d_sae // SCREEN_SHARE)
        first = None  # the share's products, where the screen computed them
        if 2 * share <= self.d_sae:
            first, floor = self._share_floor(centred, share)
            open_ &= selected >= floor
        inside = torch.zeros_like(open_)
        rows = open_.any(-1).nonzero().flatten()
        if not rows.numel():
            return inside
        if rows.numel() < len(open_):
            centred, selected, open_ = centred[rows], selected[rows], open_[rows]
            first = None if first is None else first[rows]
        at, col = open_.nonzero(as_tuple=True)
        bounds = self._int8_bounds
        if bounds is not None:
            centre, radius = bounds.interval(centred, self.b_enc)
        else:
            if first is None:
                dot = self._product(centred)
            else:  # the rest of the latents only
                dot = torch.cat([first, centred @ self.W_enc[:, share:]], dim=-1)
            if centred.dtype not in HALF:
                # float32: no rounding of the product can tell two distinct latents apart, so
                # its values are counted as they are (the selected ones as computed above)
                pre = dot + self.b_enc
                pre[:, latents] = selected
                value = selected[at, col].unsqueeze(-1)
                inside[rows[at], col] = (pre[at] > value).sum(-1, dtype=torch.int32) < k
                return inside
            centre, radius = rounding_interval(dot, self.b_enc, centred, self._column_amax())
        gap = centre[at] - selected[at, col].float().unsqueeze(-1)
        certain = (gap > radius[at]).sum(-1)
        possible = (gap > -radius[at]).sum(-1)
        inside[rows[at], col] = possible < k
        undecided = ((possible >= k) & (certain < k)).nonzero().flatten()
        if undecided.numel():
            straddle = gap[undecided].abs() <= radius[at[undecided]]
            others = straddle.any(0).nonzero().flatten()
            row, latent = at[undecided], col[undecided]
            exact = exact_pre(centred[row], self.W_enc[:, others], self.b_enc[others])
            over = (exact > selected[row, latent].unsqueeze(-1)) & straddle[:, others]
            # a selected latent is not above itself, whatever the last bit of a float32 sum
            over &= others.unsqueeze(0) != latents[latent].unsqueeze(-1)
            inside[rows[row], latent] = certain[undecided] + over.sum(-1) < k
        return inside

    def _share_floor(self, centred: torch.Tensor, share: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `share` latents' products `[N, share]` (before the bias), and `[N, 1]`: a
        lower bound on the k-th largest exact pre-activation among them (so on the k-th
        largest of all), less what that product's rounding and accumulation can miss."""
        assert self.cfg.k is not None
        dot = centred @ self.W_enc[:, :share]
        amax = self._column_amax()[:share]
        centre, radius = rounding_interval(dot, self.b_enc[:share], centred, amax)
        lower = (centre - radius).topk(self.cfg.k, dim=-1, sorted=False).values
        return dot, lower.amin(-1, keepdim=True)

    def _column_amax(self) -> torch.Tensor:
        """Each latent's largest absolute encoder weight (float32), kept until a weight
        changes."""
        versions = (self.W_enc.device, weight_version(self.W_enc))
        if self._amax is None or self._amax[0] != versions:
            self._amax = (versions, self.W_enc.detach().abs().amax(0).float())
        return self._amax[1]

    def active(self, x: torch.Tensor) -> ActiveLatents:
        flat, _ = self._flatten(x)
        sae_in, _ = self._normalize(flat)
        values, indices = self.topk(self.pre_activation(sae_in))
        return ActiveLatents.from_topk(values, indices)

    def _decode_flat(self, sae_in: torch.Tensor) -> torch.Tensor:
        values, indices = self.topk(self.pre_activation(sae_in))
        return decode_active(ActiveLatents.from_topk(values, indices), self.W_dec) + self.b_dec


@register_sae_class("batchtopk")
class BatchTopKSAE(JumpReluSAE):
    """Trained with the top `k * batch` latents over the whole batch; at inference a JumpReLU
    with one global threshold (the running minimum selected activation), as BatchTopK SAEs are
    used and as SAELens saves them."""


def _selected_pre(
    sae: SparseAutoencoder, sae_in: torch.Tensor, latents: torch.Tensor
) -> torch.Tensor:
    """Pre-activations of a few latents only (element-wise activations need no others)."""
    if sae.cfg.apply_b_dec_to_input:
        sae_in = sae_in - sae.b_dec
    return sae_in @ sae.W_enc[:, latents] + sae.b_enc[latents]


def weight_version(weight: torch.Tensor) -> tuple[int, int | None]:
    """What tells a cached product of `weight` that the weight changed: its storage and its
    in-place version counter. A tensor made under `torch.inference_mode` (a half-precision
    copy cast during generation, a set loaded there) has no version counter; nothing edits
    such a weight in place, so its storage alone identifies it."""
    version = None if weight.is_inference() else weight._version
    return weight.data_ptr(), version


def _packed_weight(w_enc: torch.Tensor) -> torch.Tensor | None:
    """`W_enc` reordered once into oneDNN's blocked layout for bfloat16 matmuls on a CPU, or
    None where oneDNN has no bfloat16 kernels (the plain matmul is used then)."""
    if w_enc.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return None
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None
        return torch.ops.mkldnn._reorder_linear_weight(w_enc.t().contiguous(), 16)
    except (RuntimeError, AttributeError):  # an op this build of torch lacks
        return None
