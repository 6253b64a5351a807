"""Which SAE latents carry the refusal: LA-IG, integrated gradients through every SAE layer.

Metric per prompt, at the last prompt position: `m = logit[j] - logit[r]`, `j` the token the
model emits first when the refusal direction is ablated (per prompt), `r` the refusal token.

The path. At `a` in [0, 1], every SAE layer `l`, in forward order, rewrites the residual stream
`x_l` it receives as

    f_l(a) = (1 - a) E(x_l) + a f_l^p        e_l(a) = (1 - a) (x_l - D(E(x_l))) + a e_l^p
    h_l    = D(f_l(a)) + e_l(a)

(`f^p`, `e^p`: latents and SAE error of the direction-ablated run), and after the last SAE layer
the direction is ablated with strength `a`. So `a = 0` is the clean run and `a = 1` exactly the
ablated run; an upstream layer reaches the metric through the downstream layers' `E(x_l)`.

Estimator `path` (default): `dm/da` is the sum, over every place `a` enters, of the gradient
there times its velocity: `A_{l,i} = int da dm/df_{l,i}(a) * (f^p_{l,i} - E(x_l(a))_i)`, the same
for each error node, plus the ablation after the last SAE layer; midpoint rule over `steps`
points. All nodes together sum to `m(1) - m(0)` up to the quadrature error (the completeness
check, reported per prompt). Estimator `paper` reproduces the authors' code: `(f^p - f^c) *`
the mean gradient at `a = 0, 1/S, ..., (S-1)/S` (a left Riemann sum that never evaluates the
ablated end, a velocity that ignores upstream changes) and no ablation after the last SAE
layer.

Memory: per batch the dense latents of each layer exist once (the forward needs them); what is
kept is each prompt's score for the candidate latents only, averaged over the chosen positions
on the fly, never `[prompts, positions, d_sae]`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .direction import Direction
from .errors import UserError
from .executors.base import Executor
from .executors.codec import pack, unpack
from .generation import generate, length_sorted_batches
from .hooks import HookFn, HookPoint, add_hooks, record
from .interventions import apply, vector_sha256
from .judges.substring import SubstringJudge
from .models import ChatFormatter, EncodedBatch, LoadedModel
from .runs import stable_hash, write_json
from .saes import SAESet, SparseAutoencoder
from .scoring import last_position_logits

log = logging.getLogger(__name__)

ESTIMATORS = ("path", "paper")
POSITIONS = ("prompt", "post_instruction", "last", "all")


@dataclass(frozen=True)
class AttributionSettings:
    steps: int = field(default=10, metadata={"help": "integrated-gradient steps"})
    estimator: str = field(default="path", metadata={"choices": ESTIMATORS})
    # averaged over: instruction + template after the fixed header
    positions: str = field(
        default="prompt",
        metadata={"choices": POSITIONS, "help": "prompt positions attributions are averaged over"},
    )
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise UserError(f"unknown estimator {self.estimator!r}; use path or paper")
        if self.positions not in POSITIONS:
            raise UserError(f"unknown positions {self.positions!r}; use one of {POSITIONS}")
        if self.steps < 1 or self.batch_size < 1:
            raise UserError("attribution steps and batch size must be at least 1")

    @staticmethod
    def batch_for(generation_batch: int) -> int:
        """The attribution batch that goes with a generation batch: half of it (a backward pass
        through every SAE layer holds about twice a forward's activations), at most 8."""
        return max(1, min(8, generation_batch // 2))

    def alphas(self) -> list[float]:
        if self.estimator == "paper":
            return [s / self.steps for s in range(self.steps)]
        return [(s + 0.5) / self.steps for s in range(self.steps)]


@dataclass
class Attribution:
    """Per-prompt attributions of the candidate latents (and the SAE error of each layer)."""

    candidates: dict[int, torch.Tensor]  # layer -> latent indices
    scores: dict[int, torch.Tensor]  # layer -> [prompts, candidates], mean over positions
    error_scores: dict[int, torch.Tensor]  # layer -> [prompts]
    ablation_scores: torch.Tensor  # [prompts]: the ablation after the last SAE layer
    node_sums: torch.Tensor  # [prompts]: every node, every position (for completeness)
    metric_clean: torch.Tensor  # [prompts]
    metric_ablated: torch.Tensor  # [prompts]
    target_tokens: torch.Tensor  # [prompts]: j
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return int(self.metric_clean.shape[0])

    def completeness_gap(self) -> torch.Tensor:
        """`|sum of attributions - (m(1) - m(0))|` per prompt (path estimator: ~0)."""
        return (
            self.node_sums + self.ablation_scores - (self.metric_ablated - self.metric_clean)
        ).abs()

    def flat(self) -> tuple[list[tuple[int, int]], torch.Tensor]:
        """All (layer, latent) candidates and their scores `[prompts, n]`."""
        keys = [
            (layer, int(i)) for layer in sorted(self.candidates) for i in self.candidates[layer]
        ]
        scores = torch.cat([self.scores[layer] for layer in sorted(self.candidates)], dim=1)
        return keys, scores

    def global_top(self, k: int) -> list[tuple[int, int, float]]:
        """The k latents with the highest attribution averaged over prompts."""
        keys, scores = self.flat()
        mean = scores.mean(dim=0)
        order = mean.argsort(descending=True)[:k]
        return [(*keys[i], float(mean[i])) for i in order.tolist()]

    def per_prompt_top(self, k: int) -> list[list[tuple[int, int, float]]]:
        """For each prompt, in input order, its own top-k latents."""
        keys, scores = self.flat()
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        return [
            [(*keys[i], float(v)) for v, i in zip(vals.tolist(), idx.tolist(), strict=True)]
            for vals, idx in zip(top.values, top.indices, strict=True)
        ]

    def save(self, folder: str | Path) -> None:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            "ablation_scores": self.ablation_scores,
            "node_sums": self.node_sums,
            "metric_clean": self.metric_clean,
            "metric_ablated": self.metric_ablated,
            "target_tokens": self.target_tokens,
        }
        for layer in self.candidates:
            tensors[f"candidates.{layer}"] = self.candidates[layer]
            tensors[f"scores.{layer}"] = self.scores[layer]
            tensors[f"error_scores.{layer}"] = self.error_scores[layer]
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(out / "attribution.safetensors")
        )
        write_json(out / "attribution.json", self.info)

    @classmethod
    def load(cls, folder: str | Path) -> Attribution:
        path = Path(folder) / "attribution.safetensors"
        try:
            t = load_file(str(path))
        except (FileNotFoundError, SafetensorError) as exc:
            raise UserError(
                f"no readable attribution at {path} ({exc}); rerun find-latents"
            ) from exc
        info = json.loads((Path(folder) / "attribution.json").read_text())
        layers = sorted(int(k.split(".")[1]) for k in t if k.startswith("candidates."))
        return cls(
            {layer: t[f"candidates.{layer}"] for layer in layers},
            {layer: t[f"scores.{layer}"] for layer in layers},
            {layer: t[f"error_scores.{layer}"] for layer in layers},
            t["ablation_scores"],
            t["node_sums"],
            t["metric_clean"],
            t["metric_ablated"],
            t["target_tokens"],
            info,
        )


def choose_refusal_token(
    lm: LoadedModel,
    formatter: ChatFormatter,
    harmful: Sequence[str],
    *,
    judge: SubstringJudge | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 16,
) -> dict[str, Any]:
    """The token the model most often says first when it refuses (on train prompts)."""
    judge = judge or SubstringJudge()
    first = last_position_logits(lm, formatter, harmful, batch_size=batch_size).argmax(dim=-1)
    completions = generate(
        lm,
        formatter,
        harmful,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=False,
    )
    refused = [int(t) for t, r in zip(first.tolist(), judge.judge(completions), strict=True) if r]
    if not refused:
        raise UserError(
            "the model refused none of the prompts used to choose the refusal token; pass "
            "--refusal-token or use prompts it refuses"
        )
    counts = Counter(refused)
    token, count = counts.most_common(1)[0]
    return {
        "id": token,
        "string": lm.tokenizer.decode([token]),
        "share_of_refusals": count / len(refused),
        "n_refused": len(refused),
        "n_prompts": len(harmful),
        "counts": {lm.tokenizer.decode([t]): c for t, c in counts.most_common(5)},
    }


def position_mask(batch: EncodedBatch, formatter: ChatFormatter, positions: str) -> torch.Tensor:
    """`[batch, seq]` bool: the positions attributions are averaged over."""
    real = batch.attention_mask.bool()
    index = batch.position_ids  # counted from each prompt's first real token
    n_real = real.sum(dim=1, keepdim=True)
    if positions == "prompt":
        mask = index >= formatter.n_pre_instruction
    elif positions == "post_instruction":
        mask = index >= n_real - formatter.n_post_instruction
    elif positions == "last":
        mask = index == n_real - 1
    else:
        mask = index >= 1
    return mask & real


class _PathForward:
    """Hooks for one forward at `alpha` on the LA-IG path; keeps each layer's nodes."""

    def __init__(
        self,
        saes: SAESet,
        layers: list[int],
        unit: torch.Tensor,
        n_layers: int,
        ablated: dict[int, torch.Tensor],
        clean: dict[int, torch.Tensor],
        alpha: float,
        estimator: str,
        cache: dict[tuple[int, str], tuple[torch.Tensor, ...]] | None = None,
    ) -> None:
        self.cache = {} if cache is None else cache
        self.saes, self.layers, self.unit = saes, layers, unit
        self.n_layers, self.ablated, self.clean = n_layers, ablated, clean
        self.alpha, self.estimator = alpha, estimator
        first = next(iter(ablated.values()))
        self.alpha_t = torch.full((first.shape[0], 1, 1), alpha, device=first.device)
        self.alpha_t.requires_grad_(True)
        self.nodes: dict[int, tuple[torch.Tensor, ...]] = {}

    def hooks(self) -> list[tuple[HookPoint, HookFn]]:
        hooks: list[tuple[HookPoint, HookFn]] = [
            (HookPoint(layer, "resid_post"), self._sae_hook(layer)) for layer in self.layers
        ]
        if self.estimator == "path":
            hooks += [
                (HookPoint(layer, kind), self._ablate)
                for layer in range(max(self.layers) + 1, self.n_layers)
                for kind in ("resid_pre", "attn_out", "mlp_out")
            ]
        return hooks

    def _ablate(self, act: torch.Tensor, _point: HookPoint) -> torch.Tensor:
        d = self.unit.to(act.dtype)
        return act - self.alpha_t.to(act.dtype) * (act @ d).unsqueeze(-1) * d

    def _split(self, sae: SparseAutoencoder, layer: int, run: str) -> tuple[torch.Tensor, ...]:
        """Latents and SAE error of the clean or ablated run: constant along the path, so
        computed once per batch and shared by every step."""
        key = (layer, run)
        if key not in self.cache:
            x = (self.ablated if run == "ablated" else self.clean)[layer]
            latents, recon = sae.encode_and_reconstruct(x)
            self.cache[key] = (latents, x - recon)
        return self.cache[key]

    def _sae_hook(self, layer: int) -> HookFn:
        def hook(act: torch.Tensor, point: HookPoint) -> torch.Tensor:
            sae = self.saes[point]
            a = self.alpha
            f_x, recon_x = sae.encode_and_reconstruct(act)
            e_x = act.to(recon_x.dtype) - recon_x
            with torch.no_grad():
                f_p, e_p = self._split(sae, layer, "ablated")
                if self.estimator == "paper":
                    f_c, e_c = self._split(sae, layer, "clean")
                    v_f, v_e = f_p - f_c, e_p - e_c
                else:
                    v_f, v_e = f_p - f_x, e_p - e_x
            f_a = _node((1 - a) * f_x + a * f_p)
            e_a = _node((1 - a) * e_x + a * e_p)
            self.nodes[layer] = (f_a, e_a, v_f.detach(), v_e.detach())
            return (sae.decode(f_a) + e_a).to(act.dtype)

        return hook


@dataclass
class _Endpoints:
    """Activations at the SAE layers and last-position logits of the clean and ablated runs."""

    clean: dict[int, torch.Tensor]
    ablated: dict[int, torch.Tensor]
    clean_logits: torch.Tensor
    ablated_logits: torch.Tensor
    sae_parts: dict[tuple[int, str], tuple[torch.Tensor, ...]] = field(default_factory=dict)


@torch.no_grad()
def _endpoints(
    lm: LoadedModel, kwargs: dict[str, Any], saes: SAESet, direction: Direction
) -> _Endpoints:
    points = [HookPoint(layer, "resid_post") for layer in saes.layers]
    with record(lm.model, points) as clean:
        clean_logits = lm.model(**kwargs).logits[:, -1].float()
    with apply(lm.model, [direction.ablation()]), record(lm.model, points) as ablated:
        ablated_logits = lm.model(**kwargs).logits[:, -1].float()
    return _Endpoints(
        {p.layer: acts[0].float() for p, acts in clean.items()},
        {p.layer: acts[0].float() for p, acts in ablated.items()},
        clean_logits,
        ablated_logits,
    )


def _path_at(
    lm: LoadedModel,
    saes: SAESet,
    direction: Direction,
    ends: _Endpoints,
    alpha: float,
    estimator: str,
) -> _PathForward:
    unit = (direction.vector / direction.vector.norm()).float().to(lm.device)
    return _PathForward(
        saes,
        saes.layers,
        unit,
        lm.n_layers,
        ends.ablated,
        ends.clean,
        alpha,
        estimator,
        ends.sae_parts,
    )


def _node(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor whose gradient we read after backward, whether or not upstream needs grad."""
    if tensor.requires_grad:
        tensor.retain_grad()
    else:
        tensor.requires_grad_(True)
    return tensor


def attribute(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    direction: Direction,
    instructions: Sequence[str],
    refusal_token: int,
    *,
    candidates: dict[int, torch.Tensor] | None = None,
    settings: AttributionSettings = AttributionSettings(),
    out: str | Path | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> Attribution:
    """LA-IG attributions of `instructions` (see the module docstring).

    `candidates` (layer -> latent indices) limits what is kept; None keeps every latent (the
    `ap` baseline). With `out`, each batch is written as it finishes and a rerun reuses it.
    `executor`: where the batches are computed (default: here); each batch is one work item.
    """
    if not instructions:
        raise UserError("no prompts to attribute: the prompt list is empty")
    saes.check_model(lm)
    direction.check_model(lm)
    for point, sae in saes:
        if sae.cfg.normalize_activations != "none":
            raise UserError(
                f"the SAE at {point.name} normalises its input ({sae.cfg.normalize_activations}); "
                "attribution needs SAEs that act on the residual stream itself"
            )
    saes.place(lm.model)
    layers = saes.layers
    if candidates is None:
        candidates = {p.layer: torch.arange(sae.d_sae) for p, sae in saes}
    candidates = {
        layer: candidates.get(layer, torch.empty(0, dtype=torch.long)) for layer in layers
    }
    key = stable_hash(
        {
            "model": lm.weights_sha256,
            "dtype": str(lm.dtype),
            # the chat template and system prompt, as the model sees each prompt
            "template": formatter.render("{instruction}"),
            "saes": saes.fingerprint(),
            "direction": vector_sha256(direction.vector),
            "direction_layer": direction.layer,
            "prompts": list(instructions),
            "token": refusal_token,
            "candidates": {str(k): v.tolist() for k, v in candidates.items()},
            "settings": asdict(settings),
        }
    )
    parts = Path(out) / f"parts-{key}" if out is not None else None
    batches = length_sorted_batches(list(instructions), settings.batch_size)
    results: list[tuple[list[int], dict[str, torch.Tensor]]] = []
    pending: list[int] = []
    for number, indices in enumerate(batches):
        part = parts / f"batch-{number:05d}.safetensors" if parts is not None else None
        if part is not None and part.is_file():
            try:
                results.append((indices, load_file(str(part))))
                continue
            except SafetensorError:
                log.warning("recomputing %s: the file was cut short", part)
        pending.append(number)

    def keep(n: int, tensors: dict[str, torch.Tensor]) -> None:
        number = pending[n]
        if parts is not None:
            parts.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(parts / f"batch-{number:05d}.safetensors"))
        results.append((batches[number], tensors))

    if executor is None or executor.name == "local":
        for n, number in enumerate(
            tqdm(pending, desc="attribution", disable=not progress, unit="batch")
        ):
            texts = [instructions[i] for i in batches[number]]
            keep(n, _attribute_batch(
                lm, formatter, saes, direction, texts, refusal_token, candidates, settings
            ))  # fmt: skip
    else:
        executor.map(
            "attribute",
            attribution_call(saes, direction, refusal_token, candidates, settings),
            [{"instructions": [instructions[i] for i in batches[n]]} for n in pending],
            lambda n, data: keep(n, unpack(data)),
            desc="attribution",
            units=[len(batches[n]) for n in pending],
        )
    info = {
        "key": key,
        "settings": asdict(settings),
        "refusal_token": refusal_token,
        "layers": layers,
        "n_prompts": len(instructions),
    }
    return _assemble(results, len(instructions), candidates, info)


def attribution_call(
    saes: SAESet,
    direction: Direction,
    refusal_token: int,
    candidates: dict[int, torch.Tensor],
    settings: AttributionSettings,
) -> dict[str, Any]:
    """What every attribution work item shares, as plain data: the SAE set's folder (and its
    fingerprint, checked where it is read), the direction, the token, candidates, settings."""
    if saes.path is None:
        raise UserError("attribution on workers needs an SAE set saved in a folder")
    return {
        "saes": str(Path(saes.path).resolve()),
        "fingerprint": saes.fingerprint(),
        "direction": {
            "vector": direction.vector.float().tolist(),
            "dtype": str(direction.vector.dtype).removeprefix("torch."),
            "layer": direction.layer,
            "position": direction.position,
            "model": direction.model,
        },
        "refusal_token": refusal_token,
        "candidates": {str(layer): c.tolist() for layer, c in candidates.items()},
        "settings": asdict(settings),
    }


def attribute_item(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    shared: dict[str, Any],
    instructions: list[str],
) -> dict[str, Any]:
    """One attribution work item on a worker: `attribution_call`'s data and a batch."""
    data = shared["direction"]
    direction = Direction(
        torch.tensor(data["vector"]).to(getattr(torch, data["dtype"])),
        data["layer"],
        data["position"],
        data["model"],
    )
    candidates = {
        int(layer): torch.tensor(chosen, dtype=torch.long)
        for layer, chosen in shared["candidates"].items()
    }
    settings = AttributionSettings(**shared["settings"])
    tensors = _attribute_batch(
        lm, formatter, saes, direction, instructions, shared["refusal_token"], candidates, settings
    )
    return pack(tensors)


def _assemble(
    results: list[tuple[list[int], dict[str, torch.Tensor]]],
    n: int,
    candidates: dict[int, torch.Tensor],
    info: dict[str, Any],
) -> Attribution:
    def gather(name: str, width: int | None = None) -> torch.Tensor:
        shape = (n,) if width is None else (n, width)
        full = torch.zeros(shape, dtype=results[0][1][name].dtype)
        for indices, tensors in results:
            full[indices] = tensors[name]
        return full

    return Attribution(
        candidates,
        {layer: gather(f"scores.{layer}", len(c)) for layer, c in candidates.items()},
        {layer: gather(f"error_scores.{layer}") for layer in candidates},
        gather("ablation_scores"),
        gather("node_sums"),
        gather("metric_clean"),
        gather("metric_ablated"),
        gather("target_tokens"),
        info,
    )


def _attribute_batch(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    direction: Direction,
    instructions: list[str],
    refusal_token: int,
    candidates: dict[int, torch.Tensor],
    settings: AttributionSettings,
) -> dict[str, torch.Tensor]:
    batch = formatter.encode(instructions).to(lm.device)
    kwargs = {**batch.forward_kwargs(), "use_cache": False, "logits_to_keep": 1}
    rows = torch.arange(len(instructions))
    ends = _endpoints(lm, kwargs, saes, direction)
    if not (torch.isfinite(ends.clean_logits).all() and torch.isfinite(ends.ablated_logits).all()):
        raise UserError("the model produced NaN or inf logits; try --dtype float32")
    target = ends.ablated_logits.argmax(dim=-1)
    metric_clean = ends.clean_logits[rows, target] - ends.clean_logits[:, refusal_token]
    metric_ablated = ends.ablated_logits[rows, target] - ends.ablated_logits[:, refusal_token]
    mask = position_mask(batch, formatter, settings.positions).float()
    n_pos = mask.sum(dim=1).clamp_min(1)

    scores = {layer: torch.zeros(len(instructions), len(c)) for layer, c in candidates.items()}
    errors = {layer: torch.zeros(len(instructions)) for layer in candidates}
    node_sums = torch.zeros(len(instructions))
    ablation = torch.zeros(len(instructions))
    weight = 1.0 / settings.steps
    for alpha in settings.alphas():
        path = _path_at(lm, saes, direction, ends, alpha, settings.estimator)
        with torch.enable_grad(), add_hooks(lm.model, path.hooks()):
            logits = lm.model(**kwargs).logits[:, -1].float()
            metric = logits[rows, target] - logits[:, refusal_token]
            metric.sum().backward()
        for layer, (f_a, e_a, v_f, v_e) in path.nodes.items():
            assert f_a.grad is not None and e_a.grad is not None
            latent_part = f_a.grad * v_f  # [batch, seq, d_sae]
            error_part = (e_a.grad * v_e).sum(dim=-1)  # [batch, seq]
            node_sums += weight * (latent_part.sum(dim=(1, 2)) + error_part.sum(dim=1)).cpu()
            reduced = (latent_part * mask.unsqueeze(-1)).sum(dim=1) / n_pos.unsqueeze(-1)
            scores[layer] += weight * reduced[:, candidates[layer].to(reduced.device)].cpu()
            errors[layer] += weight * ((error_part * mask).sum(dim=1) / n_pos).cpu()
        if path.alpha_t.grad is not None:
            ablation += weight * path.alpha_t.grad.view(-1).cpu()
    tensors = {
        "metric_clean": metric_clean.cpu(),
        "metric_ablated": metric_ablated.cpu(),
        "target_tokens": target.cpu(),
        "node_sums": node_sums,
        "ablation_scores": ablation,
    }
    for layer in candidates:
        tensors[f"scores.{layer}"] = scores[layer]
        tensors[f"error_scores.{layer}"] = errors[layer]
    return {k: v.contiguous() for k, v in tensors.items()}


def path_logits(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    direction: Direction,
    instructions: list[str],
    alpha: float,
    estimator: str = "path",
) -> torch.Tensor:
    """Last-position logits at one point of the attribution path (for checks and tests)."""
    batch = formatter.encode(instructions).to(lm.device)
    kwargs = {**batch.forward_kwargs(), "use_cache": False, "logits_to_keep": 1}
    path = _path_at(lm, saes, direction, _endpoints(lm, kwargs, saes, direction), alpha, estimator)
    with torch.no_grad(), add_hooks(lm.model, path.hooks()):
        return lm.model(**kwargs).logits[:, -1].float()


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho (ties broken by order; NaN for fewer than 3 points)."""
    if a.numel() < 3:
        return float("nan")
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


@torch.no_grad()
def patching_effects(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    direction: Direction,
    instruction: str,
    refusal_token: int,
    target_token: int,
    latents: Sequence[tuple[int, int]],
    positions: str,
) -> tuple[torch.Tensor, float]:
    """The metric change from patching each latent alone, then all together, from its clean to
    its direction-ablated value at the chosen positions (one forward, one row per patch)."""
    from .interventions import PatchLatents

    n = len(latents)
    batch = formatter.encode([instruction] * (n + 1)).to(lm.device)
    kwargs = {**batch.forward_kwargs(), "use_cache": False, "logits_to_keep": 1}
    layers = sorted({layer for layer, _ in latents})
    points = [HookPoint(layer, "resid_post") for layer in layers]
    with apply(lm.model, [direction.ablation()]), record(lm.model, points) as ablated:
        lm.model(**kwargs)
    clean_logits = lm.model(**kwargs).logits[0, -1].float()
    columns = {layer: [j for j, (at, _) in enumerate(latents) if at == layer] for layer in layers}
    indices, values, rows = {}, {}, {}
    for point in points:
        layer = point.layer
        idx = torch.tensor([latents[j][1] for j in columns[layer]])
        indices[layer] = idx
        values[layer] = saes[point].encode(ablated[point][0].float())[..., idx]
        chooser = torch.zeros(n + 1, len(idx), dtype=torch.bool)
        for local, j in enumerate(columns[layer]):
            chooser[j, local] = True
        chooser[n] = True  # the last row patches the whole set
        rows[layer] = chooser
    patch = PatchLatents(saes, indices, values, position_mask(batch, formatter, positions), rows)
    with apply(lm.model, [patch]):
        logits = lm.model(**kwargs).logits[:, -1].float()
    metric = logits[:, target_token] - logits[:, refusal_token]
    base = clean_logits[target_token] - clean_logits[refusal_token]
    effects = (metric - base).cpu()
    return effects[:n], float(effects[n])


@dataclass(frozen=True)
class ValidationSettings:
    """How `validate-attribution` compares attribution with patching."""

    n_prompts: int = field(default=16, metadata={"help": "selection prompts patched"})
    top: int = field(default=20, metadata={"help": "latents compared per prompt"})
    top_k: int = field(default=5, metadata={"help": "k of the top-k overlap"})


def validate_attribution(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    direction: Direction,
    instructions: Sequence[str],
    refusal_token: int,
    latents: Sequence[tuple[int, int]],
    *,
    settings: AttributionSettings = AttributionSettings(),
    top_k: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Attribution scores against the real effect of patching each latent (clean -> ablated)
    on each prompt: Spearman correlation, top-k overlap, and the whole set's effect against
    the sum of its attributions."""
    candidates: dict[int, torch.Tensor] = {}
    for layer, latent in latents:
        candidates.setdefault(layer, torch.empty(0, dtype=torch.long))
        candidates[layer] = torch.cat([candidates[layer], torch.tensor([latent])])
    result = attribute(
        lm,
        formatter,
        saes,
        direction,
        instructions,
        refusal_token,
        candidates=candidates,
        settings=settings,
        progress=progress,
    )
    keys, scores = result.flat()
    order = [keys.index((layer, latent)) for layer, latent in latents]
    scores = scores[:, order]
    per_prompt = []
    all_predicted, all_actual = [], []
    for i, text in enumerate(tqdm(instructions, desc="patching", disable=not progress)):
        batch = formatter.encode([text])
        n_pos = int(position_mask(batch, formatter, settings.positions).sum())
        predicted = scores[i] * n_pos  # scores are means over the positions
        actual, together = patching_effects(
            lm,
            formatter,
            saes,
            direction,
            text,
            refusal_token,
            int(result.target_tokens[i]),
            latents,
            settings.positions,
        )
        all_predicted.append(predicted)
        all_actual.append(actual)
        k = min(top_k, len(latents))
        top_pred = set(predicted.topk(k).indices.tolist())
        top_real = set(actual.topk(k).indices.tolist())
        per_prompt.append(
            {
                "spearman": rank_correlation(predicted, actual),
                "top_k_overlap": len(top_pred & top_real) / k,
                "set_effect": together,
                "set_attribution": float(predicted.sum()),
                "metric_change": float(result.metric_ablated[i] - result.metric_clean[i]),
            }
        )
    rhos = torch.tensor([p["spearman"] for p in per_prompt])
    return {
        "n_prompts": len(instructions),
        "n_latents": len(latents),
        "top_k": top_k,
        "spearman_mean": float(rhos.nanmean()),
        "top_k_overlap_mean": sum(p["top_k_overlap"] for p in per_prompt) / len(per_prompt),
        "set_effect_mean": sum(p["set_effect"] for p in per_prompt) / len(per_prompt),
        "set_attribution_mean": sum(p["set_attribution"] for p in per_prompt) / len(per_prompt),
        "spearman_pooled": rank_correlation(torch.cat(all_predicted), torch.cat(all_actual)),
        "per_prompt": per_prompt,
        "settings": asdict(settings),
    }
