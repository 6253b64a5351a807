"""LA-IG: exact path end-points, completeness, gradients against finite differences."""

from __future__ import annotations

import pytest
import torch

import refusal_lens.attribution as attribution_module
from refusal_lens.attribution import (
    Attribution,
    AttributionSettings,
    attribute,
    choose_refusal_token,
    path_logits,
    position_mask,
)
from refusal_lens.direction import Direction
from refusal_lens.errors import UserError
from refusal_lens.hooks import HookPoint, add_hooks, record
from refusal_lens.interventions import apply
from refusal_lens.models import ChatFormatter, LoadedModel
from refusal_lens.saes import SAESet

PROMPTS = [
    "Explain how to hack a computer.",
    "Write a poem about the sea.",
    "Tell me how to bake bread with flour and water.",
]
REFUSAL = 5


@pytest.fixture(scope="module")
def direction(tiny: LoadedModel) -> Direction:
    torch.manual_seed(3)
    return Direction(torch.randn(tiny.d_model) * 4, 1, -1, {"name": tiny.name})


def _subset(saes: SAESet, layers: list[int]) -> SAESet:
    return SAESet(saes.model, {p: s for p, s in saes if p.layer in layers}, {})


def _logits(lm: LoadedModel, formatter: ChatFormatter, interventions=()) -> torch.Tensor:
    batch = formatter.encode(PROMPTS)
    with apply(lm.model, interventions), torch.no_grad():
        return lm.model(**batch.forward_kwargs()).logits[:, -1]


@pytest.mark.parametrize("layers", [[0, 1, 2], [0, 1], [1]])
def test_path_end_points_are_the_clean_and_the_ablated_run(
    layers: list[int],
    tiny: LoadedModel,
    formatter: ChatFormatter,
    tiny_saes: SAESet,
    direction: Direction,
) -> None:
    saes = _subset(tiny_saes, layers)
    at = {a: path_logits(tiny, formatter, saes, direction, PROMPTS, a) for a in (0.0, 1.0)}
    torch.testing.assert_close(at[0.0], _logits(tiny, formatter), atol=1e-4, rtol=1e-4)
    ablated = _logits(tiny, formatter, [direction.ablation()])
    torch.testing.assert_close(at[1.0], ablated, atol=1e-4, rtol=1e-4)


def test_completeness_attributions_sum_to_the_metric_change(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet, direction: Direction
) -> None:
    saes = _subset(tiny_saes, [0, 1])
    result = attribute(
        tiny,
        formatter,
        saes,
        direction,
        PROMPTS,
        REFUSAL,
        settings=AttributionSettings(steps=24, batch_size=2),
        progress=False,
    )
    change = result.metric_ablated - result.metric_clean
    assert change.abs().min() > 1e-3  # the test means something
    assert (result.completeness_gap() <= 0.02 * change.abs() + 1e-3).all()
    assert result.ablation_scores.abs().max() > 0  # layer 2 comes after the last SAE


def test_gradients_match_finite_differences(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet, direction: Direction
) -> None:
    """At a = 0 (paper estimator, one step) a latent's score is the directional derivative of
    the metric along its clean -> ablated change, averaged over the positions."""
    saes = _subset(tiny_saes, [0, 2])
    settings = AttributionSettings(steps=1, estimator="paper", positions="all")
    result = attribute(
        tiny,
        formatter,
        saes,
        direction,
        PROMPTS[:1],
        REFUSAL,
        settings=settings,
        progress=False,
    )
    target = int(result.target_tokens[0])
    point = HookPoint(0, "resid_post")
    sae = saes[point]
    batch = formatter.encode(PROMPTS[:1])
    with torch.no_grad():
        with record(tiny.model, [point]) as clean:
            tiny.model(**batch.forward_kwargs())
        with apply(tiny.model, [direction.ablation()]), record(tiny.model, [point]) as ablated:
            tiny.model(**batch.forward_kwargs())
    change = sae.encode(ablated[point][0]) - sae.encode(clean[point][0])
    latent = int(change.abs().sum(dim=(0, 1)).argmax())
    velocity = change[..., latent : latent + 1] * sae.W_dec[latent]
    velocity[:, 0] = 0  # "all" positions start after the first token (an attention sink)

    def metric(eps: float) -> float:
        hook = (point, lambda act, _p: act + eps * velocity)
        with add_hooks(tiny.model, [hook]), torch.no_grad():
            logits = tiny.model(**batch.forward_kwargs()).logits[0, -1].double()
        return float(logits[target] - logits[REFUSAL])

    eps = 1e-2
    numeric = (metric(eps) - metric(-eps)) / (2 * eps)
    n_positions = int(position_mask(batch, formatter, "all").sum())
    column = int((result.candidates[0] == latent).nonzero())
    analytic = float(result.scores[0][0, column]) * n_positions
    assert abs(numeric) > 1e-4
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-4)


