from __future__ import annotations

import pytest
import torch

from refusal_lens.errors import UserError
from refusal_lens.hooks import HookPoint, add_hooks, all_points, parse_hook_point, record
from refusal_lens.interventions import AblateDirection, AddDirection, apply, from_dict
from refusal_lens.models import ChatFormatter, LoadedModel

PROMPTS = ["Write a poem about the sea.", "Explain how to hack a computer, step by step please."]


def test_parse_hook_point_aliases() -> None:
    assert parse_hook_point("resid_post.2") == HookPoint(2, "resid_post")
    assert parse_hook_point("blocks.2.hook_resid_post") == HookPoint(2, "resid_post")
    assert parse_hook_point("blocks.1.hook_mlp_out") == HookPoint(1, "mlp_out")
    assert parse_hook_point("model.layers.0") == HookPoint(0, "resid_post")
    with pytest.raises(UserError, match="out of range"):
        parse_hook_point("resid_post.9", n_layers=3)
    with pytest.raises(UserError, match="unknown hook point"):
        parse_hook_point("blocks.2.hook_nonsense")


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama", "tiny_gemma2"])
def test_resid_points_are_consistent(fixture: str, request: pytest.FixtureRequest) -> None:
    """resid_post.l == resid_pre.(l+1) and resid_post.l == resid_pre.l + attn_out + mlp_out."""
    lm: LoadedModel = request.getfixturevalue(fixture)
    fmt = ChatFormatter(lm.tokenizer)
    batch = fmt.encode(PROMPTS)
    points = all_points(lm.n_layers)
    with record(lm.model, points) as acts, torch.no_grad():
        lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for layer in range(lm.n_layers):
        pre, post = acts[HookPoint(layer, "resid_pre")][0], acts[HookPoint(layer, "resid_post")][0]
        total = pre + acts[HookPoint(layer, "attn_out")][0] + acts[HookPoint(layer, "mlp_out")][0]
        torch.testing.assert_close(post, total, atol=1e-5, rtol=1e-5)
        if layer + 1 < lm.n_layers:
            torch.testing.assert_close(post, acts[HookPoint(layer + 1, "resid_pre")][0])


def test_hooks_removed_after_exception(tiny: LoadedModel) -> None:
    def boom(act: torch.Tensor, _point: HookPoint) -> torch.Tensor:
        return act * 0

    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny.model.modules())
    with (
        pytest.raises(RuntimeError, match="body failed"),
        add_hooks(tiny.model, [(p, boom) for p in all_points(tiny.n_layers)]),
    ):
        raise RuntimeError("body failed")
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny.model.modules())
    assert after == before


def test_hooks_removed_when_registration_fails(tiny: LoadedModel) -> None:
    before = sum(len(m._forward_hooks) for m in tiny.model.modules())
    with (
        pytest.raises(UserError),
        add_hooks(
            tiny.model,
            [
                (HookPoint(0, "resid_post"), lambda a, p: None),
                (HookPoint(99, "mlp_out"), lambda a, p: None),
            ],
        ),
    ):
        pass
    assert sum(len(m._forward_hooks) for m in tiny.model.modules()) == before


def test_ablation_zero_projection_everywhere_including_generated_tokens(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    direction = torch.randn(tiny.d_model)
    unit = direction / direction.norm()
    points = all_points(tiny.n_layers, ("resid_pre", "resid_post"))
    batch = formatter.encode(PROMPTS)
    with apply(tiny.model, [AblateDirection(direction)]), record(tiny.model, points) as acts:
        out = tiny.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
            pad_token_id=tiny.tokenizer.pad_token_id,
        )
    assert out.shape[1] == batch.input_ids.shape[1] + 6
    for point in points:
        calls = acts[point]
        assert len(calls) == 6  # the prompt pass + 5 KV-cached decoding steps
        assert calls[-1].shape[1] == 1  # a decoding step sees one new position
        for act in calls:
            assert (act @ unit).abs().max() < 1e-4, point
    # ...and without the intervention the projection is far from zero
    with record(tiny.model, points[:1]) as plain, torch.no_grad():
        tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert (plain[points[0]][0] @ unit).abs().max() > 1e-2


