"""Latent sets: which SAE latents to intervene on, how they were chosen, and on what data.

Methods (Yeo et al. 2025 and its baselines): `ours` (per layer the K latents whose decoder rows
are closest in cosine to the refusal direction, ranked over all layers by LA-IG), `cossim`
(cosine only), `actdiff` (harmful-minus-harmless mean of each prompt's max activation), `ap`
(LA-IG over every latent, no prefilter), `random` (a control matched to another set by layer and
by activation frequency). A latent set is one JSON file every later command accepts: the model
and SAE set it belongs to, the method and protocol, the prompts it was selected on (hashes, so
that a held-out evaluation can refuse to run on them), the ranked latents, per-prompt lists
aligned with their prompts, and the intervention to apply (scale or value, how many latents).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import heldout, schema
from .attribution import AttributionSettings, attribute, position_mask
from .data import PromptSet
from .data.promptset import normalize_text
from .direction import Direction
from .errors import UserError
from .evaluation.side_effects import base_completions, completion_kl
from .evaluation.statistics import bootstrap_mean
from .executors.base import Executor
from .generation import generate, length_sorted_batches
from .hooks import record
from .interventions import EditLatents, PerPromptLatents
from .judges.substring import SubstringJudge
from .models import ChatFormatter, LoadedModel
from .runs import RunDir, stable_hash, write_json
from .saes import SAESet
from .scoring import last_position_logits

log = logging.getLogger(__name__)

METHODS = ("ours", "cossim", "actdiff", "ap", "random")
PROTOCOLS = ("heldout", "transductive")
FEATURES_FILE = "latents.json"


FEATURES_FIX = "not a latent set: rerun refusal-lens find-latents (or fix the hand edit)"


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# A latents.json: every field a command reads, with its type.
FEATURES_SCHEMA = schema.Obj(
    required={
        "model": schema.Obj(
            required={"name": schema.Str(), "weights_sha256": schema.Str(nonempty=True)}
        ),
        "saes": schema.Obj(
            required={"fingerprint": schema.Str(nonempty=True)},
            optional={"path": schema.Maybe(schema.Str())},
        ),
        "method": schema.Str(nonempty=True),
        "protocol": schema.OneOf(PROTOCOLS),
        "selected_on": schema.DictOf(
            schema.Obj(
                optional={
                    "name": schema.Maybe(schema.Str()),
                    "n": schema.Int(min=0),
                    "prompt_hashes": schema.ListOf(schema.Str()),
                }
            )
        ),
        "latents": schema.ListOf(
            schema.Obj(
                required={
                    "layer": schema.INDEX,
                    "latent": schema.INDEX,
                    "score": schema.Number(finite=False),
                }
            )
        ),
        "intervention": schema.Obj(
            required={"mode": schema.OneOf(("scale", "set")), "value": schema.Number()},
            optional={"k": schema.Int(min=0)},
        ),
    },
    optional={
        "per_prompt": schema.Maybe(
            schema.ListOf(
                schema.Obj(
                    required={
                        "prompt": schema.Str(),
                        "latents": schema.ListOf(
                            schema.Test(
                                lambda r: (
                                    len(r) == 3
                                    and _is_index(r[0])
                                    and _is_index(r[1])
                                    and _is_real(r[2])
                                ),
                                "a [layer, latent, score] triple",
                            )
                        ),
                    }
                )
            )
        ),
        "info": schema.Maybe(
            schema.Obj(
                optional={
                    "direction": schema.Obj(optional={"source": schema.Maybe(schema.Str())}),
                    "refusal_token": schema.Obj(optional={"id": schema.Maybe(schema.INDEX)}),
                    "settings": schema.Obj(optional={"attribution": schema.Obj()}),
                }
            )
        ),
    },
)


@dataclass
class LatentSet:
    model: dict[str, Any]
    saes: dict[str, Any]  # {"path", "fingerprint"}
    method: str
    protocol: str
    selected_on: dict[str, Any]  # per role: name, n, prompt hashes
    latents: list[tuple[int, int, float]]  # ranked (layer, latent, score), best first
    intervention: dict[str, Any]  # {"mode": "scale"|"set", "value": float, "k": int, ...}
    per_prompt: list[dict[str, Any]] | None = None  # [{"prompt", "latents": [[l, i, s]]}]
    info: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int | None = None) -> tuple[tuple[int, int], ...]:
        k = self.intervention.get("k", len(self.latents)) if k is None else k
        if k <= 0:
            raise UserError(f"the number of latents must be positive, got {k}")
        if k > len(self.latents):
            raise UserError(
                f"the latent set ranks {len(self.latents)} latents; asked for the top {k}"
            )
        return tuple((layer, latent) for layer, latent, _ in self.latents[:k])

    def edit(
        self,
        saes: SAESet,
        *,
        k: int | None = None,
        mode: str | None = None,
        value: float | None = None,
        positions: str = "all",
        retain: tuple[tuple[int, int], ...] = (),
    ) -> EditLatents:
        """The intervention this set stands for (its saved scale/value unless overridden)."""
        self.check_saes(saes)
        return EditLatents(
            saes,
            self.top(k),
            mode or self.intervention["mode"],
            float(self.intervention["value"] if value is None else value),
            positions,
            retain=tuple(pair for pair in retain if pair not in set(self.top(k))),
        )

    def check_saes(self, saes: SAESet) -> None:
        if saes.fingerprint() != self.saes.get("fingerprint"):
            raise UserError(
                "this latent set was selected with another SAE set; pass the --saes it names "
                f"({self.saes.get('path')})"
            )

    def per_prompt_edit(
        self,
        saes: SAESet,
        *,
        k: int | None = None,
        mode: str | None = None,
        value: float | None = None,
        positions: str = "all",
    ) -> PerPromptLatents:
        """Each selection prompt with its own top-k latents (transductive evaluation)."""
        if not self.per_prompt:
            raise UserError(f"the {self.method} latent set has no per-prompt latent sets")
        self.check_saes(saes)
        k = self.intervention.get("k", 20) if k is None else k
        by_prompt = {
            normalize_text(row["prompt"]): tuple((int(a), int(b)) for a, b, _ in row["latents"][:k])
            for row in self.per_prompt
        }
        return PerPromptLatents(
            saes,
            by_prompt,
            mode or self.intervention["mode"],
            float(self.intervention["value"] if value is None else value),
            positions,
        )

    def selection_hashes(self) -> set[str]:
        return {h for role in self.selected_on.values() for h in role.get("prompt_hashes", [])}

    def check_held_out(self, prompts: PromptSet, *, own_only: bool = False) -> None:
        """A held-out set must not be evaluated on the prompts it was selected on, nor on
        near-copies of them, nor on those that chose the direction its prefilter used.
        `own_only`: only its own selection prompts (a search on validation prompts may share
        them with the direction's validation pool: neither is an evaluation)."""
        if self.protocol != "heldout":
            return
        roles = {
            role: described
            for role, described in self.selected_on.items()
            if not (own_only and role.startswith("direction "))
        }
        heldout.check(roles, prompts, f"these {self.method} latents")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "saes": self.saes,
            "method": self.method,
            "protocol": self.protocol,
            "selected_on": self.selected_on,
            "intervention": self.intervention,
            "latents": [
                {"layer": layer, "latent": latent, "score": score}
                for layer, latent, score in self.latents
            ],
            "per_prompt": self.per_prompt,
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        target = target / FEATURES_FILE if target.suffix != ".json" else target
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, self.to_dict())
        return target

    @classmethod
    def load(cls, path: str | Path) -> LatentSet:
        target = Path(path)
        target = target / FEATURES_FILE if target.is_dir() else target
        if not target.is_file():
            raise UserError(f"no latent set at {target}; run refusal-lens find-latents first")
        data = schema.read_json(target, "latent set", FEATURES_FIX)
        schema.validate(data, FEATURES_SCHEMA, str(target), FEATURES_FIX)
        latents = [(int(d["layer"]), int(d["latent"]), float(d["score"])) for d in data["latents"]]
        return cls(
            data["model"],
            data["saes"],
            data["method"],
            data["protocol"],
            data["selected_on"],
            latents,
            data["intervention"],
            data.get("per_prompt"),
            data.get("info") or {},
        )

    def check_model(self, lm: LoadedModel) -> None:
        expected = self.model.get("weights_sha256")
        name = self.model.get("name")
        if not expected:
            raise UserError(
                f"this latent set does not record the weights of the model it was selected on "
                f"({name}: model.weights_sha256 is missing or empty); rerun find-latents"
            )
        if expected != lm.weights_sha256:
            raise UserError(
                f"this latent set was selected on {name} with weights {expected[:12]}..., but "
                f"the loaded {lm.name} has weights {lm.weights_sha256[:12]}...; load the model "
                "it was selected on or select latents for this one (refusal-lens find-latents)"
            )


