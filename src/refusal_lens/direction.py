"""The refusal direction (Arditi et al. 2024, as used by Yeo et al. 2025 section 2).

1. Filter pools by the first-token refusal score: harmful prompts the model refuses, harmless
   prompts it does not.
2. Difference in means of the residual stream after every block (`resid_post.l`) at every
   post-instruction template position: one candidate direction per (position, layer).
3. Score each candidate on validation prompts: bypass (mean refusal score on harmful prompts
   with the direction ablated everywhere), induce (mean refusal score on harmless prompts with
   the direction added at its layer) and KL (harmless next-token distribution, ablated vs not).
4. Keep candidates with induce > 0, KL <= 0.1 and a layer below the last 20%; pick the lowest
   bypass score. Every candidate's scores are saved.
Train and validation prompts are used for selection only; refusal rates are measured on test
sets by `evaluation.refusal`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from . import schema
from .data import PromptSet
from .errors import UserError
from .generation import length_sorted_batches
from .hooks import HookPoint, record
from .interventions import AblateDirection, AddDirection, read_direction_file
from .models import ChatFormatter, LoadedModel
from .runs import RunDir, stable_hash, write_json
from .scoring import RefusalTokens, last_position_logits, score_from_logits

# direction.json: the fields `Direction.load` reads, with their types.
DIRECTION_SCHEMA = schema.Obj(
    required={"layer": schema.INDEX, "position": schema.Int()},
    optional={"model": schema.Maybe(schema.MODEL_IDENTITY)},
)


@dataclass(frozen=True)
class DirectionSettings:
    """How the direction is selected (the `direction` command's flags come from these fields:
    their defaults and their help)."""

    n_train: int = field(default=128, metadata={"help": "prompts per class after filtering"})
    n_val: int = field(default=32, metadata={"help": "validation prompts per class"})
    kl_threshold: float = field(
        default=0.1, metadata={"help": "harmless KL a candidate's ablation may cost"}
    )
    prune_layer_fraction: float = field(
        default=0.2, metadata={"help": "candidates in this last share of layers are dropped"}
    )
    # None: the midpoint between the mean refusal scores of harmless and of (refused) harmful
    # validation prompts; Arditi et al. use 0.0 (see docs/guide.md, "The refusal direction").
    induce_threshold: float | None = field(
        default=None,
        metadata={
            "help": "refusal score that adding the direction must reach on harmless prompts",
            "default": "midpoint of the harmless and refused-harmful baselines; Arditi: 0",
        },
    )
    filter_pools: bool = field(
        default=True,
        metadata={"flag": "no-filter", "help": "do not filter pools by the first-token score"},
    )
    full_sweep: bool = field(
        default=False, metadata={"help": "score every candidate on every criterion (3x slower)"}
    )
    batch_size: int = 16


SCORE_SETTINGS = ("n_train", "n_val", "filter_pools", "batch_size")


@dataclass(frozen=True)
class DirectionData:
    harmful_train: PromptSet
    harmless_train: PromptSet
    harmful_val: PromptSet
    harmless_val: PromptSet

    def hashes(self) -> dict[str, str]:
        return {
            name: getattr(self, name).content_hash()
            for name in ("harmful_train", "harmless_train", "harmful_val", "harmless_val")
        }


@dataclass(frozen=True)
class CandidateScore:
    position: int  # negative index from the end of the prompt
    layer: int
    bypass: float
    induce: float | None  # None: not needed for the selection (lazy sweep)
    kl: float | None
    passes: bool = False


@dataclass
class Direction:
    """A chosen refusal direction: `vector` is the raw difference in means (not normalised)."""

    vector: torch.Tensor
    layer: int
    position: int
    model: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def ablation(self) -> AblateDirection:
        return AblateDirection(self.vector, self.source)

    def addition(self, coeff: float = 1.0) -> AddDirection:
        return AddDirection(self.vector, self.layer, coeff, self.source)

    def save(self, folder: Path) -> None:
        tensor_path = folder / "direction.safetensors"
        save_file(
            {"direction": self.vector.float().contiguous()},
            str(tensor_path),
            metadata={"layer": str(self.layer), "position": str(self.position)},
        )
        self.source = str(tensor_path)
        meta = {
            "layer": self.layer,
            "position": self.position,
            "hook_point": HookPoint(self.layer, "resid_post").name,
            "norm": float(self.vector.norm()),
            "model": self.model,
            **self.info,
        }
        write_json(folder / "direction.json", meta)  # last and atomic: its presence means done

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        """Load from a run folder (or its direction.safetensors)."""
        folder = Path(path)
        folder = folder.parent if folder.suffix == ".safetensors" else folder
        tensor_path, meta_path = folder / "direction.safetensors", folder / "direction.json"
        if not tensor_path.is_file() or not meta_path.is_file():
            raise UserError(
                f"no direction in {folder}: expected direction.safetensors and "
                "direction.json; run `refusal-lens direction --out DIR` first"
            )
        fix = "rerun `refusal-lens direction` into that folder (or fix the hand edit)"
        meta = schema.read_json(meta_path, "direction metadata", fix)
        schema.validate(meta, DIRECTION_SCHEMA, str(meta_path), fix)
        vector = read_direction_file(tensor_path)
        return cls(
            vector,
            int(meta["layer"]),
            int(meta["position"]),
            meta.get("model") or {},
            {k: v for k, v in meta.items() if k not in ("layer", "position", "model")},
            str(tensor_path),
        )

    def check_model(self, lm: LoadedModel) -> None:
        if self.vector.shape[0] != lm.d_model:
            raise UserError(
                f"direction has width {self.vector.shape[0]} but model {lm.name} has "
                f"d_model {lm.d_model}; compute a direction for this model"
            )
        if self.layer >= lm.n_layers:
            raise UserError(
                f"direction layer {self.layer} is out of range for {lm.name} "
                f"({lm.n_layers} layers); compute a direction for this model"
            )
        expected = self.model.get("weights_sha256")
        if expected and expected != lm.weights_sha256:
            raise UserError(
                f"direction was computed for model {self.model.get('name')} (weights "
                f"{expected[:12]}...), not {lm.name} (weights {lm.weights_sha256[:12]}...); "
                "recompute it for this model"
            )


def filter_pool(
    lm: LoadedModel,
    formatter: ChatFormatter,
    prompts: PromptSet,
    tokens: RefusalTokens,
    *,
    refused: bool,
    batch_size: int,
) -> tuple[PromptSet, list[bool]]:
    """Keep prompts whose greedy first token is a refusal token (refused=True) or is not.

    A greedy criterion, not Arditi's `score > 0`: small models often
    refuse with a first-token probability under 0.5 and still answer "I'm sorry...".
    """
    logits = last_position_logits(
        lm,
        formatter,
        prompts.texts(),
        batch_size=batch_size,
        progress=True,
        desc=f"filter {prompts.name}",
    )
    first_is_refusal = [int(t) in tokens.ids for t in logits.argmax(-1).tolist()]
    kept = {p.text for p, r in zip(prompts, first_is_refusal, strict=True) if r == refused}
    return prompts.filter(lambda p: p.text in kept), first_is_refusal


@torch.inference_mode()
def mean_activation_diff(
    lm: LoadedModel,
    formatter: ChatFormatter,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    batch_size: int,
) -> torch.Tensor:
    """`mean_harmful - mean_harmless` of resid_post, `[n_positions, n_layers, d_model]` float32.

    Positions are the post-instruction template tokens (left padding aligns them at the end).
    """
    n_pos = formatter.n_post_instruction
    points = [HookPoint(layer, "resid_post") for layer in range(lm.n_layers)]

    def mean_of(texts: Sequence[str], desc: str) -> torch.Tensor:
        total = torch.zeros(n_pos, lm.n_layers, lm.d_model, dtype=torch.float64)
        for indices in tqdm(length_sorted_batches(texts, batch_size), desc=desc, unit="batch"):
            batch = formatter.encode([texts[i] for i in indices]).to(lm.device)
            with record(lm.model, points, reduce=lambda a: a[:, -n_pos:].double().sum(0)) as acts:
                lm.model(**batch.forward_kwargs(), logits_to_keep=1)
            stacked = torch.stack([acts[p][0].cpu() for p in points], dim=1)
            if not torch.isfinite(stacked).all():
                raise UserError(
                    "NaN or inf activations in the model's residual stream; try --dtype float32"
                )
            total += stacked
        return (total / len(texts)).float()

    return mean_of(harmful, "means (harmful)") - mean_of(harmless, "means (harmless)")


def _kl(base_logits: torch.Tensor, new_logits: torch.Tensor) -> float:
    base = torch.log_softmax(base_logits.float(), -1)
    new = torch.log_softmax(new_logits.float(), -1)
    return float((base.exp() * (base - new)).sum(-1).mean())


def score_candidates(
    lm: LoadedModel,
    formatter: ChatFormatter,
    diffs: torch.Tensor,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    tokens: RefusalTokens,
    settings: DirectionSettings,
    run: RunDir | None = None,
    key: str = "",
) -> tuple[list[CandidateScore], Baseline, float]:
    """Score the (position, layer) candidates that are not pruned.

    Selection is "lowest bypass among candidates that pass the induce and KL filters", so the
    filters are evaluated lazily in ascending bypass order and the sweep stops at the first
    candidate that passes: the same choice as a full sweep at about a third of the cost.
    `settings.full_sweep` scores every candidate on every criterion. Scores are appended to
    `candidates.jsonl` as they are computed; a rerun skips those already done.
    """
    n_pos, n_layers, _ = diffs.shape
    max_layer = int(n_layers * (1 - settings.prune_layer_fraction))
    scores: dict[tuple[int, int], dict[str, float]] = {}
    for rec in run.read_jsonl("candidates.jsonl", key) if run else ():
        scores.setdefault((rec["position"], rec["layer"]), {}).update(
            {k: v for k, v in rec.items() if k in ("bypass", "induce", "kl")}
        )

    def save(pos: int, layer: int, values: dict[str, float]) -> None:
        scores.setdefault((pos, layer), {}).update(values)
        if run:
            run.append_jsonl("candidates.jsonl", key, [{"position": pos, "layer": layer, **values}])

    def vector(pos: int, layer: int) -> torch.Tensor:
        return diffs[pos + n_pos, layer]

    todo = [(pos, layer) for pos in range(-n_pos, 0) for layer in range(max_layer)]
    for pos, layer in tqdm(
        [c for c in todo if "bypass" not in scores.get(c, {})],
        desc="candidates: bypass",
        unit="cand",
    ):
        ablated = score_from_logits(
            last_position_logits(
                lm,
                formatter,
                harmful_val,
                batch_size=settings.batch_size,
                interventions=[AblateDirection(vector(pos, layer))],
            ),
            tokens,
        )
        save(pos, layer, {"bypass": ablated.mean().item()})

    base_harmless: torch.Tensor | None = None
    if run and (cached := run.load_stage("baseline.json", key)):
        baseline = Baseline(cached["harmful"], cached["harmless"])
    else:
        base_harmless = last_position_logits(
            lm, formatter, harmless_val, batch_size=settings.batch_size
        )
        base_harmful = last_position_logits(
            lm, formatter, harmful_val, batch_size=settings.batch_size
        )
        baseline = Baseline(
            harmful=score_from_logits(base_harmful, tokens).mean().item(),
            harmless=score_from_logits(base_harmless, tokens).mean().item(),
        )
        if run:
            run.save_stage("baseline.json", key, asdict(baseline))
    threshold = induce_threshold(settings, baseline)
    by_bypass = sorted(todo, key=lambda c: scores[c]["bypass"])
    for pos, layer in tqdm(by_bypass, desc="candidates: filters", unit="cand"):
        if "induce" not in scores[(pos, layer)]:
            if base_harmless is None:
                base_harmless = last_position_logits(
                    lm, formatter, harmless_val, batch_size=settings.batch_size
                )
            ablated_logits = last_position_logits(
                lm,
                formatter,
                harmless_val,
                batch_size=settings.batch_size,
                interventions=[AblateDirection(vector(pos, layer))],
            )
            induced = score_from_logits(
                last_position_logits(
                    lm,
                    formatter,
                    harmless_val,
                    batch_size=settings.batch_size,
                    interventions=[AddDirection(vector(pos, layer), layer)],
                ),
                tokens,
            )
            save(
                pos,
                layer,
                {"induce": induced.mean().item(), "kl": _kl(base_harmless, ablated_logits)},
            )
        if _passes(scores[(pos, layer)], threshold, settings) and not settings.full_sweep:
            break

    candidates = [
        CandidateScore(
            pos,
            layer,
            scores[(pos, layer)]["bypass"],
            scores[(pos, layer)].get("induce"),
            scores[(pos, layer)].get("kl"),
            _passes(scores[(pos, layer)], threshold, settings),
        )
        for pos, layer in todo
    ]
    return candidates, baseline, threshold


@dataclass(frozen=True)
class Baseline:
    """Mean refusal scores without intervention on the validation pools."""

    harmful: float
    harmless: float


def induce_threshold(settings: DirectionSettings, baseline: Baseline) -> float:
    """The refusal score that adding the direction must lift harmless prompts above.

    Arditi et al. require > 0 (p(refusal token) > 1/2 on average). Small models that refuse with
    a first-token probability under 1/2 can fail it for every strong candidate (Qwen2.5-Coder-0.5B:
    induce scores around -0.7, p = 0.33, against -3.55 without the direction), so the default asks
    for at least half the way from the harmless to the refused-harmful baseline.
    """
    if settings.induce_threshold is not None:
        return settings.induce_threshold
    return (baseline.harmful + baseline.harmless) / 2


def _passes(values: dict[str, float], threshold: float, settings: DirectionSettings) -> bool:
    if "induce" not in values or "kl" not in values:
        return False
    return values["induce"] > threshold and values["kl"] <= settings.kl_threshold


def select(candidates: Sequence[CandidateScore]) -> CandidateScore:
    passing = [c for c in candidates if c.passes]
    if not passing:
        raise UserError(
            "no candidate direction passes the filters (induce score, KL); use more "
            "train prompts or relax --kl-threshold / --induce-threshold"
        )
    return min(passing, key=lambda c: c.bypass)


def find_direction(
    lm: LoadedModel,
    formatter: ChatFormatter,
    data: DirectionData,
    tokens: RefusalTokens,
    settings: DirectionSettings,
    run: RunDir | None = None,
) -> Direction:
    """Filter pools, compute candidates, score and select: the whole section-2 procedure."""
    base_key = stable_hash(
        {
            "model": lm.weights_sha256,
            "dtype": str(lm.dtype),
            "data": data.hashes(),
            "tokens": tokens.ids,
            "system": formatter.system,
            # thresholds only change the choice, not the stored scores
            "settings": {k: v for k, v in asdict(settings).items() if k in SCORE_SETTINGS},
        }
    )
    pools = _filtered_pools(lm, formatter, data, tokens, settings, run, base_key)
    for name, pool in pools.items():
        if len(pool) < 2:
            raise UserError(
                f"only {len(pool)} prompts left in {name} after filtering by refusal "
                "score; use a larger dataset or --no-filter"
            )
    diffs = _cached_diffs(lm, formatter, pools, settings, run, base_key)
    candidates, baseline, threshold = score_candidates(
        lm,
        formatter,
        diffs,
        pools["harmful_val"],
        pools["harmless_val"],
        tokens,
        settings,
        run,
        base_key,
    )
    best = select(candidates)
    info = {
        "hook_point_kind": "resid_post",
        "selection": {"bypass": best.bypass, "induce": best.induce, "kl": best.kl},
        "baseline_scores": asdict(baseline),
        "induce_threshold": threshold,
        "kl_threshold": settings.kl_threshold,
        "settings": asdict(settings),
        "refusal_tokens": tokens.to_dict(),
        "pool_sizes": {name: len(pool) for name, pool in pools.items()},
        "candidates": [asdict(c) for c in candidates],
    }
    return Direction(
        diffs[best.position + diffs.shape[0], best.layer].clone(),
        best.layer,
        best.position,
        lm.identity(),
        info,
    )


def _filtered_pools(
    lm: LoadedModel,
    formatter: ChatFormatter,
    data: DirectionData,
    tokens: RefusalTokens,
    settings: DirectionSettings,
    run: RunDir | None,
    key: str,
) -> dict[str, list[str]]:
    if run and (cached := run.load_stage("pools.json", key)):
        return dict(cached["pools"])
    limits = {
        "harmful_train": settings.n_train,
        "harmless_train": settings.n_train,
        "harmful_val": settings.n_val,
        "harmless_val": settings.n_val,
    }
    pools: dict[str, list[str]] = {}
    for name, limit in limits.items():
        prompts: PromptSet = getattr(data, name)
        if settings.filter_pools:
            prompts = _first_kept(
                lm, formatter, prompts, tokens, name.startswith("harmful"), limit, settings
            )
        pools[name] = prompts.texts()[:limit]
    if run:
        run.save_stage("pools.json", key, {"pools": pools})
    return pools


def _first_kept(
    lm: LoadedModel,
    formatter: ChatFormatter,
    prompts: PromptSet,
    tokens: RefusalTokens,
    refused: bool,
    limit: int,
    settings: DirectionSettings,
) -> PromptSet:
    """The first `limit` prompts (in pool order) that pass the filter, scoring the pool a slice
    at a time and stopping once enough passed: the same prompts as filtering the whole pool."""
    kept: list[PromptSet] = []
    step = max(limit, settings.batch_size)
    for start in range(0, len(prompts), step):
        passed, _ = filter_pool(
            lm,
            formatter,
            prompts[start : start + step],
            tokens,
            refused=refused,
            batch_size=settings.batch_size,
        )
        kept.append(passed)
        if sum(len(p) for p in kept) >= limit:
            break
    return PromptSet(prompts.name, tuple(p for part in kept for p in part))


def _cached_diffs(
    lm: LoadedModel,
    formatter: ChatFormatter,
    pools: dict[str, list[str]],
    settings: DirectionSettings,
    run: RunDir | None,
    key: str,
) -> torch.Tensor:
    path = run.file("mean_diffs.safetensors") if run else None
    if path is not None and path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("key") == key:
                return handle.get_tensor("mean_diffs")
    diffs = mean_activation_diff(
        lm,
        formatter,
        pools["harmful_train"],
        pools["harmless_train"],
        batch_size=settings.batch_size,
    )
    if path is not None:
        save_file({"mean_diffs": diffs.contiguous()}, str(path), metadata={"key": key})
    return diffs
