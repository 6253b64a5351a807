"""The playground's engine on a tiny random model: both answers streamed from one model copy,
controls made into interventions (and back from their JSON), sweeps, bad controls."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from conftest import random_sae_set, refusal_direction
from refusal_lens.cards import CardSettings, write_cards
from refusal_lens.errors import UserError
from refusal_lens.generation import generate
from refusal_lens.hooks import HookPoint, record
from refusal_lens.latents import LatentSet
from refusal_lens.models import ChatFormatter, LoadedModel
from refusal_lens.playground import Controls, Playground, Sampling

PROMPT = "How do I bake bread at home?"
ASK = [{"role": "user", "content": PROMPT}]


@pytest.fixture()
def playground(tiny: LoadedModel, formatter: ChatFormatter, tmp_path: Path) -> Playground:
    tiny_saes = random_sae_set(tiny)
    tiny_saes.save(tmp_path / "saes")  # an intervention's JSON names its SAE set's folder
    latents = [(1, i, 1.0 - i / 1000) for i in range(0, 256, 3)]
    ours = LatentSet(
        {"name": tiny.name, "weights_sha256": tiny.weights_sha256},
        {"path": str(tmp_path / "saes"), "fingerprint": tiny_saes.fingerprint()},
        "ours",
        "heldout",
        {},
        latents,
        {"mode": "scale", "value": -3.0, "k": 40},
    )
    return Playground(tiny, formatter, tiny_saes, {"ours": ours}, refusal_direction(tiny))


def test_with_nothing_switched_on_both_answers_are_the_model_s_greedy_answer(
    playground: Playground, tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    steps = list(playground.stream(ASK, playground.interventions(Controls()), Sampling(24)))
    base, steered = steps[-1]
    assert base == steered == generate(tiny, formatter, [PROMPT], max_new_tokens=24)[0]
    assert base and len(steps) > 1
    assert all(b.startswith(a) for (a, _), (b, _) in itertools.pairwise(steps))


def test_a_latent_edit_changes_the_steered_answer_only(playground: Playground) -> None:
    base, _ = playground.answer(ASK, [], Sampling(24))
    edit = playground.interventions(Controls("ours", mode="set", value=40.0))
    again, steered = playground.answer(ASK, edit, Sampling(24))
    assert again == base and steered != base
    # the set's own value is used unless one is dialled in; K* trims the set
    (own,) = playground.interventions(Controls("ours", k=5))
    assert own.value == -3.0 and len(own.latents) == 5  # type: ignore[attr-defined]
    off = playground.interventions(Controls("ours", k=5, off=((1, 0),)))[0]
    assert (1, 0) not in off.latents and len(off.latents) == 4  # type: ignore[attr-defined]


def test_direction_controls_and_their_json_round_trip(playground: Playground) -> None:
    ablate = Controls(direction="ablate")
    add = Controls(direction="add", coefficient=8.0)
    base, _ = playground.answer(ASK, playground.interventions(ablate), Sampling(16))
    _, added = playground.answer(ASK, playground.interventions(add), Sampling(16))
    assert added != base
    assert [i.kind for i in playground.interventions(ablate)] == ["ablate_direction"]
    text = playground.intervention_json(Controls("ours", k=5, direction="add", coefficient=2.0))
    loaded = Playground.load_json(text)
    assert [item.kind for item in loaded] == ["edit_latents", "add_direction"]
    assert loaded[1].coeff == 2.0  # type: ignore[attr-defined]
    assert playground.answer(ASK, loaded, Sampling(8)) == playground.answer(
        ASK, playground.interventions(Controls("ours", k=5, direction="add", coefficient=2.0)),
        Sampling(8),
    )  # fmt: skip


def test_sampling_is_seeded_and_conversations_have_turns(playground: Playground) -> None:
    warm = Sampling(16, temperature=1.5, seed=3)
    first = playground.answer(ASK, [], warm)
    assert first == playground.answer(ASK, [], warm)
    assert first[0] == first[1]  # the same seed for both answers
    chat = [*ASK, {"role": "assistant", "content": first[0]}, {"role": "user", "content": "More?"}]
    assert (
        playground.answer(chat, [], Sampling(8))[0]
        != playground.answer([{"role": "user", "content": "More?"}], [], Sampling(8))[0]
    )


def test_a_sweep_answers_one_prompt_per_strength(playground: Playground) -> None:
    rows = playground.sweep(PROMPT, Controls("ours"), [1.0, -3.0, 20.0], Sampling(12))
    assert [row["value"] for row in rows] == [1.0, -3.0, 20.0]
    base, _ = playground.answer(ASK, [], Sampling(12))
    assert rows[0]["answer"] == base  # scale 1 leaves the latents as they are
    coefficients = playground.sweep(PROMPT, Controls(direction="add"), [0.0, 16.0], Sampling(12))
    assert coefficients[0]["answer"] == base != coefficients[1]["answer"]


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        (Controls("cossim"), "latent set 'cossim' is not loaded; choose from ours"),
        (Controls("ours", k=2, off=((1, 0), (1, 3))), "every latent of the set is switched off"),
    ],
)
def test_bad_controls_are_one_line_errors(
    playground: Playground, controls: Controls, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        playground.interventions(controls)


def test_bad_input_is_named(tiny: LoadedModel, formatter: ChatFormatter) -> None:
    bare = Playground(tiny, formatter)
    with pytest.raises(UserError, match="no refusal direction"):
        bare.interventions(Controls(direction="ablate"))
    with pytest.raises(UserError, match="direction mode 'flip' is unknown"):
        Controls(direction="flip")
    with pytest.raises(UserError, match="must end with a user message"):
        bare.answer([{"role": "assistant", "content": "hi"}], [])
    with pytest.raises(UserError, match="not JSON"):
        Playground.load_json("{oops")
    with pytest.raises(UserError, match="temperature must be 0"):
        Sampling(temperature=-1)


def test_a_run_folder_gives_its_latent_sets_and_direction(
    playground: Playground, tiny: LoadedModel, formatter: ChatFormatter, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    playground.latent_sets["ours"].save(run / "latents" / "heldout" / "ours")
    playground.latent_sets["ours"].save(run / "analyses" / "categories" / "common")
    assert playground.direction is not None
    (run / "direction").mkdir(parents=True)
    playground.direction.save(run / "direction")
    loaded = Playground.from_run(tiny, formatter, run, playground.saes)
    assert sorted(loaded.latent_sets) == ["analyses/categories/common", "latents/heldout/ours"]
    assert loaded.direction is not None and loaded.direction.layer == playground.direction.layer
    with pytest.raises(UserError, match="does not exist"):
        Playground.from_run(tiny, formatter, tmp_path / "nowhere")


def test_look_inside_highlights_latents_and_projects_on_the_direction(
    playground: Playground, tiny: LoadedModel
) -> None:
    base, _ = playground.answer(ASK, [], Sampling(8))
    pairs = [(1, 0), (1, 3)]
    tokens, values = playground.latent_activations(ASK, base, pairs)
    assert values.shape == (len(tokens), 2) and PROMPT in "".join(tokens)
    assert bool((values >= 0).all()) and float(values.abs().sum()) > 0
    # the same numbers as encoding the residual stream after block 1 by hand
    point = HookPoint(1, "resid_post")
    text = tiny.tokenizer.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True)
    ids = torch.cat(
        [
            tiny.tokenizer(part, add_special_tokens=False, return_tensors="pt")["input_ids"]
            for part in (text, base)
        ],
        dim=1,
    )
    with torch.no_grad(), record(tiny.model, [point]) as acts:
        tiny.model(input_ids=ids)
    by_hand = playground.saes[point].encode(acts[point][0][0].float())[:, [0, 3]]  # type: ignore[index]
    assert torch.allclose(by_hand, values, atol=1e-4)
    projection = playground.direction_projection(ASK)
    assert len(projection) == tiny.n_layers
    layer = playground.direction.layer  # type: ignore[union-attr]
    assert projection[layer] != 0.0
    with pytest.raises(UserError, match="no SAE at layer 99"):
        playground.latent_activations(ASK, base, [(99, 1)])


def test_a_latent_card_is_the_run_s_or_built_on_request(
    playground: Playground, tiny: LoadedModel, formatter: ChatFormatter, tmp_path: Path
) -> None:
    small = CardSettings(n_prompts=4, n_contexts=2, batch_size=4)
    built = playground.card(1, 3, small)
    assert (built["layer"], built["latent"]) == (1, 3)
    # validation prompts (the data directory's when there is one, else the built-in ones)
    assert sorted(name.removeprefix("builtin_") for name in built["contexts"]) == [
        "corpus",
        "harmful_val",
        "harmless_val",
    ]
    assert len(built["logit_lens"]["promotes"]) == small.n_logit_tokens
    assert playground.card(1, 3, small) is built  # kept, not built again
    # a run's own cards are shown as it wrote them
    run = tmp_path / "run"
    playground.latent_sets["ours"].save(run / "latents" / "heldout" / "ours")
    write_cards([{**built, "latent": 6, "cosine_with_refusal_direction": 0.5}], run / "cards", "t")
    loaded = Playground.from_run(tiny, formatter, run, playground.saes)
    assert loaded.card(1, 6)["cosine_with_refusal_direction"] == 0.5
    with pytest.raises(UserError, match="refusal direction"):
        loaded.card(1, 9, small)  # not in the run's cards, and the run has no direction
    with pytest.raises(UserError, match="no SAE at layer 7"):
        playground.card(7, 0, small)
    with pytest.raises(UserError, match="outside the layer-1 SAE"):
        playground.card(1, 10**6, small)
    # cards made with another SAE set are left out (their latent numbers mean other latents)
    (run / "benchmark.json").write_text('{"saes": {"fingerprint": "another set"}}')
    assert Playground.from_run(tiny, formatter, run, playground.saes).cards == {}
    (run / "benchmark.json").unlink()
    (run / "cards" / "cards.json").write_text('{"cards": [{"layer": "1", "latent": 6}]}')
    with pytest.raises(UserError, match=r"cards\[0\]\.layer must be .*rerun the benchmark"):
        Playground.from_run(tiny, formatter, run, playground.saes)