@dataclass(frozen=True)
class SelectionSettings:
    method: str = field(default="ours", metadata={"choices": METHODS})
    protocol: str = field(default="heldout", metadata={"choices": PROTOCOLS})
    per_layer: int = field(default=10, metadata={"help": "cosine prefilter K (ours)"})
    k: int = field(default=20, metadata={"help": "latents in the set (K*)"})
    keep_ranked: int = 200  # how many ranked latents the file keeps (for a later search)
    mode: str = "scale"
    # the paper's c for Gemma; a search on validation data replaces it
    value: float = field(
        default=-3.0, metadata={"flag": "scale", "help": "default scale saved in the set"}
    )
    seed: int = 0
    batch_size: int = 16
    attribution: AttributionSettings = field(default_factory=AttributionSettings)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.protocol not in PROTOCOLS:
            raise UserError(f"unknown protocol {self.protocol!r}; use heldout or transductive")


def cosine_scores(saes: SAESet, direction: Direction) -> dict[int, torch.Tensor]:
    """Per layer, the cosine of every decoder row with the refusal direction."""
    unit = direction.vector.float() / direction.vector.float().norm()
    scores = {}
    for point, sae in saes:
        rows = sae.W_dec.detach().float()
        scores[point.layer] = rows @ unit / rows.norm(dim=1).clamp_min(1e-8)
    return scores


