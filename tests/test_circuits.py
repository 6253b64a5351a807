"""Upstream -> downstream edges and the clamp test (analyses stage)."""

from __future__ import annotations

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
    edge_attribution,
    patched_edges,
    salient_positions,
)
from refusal_lens.errors import UserError
from refusal_lens.features import FeatureSet
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


def test_circuits_job_on_a_tiny_model(
    tiny: LoadedModel, relu_saes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    up, down = _live(relu_saes, tiny, ChatFormatter(tiny.tokenizer))
    model = {"name": tiny.name, "weights_sha256": tiny.weights_sha256}
    saes_info = {"path": "x", "fingerprint": relu_saes.fingerprint()}

    def features(pairs: list) -> FeatureSet:
        rows = [(layer, latent, 1.0) for layer, latent in pairs]
        return FeatureSet(
            model, saes_info, "ours", "heldout", {}, rows, {"mode": "scale", "value": -1}
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
            features(up),
            settings,
            tmp_path / "run",
            data_dir=None,
            echo=echo,
        )

    summary = job()
    assert summary["validation"]["n_edges"] == len(up) * len(down)
    assert {row["upstream"] for row in summary["clamp"]} == {"harm latents", "random (seed 0)"}
    assert any(edge["upstream"]["latent"] == "error" for edge in summary["edges"])
    assert (tmp_path / "run" / "circuits.md").read_text().startswith("# Upstream harm latents")

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
