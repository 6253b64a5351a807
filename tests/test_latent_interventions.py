"""Latent edits: `h + D(f') - D(f)` at the SAE layers, prompt and generated tokens."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import random_sae_set
from refusal_lens.errors import UserError
from refusal_lens.generation import generate
from refusal_lens.hooks import HookPoint, add_hooks, record
from refusal_lens.interventions import EditLatents, apply, bind, from_dict
from refusal_lens.models import ChatFormatter, LoadedModel
from refusal_lens.saes import SAE_CLASSES, SAEConfig, SAESet, build_sae

PROMPTS = ["Write a poem about the sea.", "Explain how to hack a computer."]


@pytest.mark.parametrize("arch", sorted(SAE_CLASSES))
def test_latent_values_match_encode_and_unit_edit_is_identity(arch: str, tiny: LoadedModel) -> None:
    sae = random_sae_set(tiny, arch)[HookPoint(1, "resid_post")]
    x = torch.randn(2, 5, tiny.d_model) * 3
    latents = torch.tensor([3, 17, 200])
    dense = sae.encode(x).reshape(-1, sae.d_sae)[:, latents]
    torch.testing.assert_close(sae.latent_values(x.reshape(-1, tiny.d_model), latents), dense)
    assert torch.equal(sae.steer(x, latents, lambda f: f), x)
    doubled = sae.steer(x, latents, lambda f: 2 * f)
    expected = x + (dense @ sae.W_dec[latents]).reshape(x.shape)
    torch.testing.assert_close(doubled, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [4, 300])
def test_topk_membership_by_count_equals_top_k(rows: int, tiny: LoadedModel) -> None:
    sae = random_sae_set(tiny, "topk")[HookPoint(1, "resid_post")]
    assert sae.cfg.k is not None
    # latents inside the screened share (the first 32 of 256) and outside it
    latents = torch.tensor([0, 5, 9, 40, 128, 255])
    sae_in = torch.randn(rows, tiny.d_model)
    pre = sae.pre_activation(sae_in)
    top = pre.topk(sae.cfg.k, dim=-1)
    dense = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
    torch.testing.assert_close(sae.latent_values(sae_in, latents), dense[:, latents])
    # a tie at the k-th value counts as in, on both paths
    kth = int(top.indices[0, top.values[0].argmin()])
    with torch.no_grad():
        sae.W_enc[:, 9] = sae.W_enc[:, kth]
        sae.b_enc[9] = sae.b_enc[kth]
    values = sae.latent_values(sae_in, latents)
    assert values[0, 2] > 0


@pytest.mark.parametrize("rows", [1, 16, 300])
def test_topk_membership_screen_decides_as_a_top_k(rows: int, tiny: LoadedModel) -> None:
    """Every latent, at every row: the screened count gives the dense top-k's activations,
    for a wide float32 SAE (no int8 bounds) whose screened share is a small part of it."""
    torch.manual_seed(1)
    sae = build_sae(SAEConfig("topk", tiny.d_model, 2048, k=16))
    with torch.no_grad():
        sae.W_enc.normal_(0, tiny.d_model**-0.5)
        sae.b_enc.normal_(0, 0.5)
    sae_in = torch.randn(rows, tiny.d_model)
    dense = sae.encode(sae_in)
    latents = torch.arange(sae.d_sae)
    # the same latents in the top k; their values are the selected columns' exact dot
    # products, which may differ from the full matmul's in the last bit
    for chosen in (latents, torch.tensor([7, 1500])):
        values = sae.latent_values(sae_in, chosen)
        assert torch.equal(values > 0, dense[:, chosen] > 0)
        torch.testing.assert_close(values, dense[:, chosen], rtol=1e-6, atol=1e-6)


def test_bfloat16_copy_encodes_with_a_packed_weight_bit_for_bit(tiny: LoadedModel) -> None:
    sae = random_sae_set(tiny, "topk", d_sae=1024)[HookPoint(1, "resid_post")]
    copy = sae.cast(torch.bfloat16)
    if copy._packed_enc is None:
        pytest.skip("this CPU's oneDNN has no bfloat16 matmul")
    for rows in (1, 16, 40):
        sae_in = torch.randn(rows, tiny.d_model).bfloat16()
        plain = (sae_in - copy.b_dec) @ copy.W_enc + copy.b_enc
        assert torch.equal(copy.pre_activation(sae_in), plain)


@pytest.mark.parametrize("arch", sorted(SAE_CLASSES))
def test_bfloat16_activations_are_steered_by_a_bfloat16_copy(arch: str, tiny: LoadedModel) -> None:
    sae = random_sae_set(tiny, arch)[HookPoint(1, "resid_post")]
    x = torch.randn(4, 6, tiny.d_model) * 3
    latents = torch.tensor([3, 17, 200])
    exact = sae.steer(x, latents, lambda f: 2 * f)
    half = sae.steer(x.bfloat16(), latents, lambda f: 2 * f)
    assert half.dtype == torch.bfloat16 and sae.W_enc.dtype == torch.float32
    assert torch.equal(sae.steer(x.bfloat16(), latents, lambda f: f), x.bfloat16())
    # bfloat16 rounding: a few TopK memberships may flip, the edit stays the same size
    close = ((half.float() - exact).abs() < 0.1 * (exact - x).abs().max() + 0.05).float().mean()
    assert close > 0.95
    copy = sae.cast(torch.bfloat16)
    assert sae.cast(torch.bfloat16) is copy  # made once
    assert torch.equal(copy.W_enc, sae.W_enc.bfloat16())  # stored column-major, same values
    with torch.no_grad():
        sae.W_dec.mul_(2)
    assert sae.cast(torch.bfloat16) is not copy  # a changed weight makes a new copy
    assert torch.equal(sae.cast(torch.bfloat16).W_dec, sae.W_dec.bfloat16())


@pytest.mark.parametrize("arch", sorted(SAE_CLASSES))
def test_a_copy_cast_inside_inference_mode_steers(arch: str, tiny: LoadedModel) -> None:
    # generation runs under torch.inference_mode, so the first bfloat16 steer makes its copy
    # there: the copy's weights are inference tensors, which have no version counter
    sae = random_sae_set(tiny, arch, d_sae=1024)[HookPoint(1, "resid_post")]
    x = torch.randn(4, 6, tiny.d_model) * 3
    latents = torch.tensor([3, 17, 200])
    with torch.inference_mode():
        first = sae.steer(x.bfloat16(), latents, lambda f: 2 * f)
        assert sae.cast(torch.bfloat16).W_enc.is_inference()
        again = sae.steer(x.bfloat16(), latents, lambda f: 2 * f)
        with_set = sae.cast(torch.bfloat16).steer(x.bfloat16(), latents, lambda f: 2 * f)
    assert torch.equal(first, again) and torch.equal(first, with_set)
    assert torch.equal(first, sae.steer(x.bfloat16(), latents, lambda f: 2 * f))


def test_steer_keep_mask_leaves_rows_alone(tiny_saes: SAESet, tiny: LoadedModel) -> None:
    sae = tiny_saes[HookPoint(0, "resid_post")]
    x = torch.randn(1, 4, tiny.d_model)
    keep = torch.tensor([[True, False, True, False]])
    out = sae.steer(x, torch.arange(sae.d_sae), lambda f: torch.full_like(f, 5.0), keep)
    assert torch.equal(out[0, 1], x[0, 1]) and torch.equal(out[0, 3], x[0, 3])
    assert not torch.allclose(out[0, 0], x[0, 0])


def _logits(lm: LoadedModel, formatter: ChatFormatter, interventions=()) -> torch.Tensor:
    batch = formatter.encode(PROMPTS)
    with apply(lm.model, interventions), torch.no_grad():
        return lm.model(**batch.forward_kwargs()).logits


def test_empty_and_unit_edits_are_the_identity(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    clean = _logits(tiny, formatter)
    assert torch.equal(_logits(tiny, formatter, [EditLatents(tiny_saes, ())]), clean)
    every = tuple((layer, i) for layer in range(3) for i in range(0, 256, 7))
    unit = _logits(tiny, formatter, [EditLatents(tiny_saes, every, "scale", 1.0)])
    torch.testing.assert_close(unit, clean, atol=1e-6, rtol=0)
    changed = _logits(tiny, formatter, [EditLatents(tiny_saes, every, "set", 4.0)])
    assert (changed - clean).abs().max() > 1e-2


def _pre_and_post(
    lm: LoadedModel, formatter: ChatFormatter, edit: EditLatents, point: HookPoint
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Activations at `point` before and after the edit, for the prompt and 5 decoding steps."""
    before: list[torch.Tensor] = []
    batch = formatter.encode(PROMPTS)
    with (
        add_hooks(lm.model, [(point, lambda a, p: before.append(a.detach().clone()))]),
        apply(lm.model, [edit]),
        record(lm.model, [point]) as after,
    ):
        lm.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    return before, after[point]


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_generated_tokens_are_steered(
    positions: str, tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    point = HookPoint(1, "resid_post")
    latents = torch.tensor([5, 9])
    edit = EditLatents(tiny_saes, ((1, 5), (1, 9)), "set", 3.0, positions, edit_sinks=True)
    before, after = _pre_and_post(tiny, formatter, edit, point)
    assert len(before) == len(after) == 6 and after[-1].shape[1] == 1
    sae = tiny_saes[point]
    for step, (pre, post) in enumerate(zip(before, after, strict=True)):
        is_prompt = step == 0
        edited = positions == "all" or (positions == "prompt") == is_prompt
        values = sae.encode(pre)[..., latents]
        expected = pre + (3.0 - values) @ sae.W_dec[latents] if edited else pre
        torch.testing.assert_close(post, expected, atol=1e-5, rtol=1e-5)


def test_last_prompt_tokens_and_layers_in_order(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    point = HookPoint(2, "resid_post")
    edit = EditLatents(tiny_saes, ((2, 1),), "set", 2.0, last_prompt_tokens=3, edit_sinks=True)
    before, after = _pre_and_post(tiny, formatter, edit, point)
    prompt_before, prompt_after = before[0], after[0]
    assert torch.equal(prompt_after[:, :-3], prompt_before[:, :-3])
    assert not torch.allclose(prompt_after[:, -3:], prompt_before[:, -3:])
    # an upstream edit changes what the downstream layer sees
    upstream = EditLatents(tiny_saes, ((0, 4),), "set", 6.0, edit_sinks=True)
    clean, _ = _pre_and_post(tiny, formatter, EditLatents(tiny_saes, ()), point)
    edited, _ = _pre_and_post(tiny, formatter, upstream, point)
    assert not torch.allclose(clean[0], edited[0])


def test_from_position_counts_from_each_prompts_start_under_left_padding(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    point = HookPoint(2, "resid_post")
    edit = EditLatents(tiny_saes, ((2, 1),), "set", 2.0, from_position=4, edit_sinks=True)
    batch = formatter.encode(PROMPTS)
    pads = (batch.attention_mask == 0).sum(dim=1).tolist()
    assert len(set(pads)) > 1  # the two prompts pad differently
    (bound,) = bind([edit], PROMPTS, batch.attention_mask)
    before, after = _pre_and_post(tiny, formatter, bound, point)
    for row, pad in enumerate(pads):
        start = pad + 4
        assert torch.equal(after[0][row, :start], before[0][row, :start])
        assert not torch.allclose(after[0][row, start:], before[0][row, start:])
    assert not torch.allclose(after[-1], before[-1])  # generated tokens are edited too
    with pytest.raises(UserError, match="padding"):
        _pre_and_post(tiny, formatter, edit, point)  # unbound: the padding is unknown
    with pytest.raises(UserError, match="negative"):
        EditLatents(tiny_saes, ((2, 1),), from_position=-1)


def test_from_position_zero_through_generate_equals_every_position(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    every = EditLatents(tiny_saes, ((1, 5), (2, 1)), "set", 4.0, edit_sinks=True)
    start = EditLatents(tiny_saes, every.latents, "set", 4.0, edit_sinks=True, from_position=0)
    plain = generate(tiny, formatter, PROMPTS, max_new_tokens=5, progress=False)
    edited = generate(
        tiny, formatter, PROMPTS, max_new_tokens=5, interventions=[every], progress=False
    )
    assert (
        generate(tiny, formatter, PROMPTS, max_new_tokens=5, interventions=[start], progress=False)
        == edited
    )
    assert edited != plain


def test_sink_tokens_are_left_alone_by_default(tiny_saes: SAESet, tiny: LoadedModel) -> None:
    ((point, hook),) = EditLatents(tiny_saes, ((1, 5),), "set", 3.0).hooks(tiny.model)
    act = torch.randn(1, 6, tiny.d_model)
    act[0, 0] *= 100  # an attention-sink-like norm
    out = hook(act, point)
    assert out is not None and torch.equal(out[0, 0], act[0, 0])
    assert not torch.allclose(out[0, 1:], act[0, 1:])


def test_edit_round_trip_and_bad_input(tiny: LoadedModel, tiny_saes: SAESet, tmp_path) -> None:
    tiny_saes.save(tmp_path / "saes")
    edit = EditLatents(tiny_saes, ((1, 5), (0, 2)), "scale", -3.0, "prompt", 4)
    data = json.loads(json.dumps(edit.to_dict()))
    again = from_dict(data)
    assert isinstance(again, EditLatents) and again.to_dict() == data
    with pytest.raises(UserError, match="does not exist"):
        EditLatents(tiny_saes, ((1, 9999),)).hooks(tiny.model)
    with pytest.raises(UserError, match="out of range"):
        EditLatents(tiny_saes, ((7, 1),)).hooks(tiny.model)
    with pytest.raises(UserError, match="mode"):
        EditLatents(tiny_saes, (), "multiply")
    other = random_sae_set(tiny, seed=1)
    other.save(tmp_path / "saes")
    with pytest.raises(UserError, match="not the one"):
        from_dict(data)


def test_twin_greedy_matches_generate_and_retain_only_is_the_identity(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    from refusal_lens.generation import generate

    plain = generate(tiny, formatter, PROMPTS, max_new_tokens=6, progress=False)
    pin_only = EditLatents(tiny_saes, (), retain=((1, 5), (2, 9)), edit_sinks=True)
    assert pin_only.needs_twin
    assert (
        generate(
            tiny, formatter, PROMPTS, max_new_tokens=6, interventions=[pin_only], progress=False
        )
        == plain
    )


def test_retain_pins_latents_to_the_clean_twin(tiny: LoadedModel, tiny_saes: SAESet) -> None:
    edit = EditLatents(tiny_saes, ((1, 3),), "set", 4.0, retain=((1, 7),), edit_sinks=True)
    ((point, hook),) = edit.hooks(tiny.model)
    sae = tiny_saes[point]
    clean = torch.randn(2, 5, tiny.d_model)
    act = torch.cat([clean, clean + 0.5 * torch.randn_like(clean)])
    out = hook(act, point)
    assert out is not None and torch.equal(out[:2], clean)
    edited = sae.steer(act[2:], torch.tensor([3]), lambda f: torch.full_like(f, 4.0))
    target = sae.encode_latents(clean, torch.tensor([7])).reshape(-1, 1)
    expected = sae.steer(edited, torch.tensor([7]), lambda f: target)
    torch.testing.assert_close(out[2:], expected)


def test_per_row_sets_edit_only_their_own_latents(tiny: LoadedModel, tiny_saes: SAESet) -> None:
    rows = (((1, 3), (1, 8)), ((1, 8), (1, 20)))
    union = tuple(sorted({p for row in rows for p in row}))
    edit = EditLatents(tiny_saes, union, "set", 4.0, rows=rows, edit_sinks=True)
    ((point, hook),) = edit.hooks(tiny.model)
    act = torch.randn(2, 5, tiny.d_model)
    out = hook(act, point)
    for r, row in enumerate(rows):
        alone = EditLatents(tiny_saes, row, "set", 4.0, edit_sinks=True)
        ((_, single),) = alone.hooks(tiny.model)
        torch.testing.assert_close(out[r : r + 1], single(act[r : r + 1], point))
    with pytest.raises(UserError, match="bound to 2 prompts"):
        hook(torch.randn(3, 5, tiny.d_model), point)


def test_per_prompt_sets_follow_their_prompts_into_batches(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    from refusal_lens.generation import generate
    from refusal_lens.interventions import PerPromptLatents, bind

    sets = {
        "write a poem about the sea.": ((1, 5), (2, 9)),
        "explain how to hack a computer.": ((0, 2),),
    }
    per_prompt = PerPromptLatents(tiny_saes, sets, "set", 6.0)
    (bound,) = bind([per_prompt], list(reversed(PROMPTS)))
    assert isinstance(bound, EditLatents) and bound.rows == (((0, 2),), ((1, 5), (2, 9)))
    together = generate(
        tiny, formatter, PROMPTS, max_new_tokens=5, interventions=[per_prompt], progress=False
    )
    for prompt, text in zip(PROMPTS, together, strict=True):
        alone = EditLatents(tiny_saes, sets[prompt.lower()], "set", 6.0)
        single = generate(
            tiny, formatter, [prompt], max_new_tokens=5, interventions=[alone], progress=False
        )
        assert single == [text]
    with pytest.raises(UserError, match="no per-prompt latent set"):
        bind([per_prompt], ["Something else."])


def test_retain_twin_edits_only_the_edited_half_at_every_layer(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    """Edit at layer 0, retain at layer 2, twin batch: the clean rows reaching layer 2 equal an
    unedited forward (the upstream edit must not leak into the clean twin it is pinned to)."""
    batch = formatter.encode(PROMPTS)
    kwargs = batch.forward_kwargs()
    doubled = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    point = HookPoint(2, "resid_post")
    with torch.no_grad(), record(tiny.model, [point]) as plain:
        tiny.model(**kwargs)
    edit = EditLatents(
        tiny_saes,
        tuple((0, i) for i in range(0, 256, 3)),
        "set",
        8.0,
        retain=((2, 5),),
        edit_sinks=True,
    )
    (bound,) = bind([edit], PROMPTS, batch.attention_mask)
    with torch.no_grad(), apply(tiny.model, [bound]), record(tiny.model, [point]) as twin:
        tiny.model(**doubled)
    n = len(PROMPTS)
    clean_rows = twin[point][0][:n]
    torch.testing.assert_close(clean_rows, plain[point][0], atol=1e-5, rtol=1e-5)
    assert (twin[point][0][n:] - clean_rows).abs().max() > 1e-2  # the edited half did change


def test_retain_reaches_every_scoring_path_through_a_twin(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes: SAESet
) -> None:
    """Paths that score without generating build the twin too: a retain-only edit is the
    identity, an edit with retain differs from the same edit without it."""
    from refusal_lens.scoring import last_position_logits
    from refusal_lens.teacher_forcing import completion_nll, text_nll

    pin_only = EditLatents(tiny_saes, (), retain=((1, 5), (2, 9)), edit_sinks=True)
    edited = tuple((0, i) for i in range(0, 256, 3))
    pinned = tuple((2, i) for i in range(0, 256, 2))
    with_pin = EditLatents(tiny_saes, edited, "set", 8.0, retain=pinned, edit_sinks=True)
    without = EditLatents(tiny_saes, edited, "set", 8.0, edit_sinks=True)
    texts = ["The sea is wide and the sky is grey today.", "One two three four five six."]
    scorers = [
        lambda i: last_position_logits(tiny, formatter, PROMPTS, interventions=i),
        lambda i: torch.tensor(
            completion_nll(tiny, formatter, PROMPTS, ["Sure, here.", "No."], interventions=i)
        ),
        lambda i: torch.tensor(text_nll(tiny, texts, interventions=i)),
    ]
    for score in scorers:
        torch.testing.assert_close(score([pin_only]), score([]), atol=1e-5, rtol=1e-5)
        assert (score([with_pin]) - score([without])).abs().max() > 1e-4


def test_sink_threshold_is_per_prompt_and_ignores_padding(
    tiny: LoadedModel, tiny_saes: SAESet
) -> None:
    """A prompt's attention-sink threshold is a median over its own tokens: another row's
    large norms, or its own padding, do not move it."""
    edit = EditLatents(tiny_saes, ((1, 3),), "set", 4.0, sink_factor=3.0)
    ((point, _),) = edit.hooks(tiny.model)
    small = torch.randn(1, 6, tiny.d_model)
    small[0, 0] *= 10.0  # a sink of this row: untouched
    loud = torch.randn(1, 6, tiny.d_model) * 20.0
    alone_out = edit.hooks(tiny.model)[0][1](small, point)
    together = edit.hooks(tiny.model)[0][1](torch.cat([small, loud]), point)
    torch.testing.assert_close(together[:1], alone_out)
    assert torch.equal(alone_out[0, 0], small[0, 0])
    # two pad positions of huge norm on the left, bound as padding: same edit on the rest
    padded = torch.cat([torch.randn(1, 2, tiny.d_model) * 50.0, small], dim=1)
    (bound,) = bind([edit], ["x"], torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]]))
    out = bound.hooks(tiny.model)[0][1](padded, point)
    torch.testing.assert_close(out[:, 2:], alone_out)


def test_token_positions_say_which_tokens_an_edit_touches() -> None:
    """The position rules live in one object (`EditLatents.where`): prompt vs decoding step, a
    window from a prompt position counted past each row's padding, and sinks left alone."""
    from refusal_lens.interventions import TokenPositions

    prompt = torch.ones(2, 5, 4)  # two rows of five tokens, equal norms
    step = torch.ones(2, 1, 4)
    assert TokenPositions("generated").mask(prompt, None, {}) is None
    assert TokenPositions("prompt").mask(step, None, {}) is None
    window = TokenPositions(from_position=1).mask(prompt, (0, 2), {})
    assert window.tolist() == [[False, True, True, True, True], [False, False, False, True, True]]
    sink = prompt.clone()
    sink[0, 0] *= 100  # an attention sink: norm far above the row's median
    kept = TokenPositions().mask(sink, None, {})
    assert not kept[0, 0] and kept[0, 1:].all() and kept[1].all()
    assert TokenPositions(edit_sinks=True).mask(sink, None, {}).all()
    with pytest.raises(UserError, match="positions 'middle' unknown"):
        TokenPositions("middle")


def test_topk_membership_reads_the_encoder_only_where_it_must(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A row with no positive selected latent reads no more of the encoder, and a latent below
    the share's bound on the k-th largest never reaches the full product."""
    torch.manual_seed(2)
    sae = build_sae(SAEConfig("topk", 64, 2048, k=16))
    with torch.no_grad():
        sae.W_enc.normal_(0, 64**-0.5)
    products: list[int] = []
    full = sae._product
    monkeypatch.setattr(sae, "_product", lambda c: products.append(len(c)) or full(c))
    screens: list[int] = []
    share = sae._share_floor
    monkeypatch.setattr(sae, "_share_floor", lambda c, n: screens.append(len(c)) or share(c, n))
    latent = torch.tensor([1500])
    away = -5 * sae.W_enc[:, 1500] / sae.W_enc[:, 1500].norm()  # its pre-activation < 0
    values = sae.latent_values(away.repeat(3, 1), latent)
    assert not bool(values.any()) and not screens and not products
    # a latent only just positive: the screen puts 16 latents above it, with no full product
    sae_in = torch.randn(8, 64)
    dots = sae_in @ sae.W_enc[:, 1500]
    row = sae_in[int(dots.argmin())].unsqueeze(0)
    with torch.no_grad():
        sae.b_enc[1500] = 1e-3 - float(dots.min())
    values = sae.latent_values(row, latent)
    assert screens == [1] and products == []
    assert not bool(values.any()) and not bool(sae.encode(row)[:, latent].any())


def test_topk_latent_values_carry_gradients_after_an_inference_mode_call() -> None:
    """The membership decision runs without autograd: a call in inference mode (which caches
    each latent's largest weight) does not stop a later call carrying gradients to the
    selected latents' weights."""
    torch.manual_seed(3)
    sae = build_sae(SAEConfig("topk", 64, 2048, k=16))
    with torch.no_grad():
        sae.W_enc.normal_(0, 64**-0.5)
    sae_in = torch.randn(6, 64)
    latents = torch.arange(0, 2048, 5)
    with torch.inference_mode():
        first = sae.latent_values(sae_in, latents)
    values = sae.latent_values(sae_in, latents)
    assert torch.equal(values.detach(), first)
    values.sum().backward()
    assert sae.W_enc.grad is not None and bool(sae.W_enc.grad[:, latents].abs().sum() > 0)