def cosine_candidates(
    saes: SAESet, direction: Direction, per_layer: int
) -> dict[int, torch.Tensor]:
    return {
        layer: cos.topk(min(per_layer, cos.numel())).indices.sort().values
        for layer, cos in cosine_scores(saes, direction).items()
    }


@dataclass
class LatentStatistics:
    """Per layer: each latent's mean (over prompts) of its max activation over the chosen
    positions, and the fraction of those positions where it fires."""

    mean_max: dict[int, torch.Tensor]
    frequency: dict[int, torch.Tensor]
    n_prompts: int


@torch.inference_mode()
def latent_statistics(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    instructions: Sequence[str],
    *,
    positions: str = "prompt",
    batch_size: int = 16,
    progress: bool = True,
) -> LatentStatistics:
    if not instructions:
        raise UserError("no prompts for latent statistics: the prompt list is empty")
    points = saes.points
    sums = {p.layer: torch.zeros(saes[p].d_sae) for p in points}
    fires = {p.layer: torch.zeros(saes[p].d_sae) for p in points}
    n_positions = 0.0
    for indices in tqdm(
        length_sorted_batches(list(instructions), batch_size),
        desc="latent statistics",
        disable=not progress,
        unit="batch",
    ):
        batch = formatter.encode([instructions[i] for i in indices]).to(lm.device)
        mask = position_mask(batch, formatter, positions)
        with record(lm.model, points) as acts:
            lm.model(**batch.forward_kwargs(), use_cache=False, logits_to_keep=1)
        n_positions += float(mask.sum())
        for point in points:
            latents = saes[point].encode(acts[point][0].float())  # [batch, seq, d_sae]
            latents = latents * mask.unsqueeze(-1)
            sums[point.layer] += latents.amax(dim=1).sum(dim=0).cpu()
            fires[point.layer] += (latents > 0).sum(dim=(0, 1)).float().cpu()
    n = len(instructions)
    return LatentStatistics(
        {layer: s / n for layer, s in sums.items()},
        {layer: f / max(n_positions, 1.0) for layer, f in fires.items()},
        n,
    )


