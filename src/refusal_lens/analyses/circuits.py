"""Upstream harm latents -> downstream refusal latents (Yeo et al. 2025).

Edges. The effect of an upstream latent u (layer l) on a downstream latent d (layer l' > l) is
the change of d's activity (its mean activation over the last template tokens) when u is set
to zero at every content position (the instruction and the template after the fixed header).
Attribution patching estimates all edges at once: with g = d(activity of d)/dh_l (the residual
gradient through the real model, every path included), edge(u, d) = sum over positions of
delta_u . g, where delta_u = D(f with f_u = 0) - D(f) is the residual change of zeroing u; the
SAE error at layer l is a node of its own (its edge: zeroing the error, -e . g). Causality
needs no mask: a position only reaches later ones. The estimate is checked against real
patching (zero u, rerun, read d) on a sample, as the refusal-latent attributions are.

Clamp test. For each prompt, the upstream set's most salient content position (the largest
summed activation) is found, the set is clamped from there on, and the downstream refusal
activity on the last template tokens is compared with the clean run (paper: -45%), against a
random upstream set clamped from the same position. The harm latents came through the cosine
prefilter (their decoder rows lie along the refusal direction), so zeroing any of them removes
part of the direction itself, and the downstream refusal latents read that direction: a
control matched on layer and frequency alone cannot tell a circuit from the direction being
carried forward. The control is therefore drawn from the same prefiltered pool (the latents
of that layer closest in cosine to the direction, the studied ones left out) and matched on
cosine as well as frequency; the summary records the matching and the mean cosines.
Each downstream latent is read under the clamp of the upstream latents strictly below its
layer (a same-layer latent would move it through the SAE's own reconstruction).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..attribution import position_mask, rank_correlation
from ..config import settings_dict
from ..data import load_prompts
from ..data.promptset import prompt_hash
from ..direction import Direction
from ..errors import UserError
from ..evaluation.statistics import bootstrap_mean, interval_cell
from ..generation import length_sorted_batches
from ..hooks import HookPoint, add_hooks, record
from ..interventions import EditLatents, apply, bind
from ..latents import LatentSet, latent_statistics
from ..models import ChatFormatter, LoadedModel
from ..runs import RunDir, stable_hash, write_json
from ..saes import SAESet
from .common import start_analysis
from .inputs import AnalysisInputs
from .jailbreaks import difference

Pairs = Sequence[tuple[int, int]]
ERROR = -1  # the latent index of an SAE error node


@dataclass(frozen=True)
class CircuitSettings:
    dataset: str = "harmful_test"  # held-out prompts the edges are averaged over
    n_prompts: int = 64
    k: int | None = None  # downstream refusal latents: top k of their set (None: its k)
    k_upstream: int | None = None  # upstream harm latents: top k of their set (None: all)
    positions: int | None = None  # last template tokens read (None: the template's count)
    n_validate: int = 16  # prompts of the real-patching check
    clamp_value: float = 0.0  # the upstream set is set to this value (0: suppressed)
    random_seeds: tuple[int, ...] = (0,)
    # the control's pool: per layer, this many latents closest in cosine to the refusal
    # direction (None: the prefilter the harm latents were selected with, else 10)
    control_pool: int | None = None
    control_neighbours: int = 3  # the control is drawn among this many nearest in the pool
    top_edges: int = 30
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_prompts", "n_validate", "top_edges", "batch_size", "control_neighbours"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("k", "k_upstream", "positions", "control_pool"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{name} must be positive, got {value}")


QUICK_CIRCUITS: dict[str, Any] = {"n_prompts": 16, "n_validate": 8}


def _activity(
    saes: SAESet, acts: dict[int, torch.Tensor], downstream: Pairs, positions: int
) -> torch.Tensor:
    """`[batch, len(downstream)]`: each latent's mean activation over the last positions."""
    columns = []
    for layer, latent in downstream:
        sae = saes[HookPoint(layer, "resid_post")]
        values = sae.encode_latents(acts[layer][:, -positions:], torch.tensor([latent]))
        columns.append(values[..., 0].mean(dim=1))
    return torch.stack(columns, dim=1)


