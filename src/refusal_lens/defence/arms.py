"""The defences a study compares, as interventions (data), from a run's artefacts.

- `latents`: the refusal latents set to a value at every token (O'Brien et al. 2024 clamp
  refusal features of Phi-3 Mini up) or scaled by one;
- `direction`: the refusal direction added after its layer (activation addition);
- `latents if harm`: `latents`, gated on the harm latents' summed activation;
- `latents if probe`: `latents`, gated on a logistic probe's logit over the harm latents;
- `latents if sparse probe`: `latents`, gated on an L1 logistic probe's logit over every
  latent of the first edited layer (the probe picks its few latents), mean-pooled;
- `direction if harm`, `direction if probe`, `direction if sparse probe`: `direction` under the
  latent gates (`latent_gated_edits`), so a latent gate and the CAST-style gate can be compared
  under one edit;
- `direction if cosine` (CAST-style): `direction`, gated on the cosine of the residual stream
  with the refusal direction, which is the difference of harmful and harmless means at its
  layer: the dense condition vector beside the dense behaviour vector. Decided once per
  prompt, the cosine is CAST's: that of the prompt's mean activation.

A gate reads a layer at or before every layer its edit changes (`interventions.Gated`), so
the latent gates use the harm latents up to the first layer the refusal latents sit at, and
the CAST gate reads the direction's own layer. Strengths and thresholds are arguments: the
study chooses them on validation prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..direction import Direction
from ..errors import UserError
from ..interventions import AddDirection, DirectionGate, EditLatents, LatentGate
from ..latents import LatentSet
from ..saes import SAESet

Pair = tuple[int, int]


def refusal_edit(saes: SAESet, refusal: Sequence[Pair], mode: str, value: float) -> EditLatents:
    """The refusal latents set to `value` (mode `set`) or scaled by it (`scale`) everywhere."""
    if not refusal:
        raise UserError("a latent defence needs refusal latents; the latent set is empty")
    return EditLatents(saes, tuple(refusal), mode, value)


def direction_edit(direction: Direction, coeff: float) -> AddDirection:
    """The refusal direction (the raw difference of harmful and harmless means: `coeff` 1 adds
    one such difference) added after its layer at every token."""
    return direction.addition(coeff)


def gate_latents(harm: LatentSet, k: int | None, edited: Sequence[Pair]) -> tuple[Pair, ...]:
    """The top-k harm latents a gate can read before the edit: those at or before the first
    layer the refusal latents sit at."""
    first = min(layer for layer, _ in edited)
    usable = tuple(pair for pair in harm.top(k) if pair[0] <= first)
    if not usable:
        layers = sorted({layer for layer, _ in harm.top(k)})
        raise UserError(
            f"no harm latent sits at or before layer {first}, the first the refusal latents "
            f"edit (the harm latents are at layers {layers}); a gate must read before the edit"
        )
    return usable


def harm_gate(
    saes: SAESet, latents: Sequence[Pair], threshold: float, pool: str = "max"
) -> LatentGate:
    """Fires where the harm latents' summed activation (its maximum over a prompt's tokens,
    or with `pool` mean, its mean) reaches `threshold`."""
    return LatentGate(saes, tuple(latents), threshold, pool=pool)


@dataclass(frozen=True)
class Probe:
    """A logistic probe on latent activations, folded to act on raw activations: its logit is
    `bias + weights . f` (the standardisation is inside)."""

    latents: tuple[Pair, ...]
    weights: tuple[float, ...]
    bias: float

    def gate(self, saes: SAESet, threshold: float, pool: str = "max") -> LatentGate:
        """The probe as a gate; `pool` must be how its features were pooled."""
        return LatentGate(saes, self.latents, threshold, self.weights, self.bias, pool)


def fit_probe(
    latents: Sequence[Pair], harmful: np.ndarray, harmless: np.ndarray, c: float = 1.0
) -> Probe:
    """A standardised logistic regression of harmful (1) against harmless (0) prompts on
    `[prompts, latents]` features, with the scaling folded into its weights and bias."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([harmful, harmless]).astype(np.float64)
    y = np.concatenate([np.ones(len(harmful)), np.zeros(len(harmless))])
    if len(harmful) < 2 or len(harmless) < 2:
        raise UserError("a probe gate needs at least 2 harmful and 2 harmless prompts to fit on")
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, max_iter=5_000).fit((x - mean) / scale, y)
    weights = model.coef_[0] / scale
    bias = float(model.intercept_[0] - (model.coef_[0] * mean / scale).sum())
    return Probe(tuple(latents), tuple(float(w) for w in weights), bias)


@dataclass(frozen=True)
class SparseProbe:
    """An L1 probe on every latent of one layer, and its out-of-fold logits on the prompts it
    was fitted on (each from a probe fitted without that prompt): a threshold set on these is
    set as on unseen prompts, not on the probe's own training data."""

    probe: Probe
    c: float
    harmful_logits: np.ndarray
    harmless_logits: np.ndarray


def fit_sparse_probe(
    layer: int,
    harmful: np.ndarray,
    harmless: np.ndarray,
    *,
    max_latents: int = 64,
    folds: int = 5,
    seed: int = 0,
) -> SparseProbe:
    """An L1 logistic probe of harmful (1) against harmless (0) prompts on every latent of the
    SAE at `layer` (`[prompts, d_sae]` features): the strength of the penalty is chosen by
    cross-validated log-loss among those that keep at most `max_latents` latents, and the
    probe keeps the latents with a non-zero weight (the scaling folded in)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([harmful, harmless]).astype(np.float64)
    y = np.concatenate([np.ones(len(harmful)), np.zeros(len(harmless))])
    if min(len(harmful), len(harmless)) < folds:
        raise UserError(
            f"a sparse probe needs at least {folds} harmful and {folds} harmless prompts to "
            f"fit on (cross-validated); it got {len(harmful)} and {len(harmless)}"
        )

    def model(c: float) -> Any:
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(
                C=c, l1_ratio=1.0, solver="liblinear", max_iter=5_000, random_state=seed
            ),
        )

    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    best: tuple[float, float] | None = None
    for c in np.logspace(-2.5, 0.5, 13):
        kept = int((model(c).fit(x, y)[-1].coef_[0] != 0).sum())
        if kept == 0 or kept > max_latents:
            continue
        loss = -cross_val_score(model(c), x, y, cv=split, scoring="neg_log_loss").mean()
        if best is None or loss < best[0]:
            best = (loss, c)
    if best is None:
        raise UserError(
            f"no L1 penalty keeps between 1 and {max_latents} latents of layer {layer}; "
            "raise max_latents or give the probe more prompts"
        )
    c = float(best[1])
    fitted = model(c).fit(x, y)
    scaler, logistic = fitted[0], fitted[-1]
    coef = logistic.coef_[0] / scaler.scale_
    bias = float(logistic.intercept_[0] - (coef * scaler.mean_).sum())
    chosen = np.flatnonzero(coef)
    probe = Probe(
        tuple((layer, int(i)) for i in chosen), tuple(float(coef[i]) for i in chosen), bias
    )
    logits = cross_val_predict(model(c), x, y, cv=split, method="decision_function")
    return SparseProbe(probe, c, logits[: len(harmful)], logits[len(harmful) :])


def cast_gate(direction: Direction, threshold: float, pool: str = "max") -> DirectionGate:
    """Fires where the residual stream's cosine with the refusal direction, at its layer,
    reaches `threshold` (`pool` mean: the cosine of the prompt's mean activation, as CAST
    checks its condition once per prompt)."""
    return DirectionGate(
        direction.vector.float(), direction.layer, threshold, direction.source, pool
    )