def _ranked(scores: dict[int, torch.Tensor], keep: int) -> list[tuple[int, int, float]]:
    """(layer, latent, score), best first, over all layers."""
    rows = [
        (layer, latent, float(value))
        for layer, values in scores.items()
        for latent, value in enumerate(values.tolist())
    ]
    rows.sort(key=lambda row: -row[2])
    return rows[:keep]


def matched_random(
    reference: Sequence[tuple[int, int]],
    frequency: dict[int, torch.Tensor],
    seed: int,
    neighbours: int = 20,
    exclude: Iterable[tuple[int, int]] = (),
) -> list[tuple[int, int, float]]:
    """For each reference latent, a random other latent of the same layer among the
    `neighbours` closest to it in (log) activation frequency; never one of `exclude` (the other
    sets a control is compared with)."""
    rng = random.Random(seed)
    taken = set(reference) | {(int(a), int(b)) for a, b in exclude}
    chosen = []
    for layer, latent in reference:
        log_freq = frequency[layer].clamp_min(1e-6).log()
        distance = (log_freq - log_freq[latent]).abs()
        order = [int(i) for i in distance.argsort().tolist() if (layer, int(i)) not in taken]
        pick = rng.choice(order[:neighbours])
        taken.add((layer, pick))
        chosen.append((layer, pick, float(frequency[layer][pick])))
    return chosen


