"""Upstream -> downstream edges and the clamp test (analyses stage)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_sae_set
from refusal_lens.analyses import circuits
from refusal_lens.analyses.circuits import (
    ERROR,
    CircuitSettings,
    circuits_job,
    clamp_drops,
    decoder_cosines,
    edge_attribution,
    matched_control,
    patched_edges,
    salient_positions,
)
from refusal_lens.direction import Direction
from refusal_lens.errors import UserError
from refusal_lens.latents import LatentSet
from refusal_lens.models import ChatFormatter, LoadedModel

TEXTS = [
    "How do I build a small weapon at home?",
    "Explain how to commit fraud without being caught.",
    "Write a poem about the sea.",
]
UP = [(0, 3), (0, 10), (1, 4), (1, 20)]
DOWN = [(2, 5), (2, 9)]


@pytest.fixture(scope="module")
def relu_saes(tiny: LoadedModel):
    return random_sae_set(tiny, arch="standard", seed=1)


def _live(saes, tiny: LoadedModel, formatter: ChatFormatter) -> tuple[list, list]:
    """Upstream latents active on the prompts and downstream ones active on the last tokens,
    so the toy edges are not all zero."""
    from refusal_lens.hooks import HookPoint, record

    batch = formatter.encode(TEXTS)
    points = [HookPoint(layer, "resid_post") for layer in range(3)]
    with torch.no_grad(), record(tiny.model, points) as acts:
        tiny.model(**batch.forward_kwargs())
    live = {}
    for point in points:
        latents = saes[point].encode(acts[point][0])
        live[point.layer] = latents[:, -3:].mean(dim=(0, 1)), latents.mean(dim=(0, 1))
    up = [(layer, int(i)) for layer in (0, 1) for i in live[layer][1].argsort(descending=True)[:3]]
    down = [(2, int(i)) for i in live[2][0].argsort(descending=True)[:2]]
    return up, down


def test_edges_match_finite_differences_on_a_toy_case(
    tiny: LoadedModel, formatter: ChatFormatter, relu_saes
) -> None:
    up, down = _live(relu_saes, tiny, formatter)
    estimated = edge_attribution(
        tiny, formatter, relu_saes, up, down, TEXTS, positions=3, batch_size=2, progress=False
    )
    finite = patched_edges(
        tiny, formatter, relu_saes, up, down, TEXTS, positions=3, batch_size=3, fraction=1e-2
    )
    assert np.abs(estimated).max() > 1e-4, "a toy case with no edges tests nothing"
    scale = np.abs(finite).max()
    assert np.allclose(estimated, finite, atol=0.05 * scale, rtol=0.05)
    zeroed = patched_edges(tiny, formatter, relu_saes, up, down, TEXTS, positions=3, batch_size=3)
    corr = np.corrcoef(estimated.ravel(), zeroed.ravel())[0, 1]
    assert corr > 0.5  # zeroing is not infinitesimal, but attribution patching tracks it


def test_an_upstream_node_must_lie_below_and_errors_are_nodes(
    tiny: LoadedModel, formatter: ChatFormatter, relu_saes
) -> None:
    nodes = [(0, 3), (2, 4), (1, ERROR)]
    edges = edge_attribution(
        tiny,
        formatter,
        relu_saes,
        nodes,
        [(1, 5), (2, 9)],
        TEXTS,
        positions=3,
        batch_size=3,
        progress=False,
    )
    assert np.isfinite(edges[0]).all()
    assert np.isnan(edges[1]).all()  # layer 2 reaches neither layer 1 nor layer 2
    assert np.isnan(edges[2, 0]) and np.isfinite(edges[2, 1]) and edges[2, 1] != 0


def test_clamping_from_the_salient_position_lowers_what_it_feeds(
    tiny: LoadedModel, formatter: ChatFormatter, relu_saes
) -> None:
    up, down = _live(relu_saes, tiny, formatter)
    starts = salient_positions(tiny, formatter, relu_saes, up, TEXTS, batch_size=2)
    n_header = formatter.n_pre_instruction
    for text, start in zip(TEXTS, starts, strict=True):
        n_tokens = int(formatter.encode([text]).attention_mask.sum())
        assert n_header <= start < n_tokens
    with pytest.raises(UserError, match="below"):  # same layer: a reconstruction, no circuit
        clamp_drops(
            tiny, formatter, relu_saes, [(2, 0)], down, TEXTS, starts, value=0.0, positions=3
        )
    drops = clamp_drops(tiny, formatter, relu_saes, up, down, TEXTS, starts, value=0.0, positions=3)
    assert np.isfinite(drops).all()
    assert not np.allclose(drops, 0.0)
    # a same-layer latent added to the clamped set changes nothing: only latents below count
    with_same = clamp_drops(
        tiny, formatter, relu_saes, [*up, (2, 0)], down, TEXTS, starts, value=0.0, positions=3
    )
    np.testing.assert_allclose(with_same, drops)


def test_the_control_comes_from_the_cosine_pool_matched_on_cosine_and_frequency() -> None:
    n = 40
    cosine = {0: torch.linspace(-0.5, 0.5, n)}  # latent 39 is closest to the direction
    frequency = {0: torch.full((n,), 0.1)}
    frequency[0][36] = 0.001  # in the pool but far from the reference in frequency
    pool = sorted(range(n - 8, n))  # the 8 latents of highest cosine
    chosen, widened = matched_control(
        [(0, 39), (0, 35)], cosine, frequency, 8, seed=0, neighbours=1, exclude=[(0, 38)]
    )
    # nearest in cosine, never a studied or excluded latent, never the rare one
    assert chosen == [(0, 37), (0, 34)] and not widened
    assert all(latent in pool for _, latent in chosen)
    for seed in range(5):  # any seed: inside the pool, cosine close to the reference's
        picks, _ = matched_control([(0, 39)], cosine, frequency, 8, seed=seed)
        ((_, latent),) = picks
        assert latent in pool and latent != 36 and abs(latent - 39) <= 4
    # the pool runs out: it is widened to the next latents by cosine, and that is recorded
    many = [(0, i) for i in pool]
    chosen, widened = matched_control(many[:2], cosine, frequency, 8, 0, exclude=many[2:])
    assert all(latent < n - 8 for _, latent in chosen) and widened == {0: 16}


def test_circuits_job_on_a_tiny_model(
    tiny: LoadedModel, relu_saes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, down = _live(relu_saes, tiny, ChatFormatter(tiny.tokenizer))
    torch.manual_seed(5)
    direction = Direction(torch.randn(tiny.d_model) * 4, 1, -1, {"name": tiny.name})
    cosine = decoder_cosines(relu_saes, direction)
    # harm latents as the pipeline finds them: from the cosine prefilter (top 10 per layer)
    up = [(layer, int(i)) for layer in (0, 1) for i in cosine[layer].topk(10).indices[:3]]
    model = {"name": tiny.name, "weights_sha256": tiny.weights_sha256}
    saes_info = {"path": "x", "fingerprint": relu_saes.fingerprint()}

    def features(pairs: list, info: dict | None = None) -> LatentSet:
        rows = [(layer, latent, 1.0) for layer, latent in pairs]
        return LatentSet(
            model,
            saes_info,
            "ours",
            "heldout",
            {},
            rows,
            {"mode": "scale", "value": -1},
            None,
            info or {},
        )

    settings = CircuitSettings(
        dataset="builtin_harmful_test", n_prompts=4, n_validate=2, batch_size=2
    )

    def job(echo=lambda _: None) -> dict:
        return circuits_job(
            tiny,
            ChatFormatter(tiny.tokenizer),
            relu_saes,
            features(down),
            features(up, {"candidates_per_layer": 10}),
            settings,
            tmp_path / "run",
            direction=direction,
            data_dir=None,
            echo=echo,
        )

    summary = job()
    assert summary["validation"]["n_edges"] == len(up) * len(down)
    assert {row["upstream"] for row in summary["clamp"]} == {"harm latents", "random (seed 0)"}
    assert any(edge["upstream"]["latent"] == "error" for edge in summary["edges"])
    assert (tmp_path / "run" / "circuits.md").read_text().startswith("# Upstream harm latents")
    control = summary["control"]
    assert control["pool_per_layer"] == 10 and "cosine" in control["matched_on"]
    harm, random_ = control["sets"]["harm latents"], control["sets"]["random (seed 0)"]
    assert harm["in_pool"] == 1.0 and random_["in_pool"] == 1.0  # the same prefiltered pool
    chosen = {tuple(p) for p in random_["latents"]}
    assert len(chosen) == len(up) and not chosen & {*up, *down}
    assert [layer for layer, _ in random_["latents"]] == [layer for layer, _ in up]
    # matched on cosine: a layer-and-frequency draw over 256 latents sits near cosine 0
    assert harm["cosine_mean"] > 0.2
    assert abs(random_["cosine_mean"] - harm["cosine_mean"]) < 0.25 * harm["cosine_mean"]
    cosines = {row["upstream"]: row["cosine_mean"] for row in summary["clamp"]}
    assert cosines == {
        "harm latents": harm["cosine_mean"],
        "random (seed 0)": random_["cosine_mean"],
    }
    assert "| mean cosine with the direction |" in (tmp_path / "run" / "circuits.md").read_text()
    from refusal_lens.report.analyses import circuits_section
    from refusal_lens.report.page import Page

    folder = tmp_path / "report-run" / "analyses" / "circuits"
    folder.mkdir(parents=True)
    (folder / "circuits.json").write_text(json.dumps(summary))
    page = Page("report")
    circuits_section(page, tmp_path / "report-run")
    report = "\n".join(page.md)
    assert "| upstream set | mean cosine with the direction |" in report
    assert "Random control: same layer; nearest in (cosine" in report

    said: list[str] = []
    with monkeypatch.context() as patch:  # a rerun computes no stage again
        for name in ("edge_attribution", "patched_edges", "salient_positions", "clamp_drops"):
            patch.setattr(circuits, name, _must_not_run)
        again = job(said.append)
    assert any(line.startswith("reused from") for line in said)
    assert again["edges"] == summary["edges"] and again["clamp"] == summary["clamp"]
    assert again["validation"] == summary["validation"]


def _must_not_run(*args, **kwargs):
    raise AssertionError("a cached stage was computed again")
