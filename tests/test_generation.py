from __future__ import annotations

import pytest
import torch

from refusal_lens.errors import UserError
from refusal_lens.generation import generate
from refusal_lens.interventions import AblateDirection
from refusal_lens.models import ChatFormatter, LoadedModel

PROMPTS = [
    "Write a poem about the sea.",
    "Hi",
    "Explain how to hack a computer, step by step, with as much detail as you can manage.",
    "The quick brown fox",
    "Sure, here is how to bake bread",
]


def test_template_positions_and_stop_tokens(tiny: LoadedModel, formatter: ChatFormatter) -> None:
    ids = formatter.post_instruction_ids
    assert tiny.tokenizer.decode(ids) == "<|im_end|>\n<|im_start|>assistant\n"
    batch = formatter.encode(PROMPTS)
    assert batch.input_ids[:, -len(ids) :].tolist() == [ids] * len(PROMPTS)  # left padding
    assert (batch.attention_mask[:, -1] == 1).all()
    assert (batch.attention_mask[:, 0] == 0).any()  # something was padded
    assert tiny.tokenizer.convert_tokens_to_ids("<|im_end|>") in formatter.stop_token_ids
    assert "You are a tiny test model." in formatter.render("x")  # template default kept
    assert "Be brief." in ChatFormatter(tiny.tokenizer, system="Be brief.").render("x")


@pytest.mark.parametrize("with_ablation", [False, True])
def test_batched_left_padded_generation_matches_one_by_one(
    tiny: LoadedModel, formatter: ChatFormatter, with_ablation: bool
) -> None:
    interventions = [AblateDirection(torch.randn(tiny.d_model))] if with_ablation else []
    batched = generate(
        tiny,
        formatter,
        PROMPTS,
        max_new_tokens=8,
        batch_size=5,
        interventions=interventions,
        progress=False,
    )
    single = [
        generate(
            tiny,
            formatter,
            [p],
            max_new_tokens=8,
            batch_size=1,
            interventions=interventions,
            progress=False,
        )[0]
        for p in PROMPTS
    ]
    assert batched == single
    assert any(batched)


def test_generation_writes_batches_in_input_order(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    seen: dict[int, str] = {}
    out = generate(
        tiny,
        formatter,
        PROMPTS,
        max_new_tokens=4,
        batch_size=2,
        progress=False,
        on_batch=lambda idx, texts: seen.update(zip(idx, texts, strict=True)),
    )
    assert [seen[i] for i in range(len(PROMPTS))] == out


def test_prompt_longer_than_context_is_a_user_error(tiny: LoadedModel) -> None:
    fmt = ChatFormatter(tiny.tokenizer, max_length=32)
    with pytest.raises(UserError, match="longer than the model's context") as info:
        fmt.encode(["word " * 100])
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="empty"):
        fmt.encode([])