def _zeroed_deltas(
    saes: SAESet, h: torch.Tensor, layer: int, latents: Sequence[int], mask: torch.Tensor
) -> list[torch.Tensor]:
    """Residual change of zeroing each latent (or, for ERROR, the SAE error) at the masked
    positions: `[batch, seq, d_model]` each."""
    sae = saes[HookPoint(layer, "resid_post")]
    keep = mask.unsqueeze(-1).to(h.dtype)
    out = []
    for latent in latents:
        if latent == ERROR:
            delta = -(sae.error(h.float())).to(h.dtype)
        else:
            delta = sae.steer(h, torch.tensor([latent]), lambda v: torch.zeros_like(v)) - h
        out.append(delta * keep)
    return out


def _batch_edges(
    lm: LoadedModel,
    saes: SAESet,
    batch: Any,
    mask: torch.Tensor,
    upstream: Pairs,
    downstream: Pairs,
    positions: int,
) -> np.ndarray:
    """Edges summed over one batch: one forward, one backward per downstream latent."""
    up_layers = sorted({layer for layer, _ in upstream})
    down_layers = sorted({layer for layer, _ in downstream})
    zeros: dict[int, torch.Tensor] = {}
    clean: dict[int, torch.Tensor] = {}
    down: dict[int, torch.Tensor] = {}

    def hook(act: torch.Tensor, point: HookPoint) -> torch.Tensor:
        if point.layer in up_layers:  # a zero the gradient of every downstream path reaches
            clean[point.layer] = act.detach()
            zeros[point.layer] = torch.zeros_like(act, requires_grad=True)
            act = act + zeros[point.layer]
        if point.layer in down_layers:
            down[point.layer] = act
        return act

    edges = np.zeros((len(upstream), len(downstream)))
    points = [HookPoint(layer, "resid_post") for layer in sorted({*up_layers, *down_layers})]
    with torch.enable_grad(), add_hooks(lm.model, [(p, hook) for p in points]):
        lm.model(**batch.forward_kwargs(), use_cache=False, logits_to_keep=1)
        activity = _activity(saes, down, downstream, positions).float().sum(dim=0)
        for j, (d_layer, _) in enumerate(downstream):
            below = [layer for layer in up_layers if layer < d_layer]
            if not below:
                continue
            grads = torch.autograd.grad(
                activity[j], [zeros[layer] for layer in below], retain_graph=True
            )
            for layer, grad in zip(below, grads, strict=True):
                rows = [i for i, (u_layer, _) in enumerate(upstream) if u_layer == layer]
                with torch.no_grad():
                    deltas = _zeroed_deltas(
                        saes, clean[layer], layer, [upstream[i][1] for i in rows], mask
                    )
                    for i, delta in zip(rows, deltas, strict=True):
                        edges[i, j] += float((delta.float() * grad.float()).sum())
    return edges


def edge_attribution(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    upstream: Pairs,
    downstream: Pairs,
    texts: Sequence[str],
    *,
    positions: int,
    batch_size: int,
    progress: bool = True,
) -> np.ndarray:
    """`[len(upstream), len(downstream)]`: the estimated change of each downstream latent's
    mean activity (averaged over prompts) when the upstream latent is zeroed at the content
    positions; NaN where the upstream latent is not below the downstream one. Upstream pairs
    with latent ERROR stand for their layer's SAE error."""
    if not texts:
        raise UserError("no prompts for the edge attribution: the prompt list is empty")
    edges = np.zeros((len(upstream), len(downstream)))
    for indices in tqdm(
        length_sorted_batches(list(texts), batch_size),
        desc="edge attribution",
        unit="batch",
        disable=not progress,
    ):
        batch = formatter.encode([texts[i] for i in indices]).to(lm.device)
        mask = position_mask(batch, formatter, "prompt")
        edges += _batch_edges(lm, saes, batch, mask, upstream, downstream, positions)
    edges /= len(texts)
    for i, (u_layer, _) in enumerate(upstream):
        for j, (d_layer, _) in enumerate(downstream):
            if u_layer >= d_layer:
                edges[i, j] = np.nan
    return edges


