"""Rerunning the upper part of a model from a layer reproduces the full forward."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.hooks import HookPoint, record
from refusal_lens.models.partial import LayerCalls


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama", "tiny_gemma2"])
def test_logits_after_a_layer_match_the_full_forward(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    lm = request.getfixturevalue(fixture)
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    calls = LayerCalls(lm.model)
    points = [HookPoint(layer, "resid_post") for layer in range(lm.n_layers)]
    with torch.inference_mode(), calls.capture(), record(lm.model, points) as acts:
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    for point in points:
        hidden = acts[point][0]
        assert calls.matches_full_forward(
            point.layer, hidden, logits, mask.bool(), tolerance=1e-5
        ), point
    # a changed hidden state changes the logits
    other = calls.logits_after(0, acts[points[0]][0] + 1.0)
    assert not torch.allclose(other, logits)
