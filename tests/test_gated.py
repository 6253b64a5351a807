"""Gated edits: an edit applied from the token on where a gate (latents, or a direction) fires
for its row, the same in a prompt's forward, each decoding step and a teacher-forced pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import random_sae_set
from refusal_lens.errors import UserError
from refusal_lens.generation import greedy_config
from refusal_lens.hooks import HookPoint, record
from refusal_lens.interventions import (
    AddDirection,
    DirectionGate,
    EditLatents,
    Gated,
    LatentGate,
    apply,
    bind,
    from_dict,
)
from refusal_lens.models import ChatFormatter, LoadedModel
from refusal_lens.saes import SAESet

PROMPTS = ["Write a poem about the sea.", "Explain how to hack a computer, step by step."]


def _push(lm: LoadedModel, layer: int = 2) -> AddDirection:
    torch.manual_seed(1)
    return AddDirection(torch.randn(lm.d_model), layer=layer, coeff=6.0)


def _condition(lm: LoadedModel) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(lm.d_model)


def _scores(lm: LoadedModel, formatter: ChatFormatter, vector: torch.Tensor) -> torch.Tensor:
    """The direction gate's score at layer 0 for every token of PROMPTS (padding: -inf)."""
    batch = formatter.encode(PROMPTS)
    point = HookPoint(0, "resid_post")
    with record(lm.model, [point]) as store, torch.no_grad():
        lm.model(**batch.forward_kwargs())
    act = store[point][0].float()
    cos = act @ (vector / vector.norm()) / act.norm(dim=-1)
    return torch.where(batch.attention_mask.bool(), cos, torch.full_like(cos, -torch.inf))


def _logits(lm: LoadedModel, formatter: ChatFormatter, interventions=()) -> torch.Tensor:
    batch = formatter.encode(PROMPTS)
    bound = bind(interventions, PROMPTS, batch.attention_mask)
    with apply(lm.model, bound), torch.no_grad():
        return lm.model(**batch.forward_kwargs()).logits


def _greedy(lm: LoadedModel, formatter: ChatFormatter, batch: Any) -> Any:
    """`answer(interventions)`: 6 greedy new tokens for each row of `batch` (no stop token)."""
    formatter.__dict__["stop_token_ids"] = []
    config = greedy_config(lm, formatter, 6)

    def answer(interventions: list) -> torch.Tensor:
        with apply(lm.model, bind(interventions, PROMPTS, batch.attention_mask)):
            out = lm.model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                generation_config=config,
            )
        return out[:, batch.input_ids.shape[1] :]

    return answer