@torch.no_grad()
def patched_edges(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    upstream: Pairs,
    downstream: Pairs,
    texts: Sequence[str],
    *,
    positions: int,
    batch_size: int,
    fraction: float = 1.0,
) -> np.ndarray:
    """The same quantity as `edge_attribution`, by real patching: each upstream latent scaled
    by 1 - `fraction` from the instruction's first token on, the model rerun, the downstream
    activity read, the change divided by `fraction` (1: zeroed; small: a finite difference)."""
    points = [HookPoint(layer, "resid_post") for layer in sorted({d for d, _ in downstream})]
    effects = np.zeros((len(upstream), len(downstream)))

    def read(chunk: list[str], interventions: list[Any]) -> torch.Tensor:
        batch = formatter.encode(chunk).to(lm.device)
        bound = bind(interventions, chunk, batch.attention_mask)
        with apply(lm.model, bound), record(lm.model, points) as acts:
            lm.model(**batch.forward_kwargs(), use_cache=False, logits_to_keep=1)
        layers = {p.layer: acts[p][0] for p in points}
        return _activity(saes, layers, downstream, positions).float().sum(dim=0)

    for indices in length_sorted_batches(list(texts), batch_size):
        chunk = [texts[i] for i in indices]
        base = read(chunk, [])
        for i, pair in enumerate(upstream):
            scaled = EditLatents(
                saes,
                (pair,),
                "scale",
                1.0 - fraction,
                positions="prompt",
                edit_sinks=True,
                from_position=formatter.n_pre_instruction,
            )
            effects[i] += (read(chunk, [scaled]) - base).cpu().numpy() / fraction
    return effects / len(texts)


def salient_positions(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    latents: Pairs,
    texts: Sequence[str],
    *,
    batch_size: int,
) -> list[int]:
    """Per prompt, the content position (from the formatted prompt's first real token) where
    the set's summed activation is largest."""
    points = [HookPoint(layer, "resid_post") for layer in sorted({layer for layer, _ in latents})]
    out = [0] * len(texts)
    with torch.no_grad():
        for indices in length_sorted_batches(list(texts), batch_size):
            batch = formatter.encode([texts[i] for i in indices]).to(lm.device)
            mask = position_mask(batch, formatter, "prompt")
            with record(lm.model, points) as acts:
                lm.model(**batch.forward_kwargs(), use_cache=False, logits_to_keep=1)
            total = torch.zeros(mask.shape)
            for layer, latent in latents:
                sae = saes[HookPoint(layer, "resid_post")]
                act = acts[HookPoint(layer, "resid_post")][0]
                total += sae.encode_latents(act, torch.tensor([latent]))[..., 0].float().cpu()
            total = total.masked_fill(~mask.cpu(), -torch.inf)
            pads = (batch.attention_mask == 0).sum(dim=1).cpu()
            for row, i in enumerate(indices):
                out[i] = int(total[row].argmax()) - int(pads[row])
    return out