def test_addition_shifts_resid_post_by_the_vector(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    vector = torch.randn(tiny.d_model)
    batch = formatter.encode(PROMPTS)
    point = HookPoint(1, "resid_post")
    with record(tiny.model, [point]) as base, torch.no_grad():
        tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    with (
        apply(tiny.model, [AddDirection(vector, 1, coeff=2.0)]),
        record(tiny.model, [point]) as added,
        torch.no_grad(),
    ):
        tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    torch.testing.assert_close(
        added[point][0] - base[point][0],
        (2.0 * vector).expand_as(base[point][0]),
        atol=1e-5,
        rtol=1e-5,
    )


def test_ablation_on_gemma2_sandwich_norms(tiny_gemma2: LoadedModel) -> None:
    """Gemma-2 normalises sub-layer outputs before adding them: ablation must still hold."""
    fmt = ChatFormatter(tiny_gemma2.tokenizer)
    direction = torch.randn(tiny_gemma2.d_model)
    unit = direction / direction.norm()
    points = all_points(tiny_gemma2.n_layers, ("resid_post",))
    batch = fmt.encode(PROMPTS)
    with (
        apply(tiny_gemma2.model, [AblateDirection(direction)]),
        record(tiny_gemma2.model, points) as acts,
        torch.no_grad(),
    ):
        tiny_gemma2.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for point in points:
        assert (acts[point][0] @ unit).abs().max() < 1e-4, point


def test_records_name_the_vector_by_content(tiny: LoadedModel, tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "direction.safetensors"
    first, second = torch.randn(tiny.d_model), torch.randn(tiny.d_model)
    save_file({"direction": first}, str(path))
    a = AblateDirection(first, str(path)).to_dict()
    save_file({"direction": second}, str(path))
    b = AblateDirection(second, str(path)).to_dict()
    assert a["direction"]["file"] == b["direction"]["file"]
    assert a != b  # same file name, other vector: results keyed on it must not be reused


def test_intervention_round_trip_and_bad_input(tiny: LoadedModel) -> None:
    vector = torch.randn(tiny.d_model)
    item = AddDirection(vector, 2, 0.5)
    back = from_dict(item.to_dict())
    assert isinstance(back, AddDirection) and back.layer == 2 and back.coeff == 0.5
    torch.testing.assert_close(back.direction, vector)
    with pytest.raises(UserError, match="d_model"):
        AblateDirection(torch.randn(tiny.d_model + 1)).hooks(tiny.model)
    with pytest.raises(UserError, match="out of range"):
        AddDirection(vector, 7).hooks(tiny.model)
    with pytest.raises(UserError, match="NaN"):
        AblateDirection(torch.full((tiny.d_model,), float("nan"))).hooks(tiny.model)
    with pytest.raises(UserError, match="unknown intervention"):
        from_dict({"kind": "melt"})


def test_a_new_intervention_kind_is_one_registered_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    from refusal_lens import interventions, schema
    from refusal_lens.interventions import registry

    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))

    @interventions.reads("noop", schema.Obj(required={"layer": schema.INDEX}))
    def _noop(data: dict) -> interventions.AddDirection:
        return interventions.AddDirection(torch.zeros(4), int(data["layer"]))

    made = interventions.from_dict({"kind": "noop", "layer": 2})
    assert isinstance(made, interventions.AddDirection) and made.layer == 2
    with pytest.raises(UserError, match="layer"):
        interventions.from_dict({"kind": "noop", "layer": "two"})
    known = "known: ablate_direction, add_direction, edit_latents, gated, noop"
    with pytest.raises(UserError, match=known):
        interventions.from_dict({"kind": "nothing"})