def test_a_gate_that_never_or_always_fires_is_nothing_or_the_edit(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    push, vector = _push(tiny), _condition(tiny)
    clean, edited = _logits(tiny, formatter), _logits(tiny, formatter, [push])
    never = Gated(push, DirectionGate(vector, 0, threshold=2.0))  # a cosine never reaches 2
    always = Gated(push, DirectionGate(vector, 0, threshold=-2.0))
    assert torch.equal(_logits(tiny, formatter, [never]), clean)
    mask = formatter.encode(PROMPTS).attention_mask.bool()
    torch.testing.assert_close(_logits(tiny, formatter, [always])[mask], edited[mask])


def test_the_edit_starts_at_the_first_token_where_the_gate_fires(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    push, vector = _push(tiny), _condition(tiny)
    scores = _scores(tiny, formatter, vector)
    # a threshold between the two rows' maxima: one row fires somewhere, the other never
    top = scores.max(dim=1).values
    threshold = float(top.mean())
    fires, quiet = int(top.argmax()), int(top.argmin())
    first = int((scores[fires] >= threshold).nonzero()[0])
    clean, edited = _logits(tiny, formatter), _logits(tiny, formatter, [push])
    gated = _logits(tiny, formatter, [Gated(push, DirectionGate(vector, 0, threshold))])
    assert torch.equal(gated[quiet], clean[quiet])
    assert torch.equal(gated[fires, :first], clean[fires, :first])
    torch.testing.assert_close(gated[fires, first:], edited[fires, first:])


def test_generation_and_teacher_forcing_agree_token_for_token(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    """Greedy tokens under a latent-gated latent edit are the argmax of one teacher-forced
    forward over prompt + answer under the same gated edit: the gate's running state carries
    across decoding steps exactly as it runs over a whole sequence."""
    gate_latents = ((0, 3), (0, 40), (0, 77))
    edit = EditLatents(tiny_saes, ((1, 5), (2, 9)), "set", 6.0)
    batch = formatter.encode(PROMPTS)
    point = HookPoint(0, "resid_post")
    with record(tiny.model, [point]) as store, torch.no_grad():
        tiny.model(**batch.forward_kwargs())
    sae = tiny_saes[point]
    values = sae.encode_latents(store[point][0], torch.tensor([3, 40, 77])).sum(-1)
    threshold = float(values[batch.attention_mask.bool()].quantile(0.7))
    gated = Gated(edit, LatentGate(tiny_saes, gate_latents, threshold))
    answer = _greedy(tiny, formatter, batch)

    steered = answer([gated])
    assert not torch.equal(steered, answer([]))  # the gate fired somewhere: answers changed
    for row in range(len(PROMPTS)):
        prompt = batch.input_ids[row][batch.attention_mask[row].bool()].unsqueeze(0)
        whole = torch.cat([prompt, steered[row : row + 1]], dim=1)
        alone = bind([gated], [PROMPTS[row]], torch.ones_like(whole))
        with apply(tiny.model, alone), torch.no_grad():
            logits = tiny.model(input_ids=whole).logits
        assert torch.equal(logits[0, prompt.shape[1] - 1 : -1].argmax(-1), steered[row])


def test_gates_round_trip_and_bad_ones_are_one_line_errors(
    tiny: LoadedModel, tiny_saes: SAESet, tmp_path: Path
) -> None:
    push = _push(tiny)
    saved = random_sae_set(tiny)
    saved.save(tmp_path / "saes")
    for gate in (
        DirectionGate(_condition(tiny), 0, 0.25),
        LatentGate(saved, ((0, 3), (1, 4)), 1.5, weights=(0.5, -2.0), bias=0.1),
    ):
        item = Gated(push, gate)
        back = from_dict(item.to_dict())
        assert isinstance(back, Gated) and back.to_dict() == item.to_dict()
    late = Gated(_push(tiny, layer=0), DirectionGate(_condition(tiny), 1, 0.0))
    with pytest.raises(UserError, match="the gate reads layer 1 but the edit changes layer 0"):
        late.hooks(tiny.model)
    with pytest.raises(UserError, match="2 latents and 1 weights"):
        LatentGate(tiny_saes, ((0, 3), (1, 4)), 0.0, weights=(1.0,))
    no_threshold = {"kind": "direction", "layer": 0, "direction": {"values": [1.0]}}
    with pytest.raises(UserError, match="threshold"):
        from_dict({**Gated(push, DirectionGate(_condition(tiny), 0, 0.0)).to_dict(),
                   "gate": no_threshold})  # fmt: skip


def test_a_prompt_scope_gate_edits_every_token_of_the_rows_whose_prompt_fires(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    push, vector = _push(tiny), _condition(tiny)
    top = _scores(tiny, formatter, vector).max(dim=1).values
    threshold = float(top.mean())
    fires, quiet = int(top.argmax()), int(top.argmin())
    clean, edited = _logits(tiny, formatter), _logits(tiny, formatter, [push])
    gate = DirectionGate(vector, 0, threshold)
    gated = _logits(tiny, formatter, [Gated(push, gate, scope="prompt")])
    assert torch.equal(gated[quiet], clean[quiet])
    mask = formatter.encode(PROMPTS).attention_mask.bool()
    # from the row's first token, not from the token that fired it
    torch.testing.assert_close(gated[fires][mask[fires]], edited[fires][mask[fires]])
    token = _logits(tiny, formatter, [Gated(push, gate)])
    assert not torch.allclose(token[fires][mask[fires]], gated[fires][mask[fires]])


def test_a_prompt_scope_gate_decides_on_the_prompt_not_on_the_completion(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    """A teacher-forced forward (prompt, then completion) bound with the prompt's length: a
    completion token that would fire the gate does not, so nothing is edited; unbound, the
    whole forward counts as the prompt and the row is edited."""
    prompt = tiny.tokenizer(formatter.render(PROMPTS[0]), add_special_tokens=False)["input_ids"]
    answer = tiny.tokenizer(" a boat on the water", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + answer])
    point = HookPoint(0, "resid_post")
    with record(tiny.model, [point]) as store, torch.no_grad():
        tiny.model(input_ids=ids)
    act = store[point][0][0].float()
    vector = act[-1]  # the condition is the last completion token's own activation
    cos = act @ (vector / vector.norm()) / act.norm(dim=-1)
    assert float(cos[: len(prompt)].max()) < 0.99  # the prompt alone stays below
    push = _push(tiny)
    gated = Gated(push, DirectionGate(vector, 0, 0.99), scope="prompt")
    ones = torch.ones_like(ids)

    def logits(items: list) -> torch.Tensor:
        with apply(tiny.model, items), torch.no_grad():
            return tiny.model(input_ids=ids).logits

    clean = logits([])
    assert torch.equal(logits(bind([gated], PROMPTS[:1], ones, [len(prompt)])), clean)
    torch.testing.assert_close(logits(bind([gated], PROMPTS[:1], ones)), logits([push]))


def test_prompt_scope_generation_matches_teacher_forcing_with_prompt_lengths(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    """Greedy tokens under a prompt-scope gate are the argmax of one teacher-forced forward
    over prompt + answer bound with the prompt's length; one row fires, one does not."""
    push, vector = _push(tiny), _condition(tiny)
    top = _scores(tiny, formatter, vector).max(dim=1).values
    gated = Gated(push, DirectionGate(vector, 0, float(top.mean())), scope="prompt")
    batch = formatter.encode(PROMPTS)
    answer = _greedy(tiny, formatter, batch)

    steered, clean, edited = answer([gated]), answer([]), answer([push])
    fires, quiet = int(top.argmax()), int(top.argmin())
    assert torch.equal(steered[quiet], clean[quiet])
    assert torch.equal(steered[fires], edited[fires])
    for row in range(len(PROMPTS)):
        prompt = batch.input_ids[row][batch.attention_mask[row].bool()].unsqueeze(0)
        whole = torch.cat([prompt, steered[row : row + 1]], dim=1)
        alone = bind([gated], [PROMPTS[row]], torch.ones_like(whole), [prompt.shape[1]])
        with apply(tiny.model, alone), torch.no_grad():
            logits = tiny.model(input_ids=whole).logits
        assert torch.equal(logits[0, prompt.shape[1] - 1 : -1].argmax(-1), steered[row])


def test_a_gate_scope_round_trips_and_a_bad_one_is_refused(tiny: LoadedModel) -> None:
    item = Gated(_push(tiny), DirectionGate(_condition(tiny), 0, 0.25), scope="prompt")
    back = from_dict(item.to_dict())
    assert isinstance(back, Gated) and back.scope == "prompt"
    assert "scope" not in Gated(item.edit, item.gate).to_dict()  # token keys stay as they were
    with pytest.raises(UserError, match="gate scope 'answer' unknown"):
        Gated(item.edit, item.gate, scope="answer")
    with pytest.raises(UserError, match="scope"):
        from_dict({**item.to_dict(), "scope": "answer"})


def test_a_mean_pooled_direction_gate_decides_on_the_prompts_mean_activation(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    """CAST's condition: the cosine of the mean of the prompt's activations (padding excluded)
    with the condition vector; the study's scores and the gated edit agree on it."""
    from refusal_lens.defence.gates import prompt_scores

    vector = _condition(tiny)
    batch = formatter.encode(PROMPTS)
    point = HookPoint(0, "resid_post")
    with record(tiny.model, [point]) as store, torch.no_grad():
        tiny.model(**batch.forward_kwargs())
    act = store[point][0].float()
    weight = batch.attention_mask.unsqueeze(-1).float()
    mean = (act * weight).sum(1) / weight.sum(1)
    expected = mean @ (vector / vector.norm()) / mean.norm(dim=-1)
    gate = DirectionGate(vector, 0, 0.0, pool="mean")
    scores = prompt_scores(tiny, formatter, gate, PROMPTS)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(
        scores, prompt_scores(tiny, formatter, DirectionGate(vector, 0, 0.0), PROMPTS)
    )
    push = _push(tiny)
    threshold = float(scores.mean())
    fires, quiet = int(scores.argmax()), int(scores.argmin())
    gated = _logits(
        tiny,
        formatter,
        [Gated(push, DirectionGate(vector, 0, threshold, pool="mean"), scope="prompt")],
    )
    clean, edited = _logits(tiny, formatter), _logits(tiny, formatter, [push])
    mask = batch.attention_mask.bool()
    assert torch.equal(gated[quiet], clean[quiet])
    torch.testing.assert_close(gated[fires][mask[fires]], edited[fires][mask[fires]])
    with pytest.raises(UserError, match="give the gated edit scope prompt"):
        Gated(push, DirectionGate(vector, 0, threshold, pool="mean"))
    with pytest.raises(UserError, match="pools by max or mean"):
        DirectionGate(vector, 0, 0.0, pool="median")
    item = Gated(push, DirectionGate(vector, 0, threshold, pool="mean"), scope="prompt")
    back = from_dict(item.to_dict())
    assert isinstance(back, Gated) and back.gate.pool == "mean"


def test_a_mean_pooled_latent_gate_fires_on_the_mean_of_its_prompts_scores(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    latents = ((0, 3), (0, 40), (0, 77))
    batch = formatter.encode(PROMPTS)
    point = HookPoint(0, "resid_post")
    with record(tiny.model, [point]) as store, torch.no_grad():
        tiny.model(**batch.forward_kwargs())
    values = tiny_saes[point].encode_latents(store[point][0], torch.tensor([3, 40, 77])).sum(-1)
    mask = batch.attention_mask.float()
    means = ((values * mask).sum(1) / mask.sum(1)).detach()
    push = _push(tiny)
    threshold = float(means.mean())
    fires, quiet = int(means.argmax()), int(means.argmin())
    gate = LatentGate(tiny_saes, latents, threshold, pool="mean")
    gated = _logits(tiny, formatter, [Gated(push, gate, scope="prompt")])
    clean, edited = _logits(tiny, formatter), _logits(tiny, formatter, [push])
    valid = batch.attention_mask.bool()
    assert torch.equal(gated[quiet], clean[quiet])
    torch.testing.assert_close(gated[fires][valid[fires]], edited[fires][valid[fires]])
    with pytest.raises(UserError, match="give the gated edit scope prompt"):
        Gated(push, gate)
    with pytest.raises(UserError, match="pools by max or mean"):
        LatentGate(tiny_saes, latents, 0.0, pool="sum")