@torch.no_grad()
def clamp_drops(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    upstream: Pairs,
    downstream: Pairs,
    texts: Sequence[str],
    starts: Sequence[int],
    *,
    value: float,
    positions: int,
) -> np.ndarray:
    """Per prompt: 1 - (downstream activity with the upstream set clamped to `value` from the
    prompt's start position on) / (clean downstream activity); NaN where it is zero.

    Each downstream latent is read under the clamp of the upstream latents strictly below its
    layer only: an upstream latent at the same layer would move it through its own SAE's
    reconstruction, not through the model. Downstream latents with no upstream latent below
    are left out of both activities."""
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for layer, latent in downstream:
        if any(u < layer for u, _ in upstream):
            by_layer.setdefault(layer, []).append((layer, latent))
    if not by_layer:
        raise UserError("no upstream latent lies below a downstream one: nothing to clamp")
    points = [HookPoint(layer, "resid_post") for layer in by_layer]
    drops = np.full(len(texts), np.nan)
    for i, (text, start) in enumerate(zip(texts, starts, strict=True)):
        batch = formatter.encode([text]).to(lm.device)
        kwargs = {**batch.forward_kwargs(), "use_cache": False, "logits_to_keep": 1}
        with record(lm.model, points) as acts:
            lm.model(**kwargs)
        clean = sum(
            float(_activity(saes, {p.layer: acts[p][0]}, by_layer[p.layer], positions).sum())
            for p in points
        )
        clamped = 0.0
        for point in points:
            below = tuple(p for p in upstream if p[0] < point.layer)
            clamp = EditLatents(
                saes, below, "set", value, "prompt", from_position=start, edit_sinks=True
            )
            with apply(lm.model, [clamp]), record(lm.model, [point]) as acts:
                lm.model(**kwargs)
            layers = {point.layer: acts[point][0]}
            clamped += float(_activity(saes, layers, by_layer[point.layer], positions).sum())
        if clean > 0:
            drops[i] = 1.0 - clamped / clean
    return drops


def decoder_cosines(saes: SAESet, direction: Direction) -> dict[int, torch.Tensor]:
    """Per layer, the cosine of every decoder row with the refusal direction (on the CPU)."""
    out = {}
    for point, sae in saes:
        rows = sae.W_dec.detach().float()
        unit = direction.vector.float().to(rows.device)
        unit = unit / unit.norm()
        out[point.layer] = (rows @ unit / rows.norm(dim=1).clamp_min(1e-8)).cpu()
    return out


def matched_control(
    reference: Pairs,
    cosine: dict[int, torch.Tensor],
    frequency: dict[int, torch.Tensor],
    pool: int,
    seed: int,
    *,
    neighbours: int = 3,
    exclude: Iterable[tuple[int, int]] = (),
) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """For each reference latent, another latent of its layer from the cosine-prefiltered pool
    (the `pool` latents of that layer whose decoder rows are closest in cosine to the refusal
    direction), never a reference latent or one of `exclude`: one of the `neighbours` nearest
    to it in (cosine, log frequency), each axis in units of its spread over the pool, chosen
    at random with the seed. Where a layer's pool runs out, it is widened to the next latents
    by cosine; returns the chosen latents and, per widened layer, the pool size used."""
    rng = random.Random(seed)
    taken = {(int(a), int(b)) for a, b in (*reference, *exclude)}
    widened: dict[int, int] = {}
    chosen = []
    for layer, latent in reference:
        cos = cosine[layer]
        log_freq = frequency[layer].float().clamp_min(1e-6).log()
        order = cos.argsort(descending=True).tolist()
        size = min(pool, len(order))
        free = [i for i in order[:size] if (layer, i) not in taken]
        while not free and size < len(order):
            size = min(len(order), size + pool)
            free = [i for i in order[:size] if (layer, i) not in taken]
        if not free:
            raise UserError(f"layer {layer} has no latent left for the random control")
        if size > pool:
            widened[layer] = size
        base = order[: max(size, 2)]
        scale_cos = float(cos[base].std()) or 1.0
        scale_freq = float(log_freq[base].std()) or 1.0
        distance = {
            i: abs(float(cos[i] - cos[latent])) / scale_cos
            + abs(float(log_freq[i] - log_freq[latent])) / scale_freq
            for i in free
        }
        nearest = sorted(free, key=lambda i: (distance[i], i))[:neighbours]
        pick = rng.choice(nearest)
        taken.add((layer, pick))
        chosen.append((layer, pick))
    return chosen, widened