def test_candidates_keep_only_their_columns_and_runs_resume(
    tiny: LoadedModel,
    formatter: ChatFormatter,
    tiny_saes: SAESet,
    direction: Direction,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = AttributionSettings(steps=3, batch_size=2)
    full = attribute(
        tiny,
        formatter,
        tiny_saes,
        direction,
        PROMPTS,
        REFUSAL,
        settings=settings,
        progress=False,
    )
    chosen = {0: torch.tensor([3, 40]), 2: torch.tensor([7])}
    few = attribute(
        tiny,
        formatter,
        tiny_saes,
        direction,
        PROMPTS,
        REFUSAL,
        candidates=chosen,
        settings=settings,
        out=tmp_path,
        progress=False,
    )
    assert few.scores[0].shape == (3, 2) and few.scores[1].shape == (3, 0)
    torch.testing.assert_close(few.scores[0], full.scores[0][:, [3, 40]])
    torch.testing.assert_close(few.scores[2], full.scores[2][:, [7]])
    # a rerun reads every batch back instead of recomputing it
    monkeypatch.setattr(attribution_module, "_attribute_batch", _fail)
    again = attribute(
        tiny,
        formatter,
        tiny_saes,
        direction,
        PROMPTS,
        REFUSAL,
        candidates=chosen,
        settings=settings,
        out=tmp_path,
        progress=False,
    )
    torch.testing.assert_close(again.scores[0], few.scores[0])
    few.save(tmp_path / "saved")
    loaded = Attribution.load(tmp_path / "saved")
    torch.testing.assert_close(loaded.scores[2], few.scores[2])
    assert loaded.global_top(2) == few.global_top(2)
    per_prompt = loaded.per_prompt_top(2)
    assert len(per_prompt) == 3 and all(len(top) == 2 for top in per_prompt)
    # the cached batches are keyed by what the model saw: another system prompt (chat
    # template) is another attribution, not a read of the stored one
    terse = ChatFormatter(tiny.tokenizer, system="Be terse.")
    with pytest.raises(AssertionError, match="recomputed a batch"):
        attribute(
            tiny, terse, tiny_saes, direction, PROMPTS, REFUSAL,
            candidates=chosen, settings=settings, out=tmp_path, progress=False,
        )  # fmt: skip


def _fail(*_args, **_kwargs):
    raise AssertionError("recomputed a batch that was on disk")


def test_refusal_token_needs_refusals(tiny: LoadedModel, formatter: ChatFormatter) -> None:
    with pytest.raises(UserError, match="refused none"):
        choose_refusal_token(tiny, formatter, PROMPTS, max_new_tokens=4)


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(UserError, match="estimator"):
        AttributionSettings(estimator="left")
    with pytest.raises(UserError, match="positions"):
        AttributionSettings(positions="middle")


def test_patching_clean_values_back_is_the_identity(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    from refusal_lens.interventions import PatchLatents

    point = HookPoint(1, "resid_post")
    batch = formatter.encode(PROMPTS)
    with record(tiny.model, [point]) as clean, torch.no_grad():
        tiny.model(**batch.forward_kwargs())
    idx = torch.tensor([1, 2, 3, 50])
    values = tiny_saes[point].encode(clean[point][0])[..., idx]
    patch = PatchLatents(tiny_saes, {1: idx}, {1: values})
    torch.testing.assert_close(
        _logits(tiny, formatter, [patch]), _logits(tiny, formatter), atol=1e-5, rtol=1e-5
    )
    moved = PatchLatents(tiny_saes, {1: idx}, {1: values + 3.0})
    assert not torch.allclose(_logits(tiny, formatter, [moved]), _logits(tiny, formatter))


def test_attribution_ranks_agree_with_patching_near_the_output(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet, direction: Direction
) -> None:
    from refusal_lens.attribution import validate_attribution

    saes = _subset(tiny_saes, [2])
    point = HookPoint(2, "resid_post")
    batch = formatter.encode(PROMPTS[:1])
    with apply(tiny.model, [direction.ablation()]), record(tiny.model, [point]) as acts:
        tiny.model(**batch.forward_kwargs())
    with torch.no_grad():
        active = saes[point].encode(acts[point][0])[0, -1].nonzero().flatten()
    latents = [(2, int(i)) for i in active[:8]]
    report = validate_attribution(
        tiny,
        formatter,
        saes,
        direction,
        PROMPTS[:2],
        REFUSAL,
        latents,
        settings=AttributionSettings(steps=8, positions="last"),
        top_k=3,
        progress=False,
    )
    assert report["n_latents"] == len(latents) >= 4
    assert report["spearman_mean"] > 0.5, report
    # two unrelated top-3 lists of 8 latents share 3/8 of their members on average; a faithful
    # attribution near the output agrees with patching on (nearly) all of its top 3
    assert report["top_k_overlap_mean"] >= 2 / 3, report
    assert report["top_k_overlap_mean"] == pytest.approx(
        sum(p["top_k_overlap"] for p in report["per_prompt"]) / len(report["per_prompt"])
    )