def select_features(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    direction: Direction,
    harmful: PromptSet,
    harmless: PromptSet | None,
    refusal_token: dict[str, Any],
    settings: SelectionSettings,
    *,
    reference: LatentSet | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> LatentSet:
    """Select latents with `settings.method` on `harmful` (and `harmless` for actdiff and the
    random control's frequencies); `executor` computes the attribution's batches."""
    saes.check_model(lm)
    direction.check_model(lm)
    method = settings.method
    per_prompt = None
    info: dict[str, Any] = {"refusal_token": refusal_token, "settings": _settings_dict(settings)}
    selected_on = {"harmful": heldout.describe(harmful)}
    # the direction's own pools chose the cosine prefilter (and the attribution's direction)
    for role, described in direction.info.get("selected_on", {}).items():
        selected_on[f"direction {role}"] = described
    if method == "cossim":
        latents = _ranked(cosine_scores(saes, direction), settings.keep_ranked)
    elif method in ("ours", "ap"):
        candidates = (
            cosine_candidates(saes, direction, settings.per_layer) if method == "ours" else None
        )
        result = attribute(
            lm,
            formatter,
            saes,
            direction,
            harmful.texts(),
            int(refusal_token["id"]),
            candidates=candidates,
            settings=settings.attribution,
            out=Path(out) / "attribution" if out is not None else None,
            progress=progress,
            executor=executor,
        )
        if out is not None:
            result.save(Path(out) / "attribution")
        latents = result.global_top(settings.keep_ranked)
        per_prompt = [
            {"prompt": text, "latents": [list(row) for row in top]}
            for text, top in zip(harmful.texts(), result.per_prompt_top(settings.k), strict=True)
        ]
        gap = result.completeness_gap()
        info["attribution"] = {
            "metric_clean_mean": float(result.metric_clean.mean()),
            "metric_ablated_mean": float(result.metric_ablated.mean()),
            "completeness_gap_mean": float(gap.mean()),
            # the part of the effect that enters after the last SAE layer (no latents there)
            "after_last_sae_mean": float(result.ablation_scores.mean()),
            "candidate_score_sum_mean": float(
                sum(scores.sum(dim=1) for scores in result.scores.values()).mean()
            ),
            "error_score_mean": {
                str(layer): float(e.mean()) for layer, e in result.error_scores.items()
            },
        }
    else:
        if harmless is None or len(harmless) == 0:
            raise UserError(f"method {method} needs harmless prompts (--harmless)")
        selected_on["harmless"] = heldout.describe(harmless)
        harm_stats = latent_statistics(
            lm, formatter, saes, harmful.texts(), batch_size=settings.batch_size, progress=progress
        )
        safe_stats = latent_statistics(
            lm, formatter, saes, harmless.texts(), batch_size=settings.batch_size, progress=progress
        )
        if method == "actdiff":
            diff = {
                layer: harm_stats.mean_max[layer] - safe_stats.mean_max[layer]
                for layer in harm_stats.mean_max
            }
            latents = _ranked(diff, settings.keep_ranked)
        else:
            if reference is None:
                raise UserError("the random control needs --match FEATURES (the set to match)")
            frequency = {
                layer: (harm_stats.frequency[layer] + safe_stats.frequency[layer]) / 2
                for layer in harm_stats.frequency
            }
            n = min(len(reference.latents), max(settings.k, reference.intervention.get("k", 0)))
            latents = matched_random(reference.top(n), frequency, settings.seed)
            info["matched_to"] = {"method": reference.method, "k": n}
    intervention = {
        "mode": settings.mode,
        "value": settings.value,
        "k": min(settings.k, len(latents)),
        "chosen_by": "default (not searched)",
    }
    if method == "random" and reference is not None:
        intervention = {**reference.intervention, "chosen_by": "the matched set's"}
    return LatentSet(
        model={"name": lm.name, "weights_sha256": lm.weights_sha256},
        saes={"path": saes.path, "fingerprint": saes.fingerprint()},
        method=method,
        protocol=settings.protocol,
        selected_on=selected_on,
        latents=latents,
        intervention=intervention,
        per_prompt=per_prompt,
        info=info,
    )


def _settings_dict(settings: SelectionSettings) -> dict[str, Any]:
    return asdict(settings)


def keep_refused(
    lm: LoadedModel,
    formatter: ChatFormatter,
    prompts: PromptSet,
    token: int,
    batch_size: int = 16,
) -> PromptSet:
    """The prompts whose greedy first token is the refusal token (what LA-IG explains)."""
    first = last_position_logits(lm, formatter, prompts.texts(), batch_size=batch_size).argmax(-1)
    kept = [p for p, t in zip(prompts, first.tolist(), strict=True) if t == token]
    if not kept:
        raise UserError(
            f"the model refuses none of the {len(prompts)} prompts of {prompts.name} with its "
            "refusal token; use prompts it refuses or --all-prompts"
        )
    return PromptSet(f"{prompts.name}[refused]", tuple(kept))


@dataclass(frozen=True)
class SearchSettings:
    """The grid searched on validation prompts, and the side-effect limit."""

    ks: tuple[int, ...] = field(
        default=(10, 20, 40), metadata={"flag": "search-ks", "help": "K* grid for --search"}
    )
    values: tuple[float, ...] = field(
        default=(-1.0, -2.0, -4.0, -8.0),
        metadata={
            "flag": "search-scales",
            "help": "scale grid for --search (write it with =: --search-scales=-1,-2)",
        },
    )
    # mean KL on harmless prompts a chosen setting may cost
    kl_limit: float = field(default=0.1, metadata={"help": "harmless KL a choice may cost"})
    max_new_tokens: int = 32
    batch_size: int = 16


def choose_setting(rows: Sequence[dict[str, Any]], kl_limit: float) -> tuple[dict[str, Any], bool]:
    """The searched (K*, c): among the settings whose harmless KL stays within `kl_limit`,
    the lowest refusal rate; ties go to the smaller |c|, then the smaller K* (the gentlest
    edit that does the job). When none stays within the limit: the lowest KL (ties: the
    lower refusal rate). Returns the row and whether it met the limit."""
    if not rows:
        raise UserError("the search scored no setting")
    allowed = [r for r in rows if r["kl"]["mean"] <= kl_limit]
    if allowed:
        return min(
            allowed, key=lambda r: (r["refusal_rate"]["mean"], abs(r["value"]), r["k"])
        ), True
    return min(rows, key=lambda r: (r["kl"]["mean"], r["refusal_rate"]["mean"])), False


def search_intervention(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    latent_set: LatentSet,
    harmful_val: PromptSet,
    harmless_val: PromptSet,
    settings: SearchSettings = SearchSettings(),
    *,
    progress: bool = True,
    run: RunDir | None = None,
) -> dict[str, Any]:
    """Score every (K*, c) of the grid by refusal rate on harmful validation prompts and KL
    on harmless ones; choose the lowest refusal rate whose KL stays under the limit (ties:
    the smaller |c|, then the smaller K*). Writes the choice into `latent_set.intervention`.
    With `run`, each scored setting is appended to `search.jsonl` and a rerun skips it."""
    latent_set.check_held_out(harmful_val, own_only=True)
    latent_set.check_held_out(harmless_val, own_only=True)
    judge = SubstringJudge()
    grid = [
        (k, value) for k in settings.ks if k <= len(latent_set.latents) for value in settings.values
    ]
    if not grid:
        raise UserError(f"no K* of {settings.ks} fits the {len(latent_set.latents)} ranked latents")
    key = stable_hash(
        {
            "model": lm.weights_sha256,
            "dtype": str(lm.dtype),
            "system": formatter.system,
            "saes": saes.fingerprint(),
            "latents": [[layer, latent] for layer, latent, _ in latent_set.latents],
            "settings": asdict(settings),
            "harmful": harmful_val.content_hash(),
            "harmless": harmless_val.content_hash(),
        }
    )
    records = [
        {n: v for n, v in r.items() if n != "key"}
        for r in (run.read_jsonl("search.jsonl", key) if run else ())
    ]
    done = {(r["k"], r["value"]): r for r in records if "k" in r}
    base_rate = next((r["base_refusal_rate"] for r in records if "base_refusal_rate" in r), None)

    def unsteered(prompts: PromptSet) -> list[str]:
        return base_completions(
            lm,
            formatter,
            prompts.texts(),
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
        )

    if base_rate is None:
        base_rate = bootstrap_mean(judge.judge(unsteered(harmful_val))).to_dict()
        if run:
            run.append_jsonl("search.jsonl", key, [{"base_refusal_rate": base_rate}])
    base: list[str] | None = None  # the harmless reference of the KL, made when first needed
    rows = []
    for k, value in tqdm(grid, desc="search K*, c", disable=not progress, unit="setting"):
        if (k, value) in done:
            rows.append(done[(k, value)])
            continue
        if base is None:
            base = unsteered(harmless_val)
        edit = latent_set.edit(saes, k=k, mode="scale", value=value)
        completions = generate(
            lm,
            formatter,
            harmful_val.texts(),
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
            interventions=[edit],
            progress=False,
        )
        refusal = bootstrap_mean(judge.judge(completions))
        kl = completion_kl(lm, formatter, harmless_val.texts(), base, [edit])
        row = {"k": k, "value": value, "refusal_rate": refusal.to_dict(), "kl": kl.to_dict()}
        if run:
            run.append_jsonl("search.jsonl", key, [row])
        rows.append(row)
    best, allowed = choose_setting(rows, settings.kl_limit)
    latent_set.intervention = {
        "mode": "scale",
        "value": best["value"],
        "k": best["k"],
        "chosen_by": (
            f"search on {harmful_val.name} / {harmless_val.name}: lowest refusal rate with "
            f"harmless KL <= {settings.kl_limit}"
            if allowed
            else f"search: no setting kept KL <= {settings.kl_limit}; lowest KL chosen"
        ),
    }
    return {
        "settings": asdict(settings),
        "base_refusal_rate": base_rate,
        "grid": rows,
        "chosen": best,
        "met_kl_limit": bool(allowed),
    }