def _describe_latents(
    latents: Pairs, cosine: dict[int, torch.Tensor], frequency: dict[int, torch.Tensor], pool: int
) -> dict[str, Any]:
    """Mean cosine with the refusal direction, mean log10 activation frequency and the share
    of `latents` inside the cosine-prefiltered pool of their layer."""
    cos = [float(cosine[layer][latent]) for layer, latent in latents]
    freq = [float(frequency[layer][latent].clamp_min(1e-6).log10()) for layer, latent in latents]
    ranks = [int((cosine[layer] > cosine[layer][latent]).sum()) for layer, latent in latents]
    return {
        "cosine_mean": round(float(np.mean(cos)), 4),
        "cosines": [round(c, 4) for c in cos],
        "log10_frequency_mean": round(float(np.mean(freq)), 4),
        "in_pool": round(float(np.mean([r < pool for r in ranks])), 4),
    }


def _pool_size(settings: CircuitSettings, harm: LatentSet) -> int:
    if settings.control_pool is not None:
        return settings.control_pool
    recorded = harm.info.get("candidates_per_layer")
    if recorded is None:
        recorded = (harm.info.get("settings") or {}).get("per_layer")
    return int(recorded) if recorded else 10


class StageCache:
    """Each stage's result (an array) appended to a keyed JSONL once computed, so a rerun or
    an interrupted run reuses the stages it already has; the key holds everything the
    numbers depend on (model, SAEs, prompts, positions, the stage's own inputs)."""

    def __init__(self, run: RunDir, base: dict[str, Any]) -> None:
        self.run, self.base = run, base
        self.known = {r["stage"]: r["values"] for r in run.read_jsonl("stages.jsonl", "circuits")}
        self.reused: list[str] = []

    def __call__(self, stage: str, inputs: Any, compute: Callable[[], np.ndarray]) -> np.ndarray:
        name = f"{stage}:{stable_hash({**self.base, 'stage': stage, 'inputs': inputs})}"
        if name in self.known:
            self.reused.append(stage)
            return np.array(self.known[name], dtype=float)
        values = np.asarray(compute(), dtype=float)
        stored = np.where(np.isfinite(values), values, None).tolist()
        self.run.append_jsonl("stages.jsonl", "circuits", [{"stage": name, "values": stored}])
        self.known[name] = stored
        return values


def _estimate(values: np.ndarray, seed: int) -> dict[str, Any] | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    e = bootstrap_mean(finite, seed=seed)
    return {"mean": round(e.mean, 4), "ci95": [round(e.low, 4), round(e.high, 4)], "n": e.n}


