"""Linear probes on last-token features, in and out of distribution (Yeo et al. 2025).

Protocol: every probe is fitted on plain prompts (``harmful_train`` vs ``harmless_train``); its
regularisation, and for the dense residual its layer, is chosen on a validation part of those
prompts only; it is then tested on held-out plain prompts (in distribution) and on
adversarial prompts (out of distribution). Two targets are kept apart:

- ``harmful``: is the request harmful. OOD set of a source: its adversarial harmful prompts
  (1) against harmless requests under the same attack (0) when the attack is a template
  (GPTFuzz), else held-out plain harmless prompts.
- ``refusal``: will the model refuse, read from the model's own greedy completion by a judge.
  OOD set: the adversarial prompts and the plain requests they carry. Its ``paper`` subset is
  Yeo et al.'s test: plain requests the model refuses against adversarial prompts that make
  it comply.

Feature families: the refusal latents (top k of a latent set), random latents matched to
them by layer and activation frequency (one family per seed), the dense residual (every
layer, the best one on validation), and the projection on the refusal direction.

C is chosen on validation log-loss: by AUROC or accuracy, a probe regularised down to the fit
split's base rate can win (AUROC ignores the threshold, accuracy ties it with the majority
class) and then predicts one class on every test set. Each test row reports accuracy beside
balanced accuracy (both with bootstrap intervals), the test set's majority-class rate, and
`constant_predictions` when the probe's predictions on it are all one class.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..config import settings_dict
from ..data import Prompt, PromptSet, load_prompts
from ..data.adversarial import SLOT, gptfuzz_templates, load_adversarial
from ..data.promptset import prompt_hash
from ..direction import Direction
from ..errors import UserError
from ..evaluation.statistics import Estimate, auroc_rows, bootstrap_statistic, interval_cell
from ..executors import Executor
from ..generation import length_sorted_batches
from ..hooks import HookPoint, record
from ..latents import LatentSet, matched_random
from ..models import ChatFormatter, LoadedModel
from ..runs import RunDir, stable_hash, write_json
from ..saes import SAESet
from .common import analysis_context, refusals, start_analysis
from .flags import constant_note, constant_rows
from .inputs import AnalysisInputs

TARGETS = ("harmful", "refusal")
PART_SIZE = 64  # prompts per cached residual file


@dataclass(frozen=True)
class ProbeSettings:
    n_train: int = 128  # plain prompts per class; `val_fraction` of them choose C and layer
    val_fraction: float = 0.25
    n_test: int = 64  # held-out plain prompts per class (in distribution)
    n_adversarial: int = 64  # adversarial prompts per source (out of distribution)
    sources: tuple[str, ...] = ("gptfuzz", "suffixes")
    targets: tuple[str, ...] = TARGETS
    k: int | None = None  # refusal latents: top k of the latent set (None: its own k)
    random_seeds: tuple[int, ...] = (0, 1, 2)
    c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
    judge: str = "substring"  # reads refusal from completions (target "refusal")
    screen_tokens: int = 64
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "n_adversarial", "screen_tokens", "batch_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for target in self.targets:
            if target not in TARGETS:
                raise UserError(f"unknown probe target {target!r}; use {' or '.join(TARGETS)}")
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise UserError("c_grid needs at least one positive regularisation strength")


QUICK_PROBES: dict[str, Any] = {
    "n_train": 48,
    "n_test": 24,
    "n_adversarial": 24,
    "random_seeds": (0,),
}


@dataclass
class Examples:
    """Prompts of one split with their labels; `group` is plain / adversarial / control."""

    name: str
    texts: list[str]
    harmful: np.ndarray
    group: list[str]
    refused: np.ndarray | None = None

    def labels(self, target: str) -> np.ndarray:
        if target == "harmful":
            return self.harmful
        if self.refused is None:
            raise ValueError(f"{self.name}: refusal labels were not read")
        return self.refused


def _examples(name: str, sets: Sequence[tuple[PromptSet, bool, str]]) -> Examples:
    texts, harmful, group = [], [], []
    for prompts, label, kind in sets:
        texts += prompts.texts()
        harmful += [label] * len(prompts)
        group += [kind] * len(prompts)
    return Examples(name, texts, np.array(harmful, dtype=bool), group)


def _split(prompts: PromptSet, val_fraction: float, seed: int) -> tuple[PromptSet, PromptSet]:
    order = np.random.default_rng(seed).permutation(len(prompts))
    n_val = max(1, round(len(prompts) * val_fraction))
    pick = [prompts[int(i)] for i in order]
    return PromptSet(prompts.name, tuple(pick[n_val:])), PromptSet(
        prompts.name, tuple(pick[:n_val])
    )


def _held_out(name: str, data_dir: str | Path | None, banned: set[str], n: int) -> PromptSet:
    """The first `n` prompts of a set that are not among `banned` (hashes of the prompts a
    latent set was selected on)."""
    prompts = load_prompts(name, data_dir=data_dir)
    return prompts.filter(lambda p: prompt_hash(p.text) not in banned).head(n)


def build_examples(
    settings: ProbeSettings, data_dir: str | Path | None, banned: set[str] | None = None
) -> tuple[dict[str, Examples], dict[str, Examples]]:
    """(in-distribution splits fit / val / test, OOD sets by source). Test prompts exclude
    `banned` (the latent set's selection prompts)."""
    banned = banned or set()
    harmful = load_prompts("harmful_train", data_dir=data_dir, limit=settings.n_train)
    harmless = load_prompts("harmless_train", data_dir=data_dir, limit=settings.n_train)
    harmful_fit, harmful_val = _split(harmful, settings.val_fraction, settings.seed)
    harmless_fit, harmless_val = _split(harmless, settings.val_fraction, settings.seed + 1)
    test_harmful = _held_out("harmful_test", data_dir, banned, settings.n_test)
    test_harmless = _held_out("harmless_test", data_dir, banned, settings.n_test)
    plain = {
        "fit": _examples("fit", [(harmful_fit, True, "plain"), (harmless_fit, False, "plain")]),
        "val": _examples("val", [(harmful_val, True, "plain"), (harmless_val, False, "plain")]),
        "test": _examples("test", [(test_harmful, True, "plain"), (test_harmless, False, "plain")]),
    }
    seen = PromptSet("train", (*harmful, *harmless))
    seen_hashes = {prompt_hash(p.text) for p in seen} | banned
    ood = {}
    # OOD harmless controls: held-out harmless prompts the in-distribution test did not use
    spare = _held_out(
        "harmless_test", data_dir, seen_hashes, settings.n_test + settings.n_adversarial
    )[settings.n_test :]
    for source in settings.sources:
        attacked = load_adversarial(
            source,
            data_dir=data_dir,
            n=settings.n_adversarial,
            seed=settings.seed,
            exclude=seen_hashes,
        )
        ood[attacked.name] = _ood_examples(source, attacked, spare, data_dir, settings)
    return plain, ood


def _ood_examples(
    source: str,
    attacked: PromptSet,
    spare_harmless: PromptSet,
    data_dir: str | Path | None,
    settings: ProbeSettings,
) -> Examples:
    goals = list(dict.fromkeys(p.meta["goal"] for p in attacked if "goal" in p.meta))
    sets: list[tuple[PromptSet, bool, str]] = [
        (attacked.filter(lambda p: p.meta.get("harmful") == "1"), True, "adversarial"),
        (attacked.filter(lambda p: p.meta.get("harmful") == "0"), False, "adversarial"),
    ]
    if source == "gptfuzz":  # each harmful prompt's own template around a harmless request
        sets.append((same_templates(attacked, spare_harmless, data_dir), False, "control"))
    else:
        sets.append((spare_harmless.head(len(attacked)), False, "control"))
    plain_goals = PromptSet(f"{source}_goals", tuple(_plain(g) for g in goals))
    sets.append((plain_goals, True, "plain"))
    return _examples(attacked.name, [s for s in sets if len(s[0])])


def same_templates(
    attacked: PromptSet, requests: PromptSet, data_dir: str | Path | None
) -> PromptSet:
    """Harmless requests, one per attacked prompt, each put in that prompt's template: the
    two classes then share their templates exactly, so a template cannot tell them apart."""
    if not len(requests):
        raise UserError(f"no harmless requests to wrap: {requests.name} is empty")
    templates = {f"template {tid}": text for tid, text in gptfuzz_templates(data_dir)}
    prompts = []
    for i, prompt in enumerate(attacked):
        template = templates.get(prompt.meta.get("attack", ""))
        if template is None:
            continue
        request = requests[i % len(requests)]
        prompts.append(
            Prompt(
                template.replace(SLOT, request.text),
                request.category,
                "gptfuzz",
                {"goal": request.text, "attack": prompt.meta["attack"], "harmful": "0"},
            )
        )
    return PromptSet("gptfuzz_harmless", tuple(prompts))


def _plain(text: str) -> Prompt:
    return Prompt(text, source="goal")


# --------------------------------------------------------------------------- features


@torch.inference_mode()
def last_token_residuals(
    lm: LoadedModel,
    formatter: ChatFormatter,
    texts: Sequence[str],
    *,
    batch_size: int,
    run: RunDir | None = None,
    desc: str = "residuals",
) -> torch.Tensor:
    """`resid_post` at the last template token, every layer: `[n, n_layers, d_model]` float32.
    With a run folder, parts of `PART_SIZE` prompts are cached there and reused."""
    if not texts:
        raise UserError("no prompts to read activations from: the prompt list is empty")
    out = torch.empty(len(texts), lm.n_layers, lm.d_model)
    points = [HookPoint(layer, "resid_post") for layer in range(lm.n_layers)]
    key = {
        "model": lm.weights_sha256,
        "dtype": str(lm.dtype),
        "template": formatter.render("{}"),  # chat template and system prompt
    }
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    parts = [order[i : i + PART_SIZE] for i in range(0, len(order), PART_SIZE)]
    for part in tqdm(parts, desc=desc, unit="part", disable=len(parts) < 2):
        chunk = [texts[i] for i in part]
        path = (
            run.file(f"residuals/{stable_hash({**key, 'texts': chunk})[:20]}.safetensors")
            if run
            else None
        )
        if path is not None and path.is_file():
            out[part] = load_file(str(path))["residuals"]
            continue
        values = torch.empty(len(part), lm.n_layers, lm.d_model)
        for indices in length_sorted_batches(chunk, batch_size):
            batch = formatter.encode([chunk[i] for i in indices]).to(lm.device)
            with record(lm.model, points, reduce=lambda a: a[:, -1].float()) as acts:
                lm.model(**batch.forward_kwargs(), use_cache=False, logits_to_keep=1)
            values[indices] = torch.stack([acts[p][0].cpu() for p in points], dim=1)
        if not torch.isfinite(values).all():
            raise UserError("NaN or inf activations in the residual stream; try --dtype float32")
        if path is not None:
            tmp = path.with_suffix(".partial")
            save_file({"residuals": values.contiguous()}, str(tmp))
            tmp.replace(path)
        out[part] = values
    return out


@dataclass
class Family:
    """One kind of probe input; `views` are its candidates (dense: one per layer), among which
    validation chooses."""

    name: str
    views: dict[str, Callable[[torch.Tensor], np.ndarray]]
    info: dict[str, Any] = field(default_factory=dict)


def latent_view(
    saes: SAESet, latents: Sequence[tuple[int, int]]
) -> Callable[[torch.Tensor], np.ndarray]:
    @torch.inference_mode()
    def view(resid: torch.Tensor) -> np.ndarray:
        columns = []
        for layer, latent in latents:
            sae = saes[HookPoint(layer, "resid_post")]
            x = resid[:, layer].to(sae.W_enc.device)
            columns.append(sae.encode_latents(x, torch.tensor([latent]))[:, 0].cpu())
        return torch.stack(columns, dim=1).numpy()

    return view


@torch.inference_mode()
def last_token_frequency(saes: SAESet, resid: torch.Tensor) -> dict[int, torch.Tensor]:
    """Fraction of prompts whose last token fires each latent: the frequency random latents
    are matched on (the position the probes read)."""
    return {
        point.layer: (sae.encode(resid[:, point.layer].to(sae.W_enc.device)) > 0)
        .float()
        .mean(0)
        .cpu()
        for point, sae in saes
    }


def feature_families(
    saes: SAESet,
    refusal_latents: Sequence[tuple[int, int]],
    frequency: dict[int, torch.Tensor],
    direction: Direction,
    n_layers: int,
    random_seeds: Sequence[int],
) -> list[Family]:
    families = [
        Family(
            "refusal latents",
            {"latents": latent_view(saes, refusal_latents)},
            {"latents": [list(pair) for pair in refusal_latents]},
        )
    ]
    for seed in random_seeds:
        chosen = [
            (layer, latent) for layer, latent, _ in matched_random(refusal_latents, frequency, seed)
        ]
        families.append(
            Family(
                f"random latents (seed {seed})",
                {"latents": latent_view(saes, chosen)},
                {"latents": [list(pair) for pair in chosen], "seed": seed},
            )
        )
    families.append(
        Family(
            "dense residual",
            {f"layer {layer}": _dense(layer) for layer in range(n_layers)},
        )
    )
    unit = direction.vector.float() / direction.vector.float().norm()
    families.append(
        Family(
            "direction projection",
            {f"layer {direction.layer}": lambda r: (r[:, direction.layer] @ unit)[:, None].numpy()},
        )
    )
    return families


def _dense(layer: int) -> Callable[[torch.Tensor], np.ndarray]:
    return lambda resid: resid[:, layer].numpy()


# --------------------------------------------------------------------------- probes


@dataclass
class Probe:
    family: str
    view: str
    c: float
    val_auroc: float
    val_accuracy: float
    model: Any
    val_log_loss: float = math.nan


def log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean negative log-likelihood of binary labels under predicted probabilities."""
    p = np.clip(np.asarray(scores, dtype=float), 1e-12, 1 - 1e-12)
    y = np.asarray(labels, dtype=bool)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def balanced_accuracy_rows(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each row of `[B, n]` labels and predictions: the mean of the
    recall of each class present in the row (a constant classifier scores 0.5 whenever both
    classes are present)."""
    labels = np.atleast_2d(labels).astype(bool)
    correct = np.atleast_2d(predicted).astype(bool) == labels
    recalls = []
    for cls in (labels, ~labels):
        n = cls.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(n > 0, (correct & cls).sum(axis=1) / n, np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(auroc_rows(labels, scores)[0])


def _classifier(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5_000))


def skipped_target(plain: dict[str, Examples], target: str) -> str | None:
    """Why a target cannot be probed on these splits, or None."""
    for name in ("fit", "val"):
        labels = plain[name].labels(target)
        if labels.all() or not labels.any():
            return (
                f"the {name} split has one class for target {target} ({int(labels.sum())} of "
                f"{labels.size} positive)"
            )
    return None


def fit_probe(
    family: Family,
    fit: tuple[dict[str, np.ndarray], np.ndarray],
    val: tuple[dict[str, np.ndarray], np.ndarray],
    c_grid: Sequence[float],
) -> Probe:
    """The (view, C) with the lowest validation log-loss (AUROC breaks ties), fitted on the fit
    split only: test data never takes part in any choice.

    Log-loss, not accuracy or AUROC: neither of those sees a probe so regularised that its
    probabilities sit on the fit split's base rate. AUROC ignores the threshold, so it can
    prefer such a probe, and accuracy ties it with the majority class; its test predictions are
    then one class. Log-loss rewards a probe only for probabilities that separate the classes."""
    (x_fit, y_fit), (x_val, y_val) = fit, val
    for name, labels in (("fit", y_fit), ("validation", y_val)):
        if labels.all() or not labels.any():
            raise UserError(
                f"the probe's {name} split has one class only ({int(labels.sum())} of "
                f"{labels.size} positive); use more prompts (--set n_train=...)"
            )
    best: Probe | None = None
    for view in family.views:
        for c in c_grid:
            model = _classifier(c).fit(x_fit[view], y_fit)
            scores = model.predict_proba(x_val[view])[:, 1]
            auroc = _auroc(y_val, scores)
            accuracy = float(((scores >= 0.5) == y_val).mean())
            loss = log_loss(y_val, scores)
            if best is None or (loss, -auroc) < (best.val_log_loss, -best.val_auroc):
                best = Probe(family.name, view, c, auroc, accuracy, model, loss)
    assert best is not None
    return best


def evaluate_probe(probe: Probe, x: np.ndarray, labels: np.ndarray, *, seed: int) -> dict[str, Any]:
    """Accuracy, balanced accuracy and AUROC with bootstrap intervals, beside the accuracy of
    the constant classifier (the majority-class rate) and whether the probe's own predictions
    are constant (then its accuracy is a class rate, not evidence of a signal)."""
    scores = probe.model.predict_proba(x)[:, 1]
    predicted = scores >= 0.5
    correct = predicted == labels
    accuracy = bootstrap_statistic(len(labels), lambda i: correct[i].mean(axis=1), seed=seed)
    balanced = bootstrap_statistic(
        len(labels), lambda i: balanced_accuracy_rows(labels[i], predicted[i]), seed=seed
    )
    auroc = bootstrap_statistic(len(labels), lambda i: auroc_rows(labels[i], scores[i]), seed=seed)
    positive = float(labels.mean())
    return {
        "n": int(labels.size),
        "n_positive": int(labels.sum()),
        "accuracy": _estimate(accuracy),
        "balanced_accuracy": _estimate(balanced),
        "majority_rate": round(max(positive, 1.0 - positive), 4),
        "predicted_positive": round(float(predicted.mean()), 4),
        "constant_predictions": bool(predicted.all() or not predicted.any()),
        "auroc": _estimate(auroc),
    }


def _estimate(estimate: Estimate) -> dict[str, Any]:
    def clean(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 4)

    return {"mean": clean(estimate.mean), "ci95": [clean(estimate.low), clean(estimate.high)]}


def scored_subsets(examples: Examples, target: str) -> dict[str, np.ndarray]:
    """Index sets an OOD source is scored on: all of it, and for the refusal target the paper's
    subset (refused plain requests vs adversarial prompts that make the model comply)."""
    everything = np.arange(len(examples.texts))
    if target == "harmful":
        return {"all": everything[np.array(examples.group) != "plain"]}
    refused = examples.labels("refusal")
    group = np.array(examples.group)
    paper = ((group == "plain") & refused) | (
        (group == "adversarial") & ~refused & examples.harmful
    )
    return {"all": everything[group != "control"], "paper": everything[paper]}


def run_probes(
    families: Sequence[Family],
    resid: dict[str, torch.Tensor],
    plain: dict[str, Examples],
    ood: dict[str, Examples],
    settings: ProbeSettings,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per (target, family, test set, subset). A target whose fit or validation split
    has one class (a model that refuses nothing) is skipped; `skipped` says why."""
    rows = []
    targets = [t for t in settings.targets if not skipped_target(plain, t)]
    jobs = [(t, f) for t in targets for f in families]
    for target, family in tqdm(jobs, desc="probes", unit="probe", disable=not progress):
        views = {
            name: {view: fn(resid[name]) for view, fn in family.views.items()} for name in resid
        }
        probe = fit_probe(
            family,
            (views["fit"], plain["fit"].labels(target)),
            (views["val"], plain["val"].labels(target)),
            settings.c_grid,
        )
        scored = [("in distribution", "test", "all", np.arange(len(plain["test"].texts)))]
        for source, examples in ood.items():
            for subset, index in scored_subsets(examples, target).items():
                scored.append((f"OOD {source}", source, subset, index))
        for label, name, subset, index in scored:
            examples = plain[name] if name in plain else ood[name]
            if len(index) == 0:
                continue
            result = evaluate_probe(
                probe,
                views[name][probe.view][index],
                examples.labels(target)[index],
                seed=settings.seed,
            )
            rows.append(
                {
                    "target": target,
                    "features": family.name,
                    "test": label,
                    "subset": subset,
                    "view": probe.view,
                    "c": probe.c,
                    "chosen_by": "validation log-loss",
                    "val_log_loss": round(probe.val_log_loss, 4),
                    "val_auroc": round(probe.val_auroc, 4),
                    **result,
                    "info": family.info,
                }
            )
    return rows


def check_families(saes: SAESet, latent_set: LatentSet, k: int | None) -> list[tuple[int, int]]:
    latents = list(latent_set.top(k))
    missing = sorted({layer for layer, _ in latents} - set(saes.layers))
    if missing:
        raise UserError(
            f"the latent set uses layers {missing} that the SAE set lacks; pass the --saes it "
            f"was selected with ({latent_set.saes.get('path')})"
        )
    return latents


# --------------------------------------------------------------------------- the command


def probes_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    latent_set: LatentSet,
    direction: Direction,
    settings: ProbeSettings,
    out: str | Path,
    *,
    data_dir: str | Path | None,
    device: str = "auto",
    cache_dir: str | None = None,
    executor: Executor | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.perf_counter()
    run = start_analysis(
        "probes", settings, lm, saes, out, latent_sets=[latent_set], direction=direction
    )
    refusal_latents = check_families(saes, latent_set, settings.k)
    plain, ood = build_examples(settings, data_dir, latent_set.selection_hashes())
    splits = {**plain, **ood}
    if "refusal" in settings.targets:
        with analysis_context(
            lm,
            formatter,
            run,
            judges=(settings.judge,),
            max_new_tokens=settings.screen_tokens,
            batch_size=settings.batch_size,
            device=device,
            cache_dir=cache_dir,
            executor=executor,
            echo=echo,
        ) as ctx:
            sets = [PromptSet(e.name, tuple(map(_plain, e.texts))) for e in splits.values()]
            for examples, refused in zip(splits.values(), refusals(ctx, sets), strict=True):
                examples.refused = refused
    resid = {
        name: last_token_residuals(
            lm,
            formatter,
            e.texts,
            batch_size=settings.batch_size,
            run=run,
            desc=f"residuals ({name})",
        )
        for name, e in splits.items()
    }
    families = feature_families(
        saes,
        refusal_latents,
        last_token_frequency(saes, resid["fit"]),
        direction,
        lm.n_layers,
        settings.random_seeds,
    )
    rows = run_probes(families, resid, plain, ood, settings)
    summary = {
        "model": lm.identity(),
        "settings": settings_dict(settings),
        "latents": {
            "path": latent_set.info.get("path"),
            "method": latent_set.method,
            "k": len(refusal_latents),
        },
        "direction": {"layer": direction.layer, "source": direction.source},
        "saes": {"path": str(saes.path), "fingerprint": saes.fingerprint()},
        "splits": {name: _describe(e) for name, e in splits.items()},
        "rows": rows,
        "skipped": {t: why for t in settings.targets if (why := skipped_target(plain, t))},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(run.file("probes.json"), summary)
    (run.path / "probes.md").write_text(probes_markdown(summary))
    return summary


def _describe(examples: Examples) -> dict[str, Any]:
    groups = np.array(examples.group)
    described: dict[str, Any] = {"n": len(examples.texts), "harmful": int(examples.harmful.sum())}
    for group in dict.fromkeys(examples.group):
        described[group] = int((groups == group).sum())
    if examples.refused is not None:
        described["refused"] = int(examples.refused.sum())
    return described


def probes_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Linear probes (last template token)",
        "",
        "Fitted on plain harmful vs harmless train prompts; C (and the dense layer) chosen on "
        "validation log-loss; accuracy, balanced accuracy and AUROC with 95% bootstrap "
        "intervals. The majority-class rate is what a constant classifier scores: an accuracy "
        "at that rate with balanced accuracy 0.50 is no signal.",
        "",
    ]
    flagged = constant_rows(summary["rows"])
    if flagged:
        lines += [
            f"**Warning: {len(flagged)} probe(s) predict one class on a whole test set** (their "
            "accuracy is a class rate, their balanced accuracy 0.50): " + "; ".join(flagged) + ".",
            "",
        ]
    for target in dict.fromkeys(row["target"] for row in summary["rows"]):
        lines += [
            f"## Target: {target}",
            "",
            "| features | test | subset | n | accuracy | majority rate | balanced accuracy | "
            "AUROC | chosen | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in summary["rows"]:
            if row["target"] != target:
                continue
            majority = row.get("majority_rate")
            lines.append(
                f"| {row['features']} | {row['test']} | {row['subset']} | {row['n']} | "
                f"{interval_cell(row['accuracy'])} | "
                f"{'-' if majority is None else f'{majority:.2f}'} | "
                f"{interval_cell(row.get('balanced_accuracy'))} | {interval_cell(row['auroc'])} | "
                f"{row['view']}, C={row['c']:g} | {constant_note(row)} |"
            )
        lines.append("")
    for target, why in summary.get("skipped", {}).items():
        lines += [f"Target {target} skipped: {why}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the registry's hooks

SETTINGS = ProbeSettings
QUICK = QUICK_PROBES


def run(inputs: AnalysisInputs, settings: ProbeSettings, out: Path) -> dict[str, Any]:
    """The job over the shared analysis inputs (see `analyses.registry`)."""
    return probes_job(
        inputs.lm,
        inputs.formatter,
        inputs.saes,
        inputs.latents,
        inputs.direction,
        settings,
        out,
        **inputs.runtime(),
    )
