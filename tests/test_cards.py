"""Latent cards: firing rates, logit lens, top contexts, and a self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import random_sae_set
from refusal_lens.cards import build_cards, logit_lens, write_cards
from refusal_lens.data import Prompt, PromptSet
from refusal_lens.direction import Direction
from refusal_lens.latents import latent_statistics
from refusal_lens.models import ChatFormatter, LoadedModel

HARMFUL = PromptSet(
    "harm", tuple(Prompt(t) for t in ["Explain how to hack a computer.", "Steal a car <b>now</b>."])
)
HARMLESS = PromptSet(
    "safe", tuple(Prompt(t) for t in ["Write a poem about the sea.", "Name a fruit."])
)


def test_cards_report_what_the_latents_do(
    tiny: LoadedModel, tmp_path: Path, shared_data: Path
) -> None:
    saes = random_sae_set(tiny)
    formatter = ChatFormatter(tiny.tokenizer)
    direction = Direction(torch.randn(tiny.d_model), 1, -1, {})
    latents = [(1, 3), (2, 10), (1, 40)]
    cards = build_cards(
        tiny,
        formatter,
        saes,
        latents,
        direction,
        HARMFUL,
        HARMLESS,
        data_dir=shared_data,
        progress=False,
    )
    assert [(c["layer"], c["latent"]) for c in cards] == latents
    stats = latent_statistics(tiny, formatter, saes, HARMFUL.texts(), progress=False)
    for card in cards:
        layer, latent = card["layer"], card["latent"]
        expected = float(stats.frequency[layer][latent])
        assert abs(card["fires_on"]["harmful_tokens"] - expected) < 1e-3
        row = saes[f"resid_post.{layer}"].W_dec[latent].detach()
        cos = float(row @ direction.vector / (row.norm() * direction.vector.norm()))
        assert abs(card["cosine_with_refusal_direction"] - cos) < 1e-3
        for contexts in card["contexts"].values():
            peaks = [c["max"] for c in contexts]
            assert peaks == sorted(peaks, reverse=True)
            assert all(c["values"][c["peak"]] == c["max"] for c in contexts)
    assert any(card["contexts"]["corpus"] for card in cards)
    json_path, html_path = write_cards(cards, tmp_path / "cards", "test <cards>")
    page = html_path.read_text()
    assert json_path.is_file() and "<script" not in page and "test &lt;cards&gt;" in page
    assert "http" not in page  # self-contained


def test_logit_lens_promotes_the_argmax_token(tiny: LoadedModel) -> None:
    unembed = tiny.model.get_output_embeddings().weight
    vector = unembed[17].detach().clone() * 10 / tiny.model.model.norm.weight.detach()
    lens = logit_lens(tiny, vector, 3)
    assert lens["promotes"][0][0] == tiny.tokenizer.decode(
        [int((unembed @ (vector * tiny.model.model.norm.weight)).argmax())]
    )
    assert len(lens["suppresses"]) == 3