def circuits_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    refusal: LatentSet,
    harm: LatentSet,
    settings: CircuitSettings,
    out: str | Path,
    *,
    direction: Direction,
    data_dir: str | Path | None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Edges, their check against real patching, and the clamp test of the harm latents
    against a control from the same cosine-prefiltered pool (`direction`: the refusal
    direction that prefilter used)."""
    started = time.perf_counter()
    run = start_analysis(
        "circuits", settings, lm, saes, out, latent_sets=[refusal, harm], direction=direction
    )
    positions = settings.positions or formatter.n_post_instruction
    downstream = list(refusal.top(settings.k))
    upstream = [p for p in harm.top(settings.k_upstream) if p not in set(downstream)]
    if not any(u < max(d for d, _ in downstream) for u, _ in upstream):
        raise UserError(
            "no upstream latent lies below a downstream one: the harm latents must include "
            "layers under the refusal latents' deepest layer"
        )
    banned = harm.selection_hashes() | refusal.selection_hashes()
    prompts = load_prompts(settings.dataset, data_dir=data_dir)
    texts = [t for t in prompts.texts() if prompt_hash(t) not in banned][: settings.n_prompts]
    if not texts:
        raise UserError(f"every prompt of {settings.dataset} selected the latents; use another")
    errors = [(layer, ERROR) for layer in sorted({u for u, _ in upstream})]
    nodes = upstream + errors
    cache = StageCache(
        run,
        {
            "model": lm.weights_sha256,
            "dtype": str(lm.dtype),
            "saes": saes.fingerprint(),
            "system": formatter.system,
            "positions": positions,
            "downstream": downstream,
        },
    )
    sample = texts[: settings.n_validate]
    common = {"positions": positions, "batch_size": settings.batch_size}
    echo(f"edges: {len(nodes)} upstream nodes x {len(downstream)} downstream latents")
    edges = cache(
        "edges",
        {"nodes": nodes, "texts": texts},
        lambda: edge_attribution(lm, formatter, saes, nodes, downstream, texts, **common),
    )
    estimated = cache(
        "estimated",
        {"nodes": upstream, "texts": sample},
        lambda: edge_attribution(
            lm, formatter, saes, upstream, downstream, sample, progress=False, **common
        ),
    )
    patched = cache(
        "patched",
        {"nodes": upstream, "texts": sample},
        lambda: patched_edges(lm, formatter, saes, upstream, downstream, sample, **common),
    )
    valid = np.isfinite(estimated)
    a, b = torch.tensor(estimated[valid]), torch.tensor(patched[valid])
    validation = {
        "n_prompts": len(sample),
        "n_edges": int(valid.sum()),
        "pearson": float(np.corrcoef(a, b)[0, 1]) if valid.sum() > 2 else None,
        "spearman": rank_correlation(a, b),
    }
    starts = [
        int(x)
        for x in cache(
            "starts",
            {"nodes": upstream, "texts": texts},
            lambda: salient_positions(
                lm, formatter, saes, upstream, texts, batch_size=settings.batch_size
            ),
        )
    ]

    def drops(latents: Pairs) -> np.ndarray:
        return cache(
            "clamp below",
            {
                "nodes": list(latents),
                "texts": texts,
                "starts": starts,
                "value": settings.clamp_value,
            },
            lambda: clamp_drops(
                lm,
                formatter,
                saes,
                latents,
                downstream,
                texts,
                starts,
                value=settings.clamp_value,
                positions=positions,
            ),
        )

    clamp = {"harm latents": drops(upstream)}
    frequency = latent_statistics(
        lm, formatter, saes, texts, batch_size=settings.batch_size, progress=False
    ).frequency
    cosine = decoder_cosines(saes, direction)
    pool = _pool_size(settings, harm)
    described = {"harm latents": _describe_latents(upstream, cosine, frequency, pool)}
    control: dict[str, Any] = {
        "matched_on": (
            "same layer; nearest in (cosine of the decoder row with the refusal direction, log "
            "activation frequency on the prompts) within the cosine-prefiltered pool of that "
            f"layer (its top {pool} latents by cosine), studied latents excluded; drawn among "
            f"the {settings.control_neighbours} nearest"
        ),
        "pool_per_layer": pool,
        "neighbours": settings.control_neighbours,
        "sets": {},
    }
    for seed in settings.random_seeds:
        name = f"random (seed {seed})"
        chosen, widened = matched_control(
            upstream,
            cosine,
            frequency,
            pool,
            seed,
            neighbours=settings.control_neighbours,
            exclude=downstream,
        )
        clamp[name] = drops(chosen)
        described[name] = _describe_latents(chosen, cosine, frequency, pool)
        control["sets"][name] = {
            "latents": [list(p) for p in chosen],
            "widened_pools": {str(layer): size for layer, size in widened.items()},
        }
    control["sets"] = {"harm latents": {"latents": [list(p) for p in upstream]}, **control["sets"]}
    for name, facts in described.items():
        control["sets"][name].update(facts)
    if cache.reused:
        echo(f"reused from {run.path / 'stages.jsonl'}: {', '.join(cache.reused)}")
    harm_drops = clamp["harm latents"]
    clamp_rows = [
        {
            "upstream": name,
            "cosine_mean": described[name]["cosine_mean"],
            "drop": _estimate(drops, settings.seed),
            "difference_to_harm": None
            if name == "harm latents"
            else difference(harm_drops, drops, seed=settings.seed),
        }
        for name, drops in clamp.items()
    ]
    ranked = sorted(
        (
            (i, j)
            for i in range(len(nodes))
            for j in range(len(downstream))
            if np.isfinite(edges[i, j])
        ),
        key=lambda ij: -abs(edges[ij]),
    )
    top = [
        {
            "upstream": {
                "layer": nodes[i][0],
                "latent": nodes[i][1] if nodes[i][1] != ERROR else "error",
            },
            "downstream": {"layer": downstream[j][0], "latent": downstream[j][1]},
            "effect": round(float(edges[i, j]), 6),
        }
        for i, j in ranked[: settings.top_edges]
    ]
    summary = {
        "model": lm.identity(),
        "settings": settings_dict(settings),
        "positions": positions,
        "upstream": [list(p) for p in upstream],
        "downstream": [list(p) for p in downstream],
        "n_prompts": len(texts),
        "edges": top,
        "validation": validation,
        "clamp": clamp_rows,
        "control": control,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(run.file("circuits.json"), summary)
    (run.path / "circuits.md").write_text(circuits_markdown(summary))
    return summary


def circuits_markdown(summary: dict[str, Any]) -> str:
    v = summary["validation"]
    lines = [
        "# Upstream harm latents -> downstream refusal latents",
        "",
        f"{len(summary['upstream'])} upstream latents (plus their layers' SAE errors), "
        f"{len(summary['downstream'])} downstream refusal latents, {summary['n_prompts']} "
        f"held-out prompts; downstream activity on the last {summary['positions']} template "
        f"tokens. Attribution vs real patching on {v['n_prompts']} prompts, {v['n_edges']} "
        f"edges: Pearson {v['pearson'] if v['pearson'] is None else round(v['pearson'], 3)}, "
        f"Spearman {round(v['spearman'], 3)}.",
        "",
        "Clamp test (upstream set clamped from its most salient content position on; drop of "
        "the downstream refusal activity; paper: 0.45):",
        "",
        "| upstream | mean cosine with the direction | drop [95% CI] | harm minus this (p) |",
        "|---|---|---|---|",
    ]
    for row in summary["clamp"]:
        diff = row["difference_to_harm"]
        tail = "-" if diff is None else f"{interval_cell(diff)} (p={diff['p_value']:.3f})"
        cos = row.get("cosine_mean")
        cos_cell = "-" if cos is None else f"{cos:.3f}"
        lines.append(f"| {row['upstream']} | {cos_cell} | {interval_cell(row['drop'])} | {tail} |")
    if summary.get("control"):
        lines += ["", f"Random control: {summary['control']['matched_on']}."]
    lines += ["", "Strongest edges:", "", "| upstream | downstream | effect |", "|---|---|---|"]
    for edge in summary["edges"][:15]:
        u, d = edge["upstream"], edge["downstream"]
        lines.append(
            f"| L{u['layer']}:{u['latent']} | L{d['layer']}:{d['latent']} | {edge['effect']:+.4f} |"
        )
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the registry's hooks

SETTINGS = CircuitSettings
QUICK = QUICK_CIRCUITS


def run(inputs: AnalysisInputs, settings: CircuitSettings, out: Path) -> dict[str, Any]:
    """The job over the shared analysis inputs (see `analyses.registry`)."""
    harm = inputs.harm
    if harm is None:
        raise UserError("circuits needs the harm latents; pass --harm-latents or run categories")
    return circuits_job(
        inputs.lm,
        inputs.formatter,
        inputs.saes,
        inputs.latents,
        harm,
        settings,
        out,
        direction=inputs.direction,
        data_dir=inputs.data_dir,
        echo=inputs.echo,
    )
