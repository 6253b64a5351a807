"""Chat formatting with the model's own template, left padding and explicit attention masks.

A prompt is one user turn, or a whole conversation written with `conversation(turns)`: user,
assistant, ..., user turns packed into one string, so that a multi-turn prompt travels, is
stored and is keyed like any other (its rendering ends with the template's generation prompt
after the last user turn).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from transformers import PreTrainedTokenizerBase

from ..errors import UserError

_SENTINEL = "\x00REFUSAL_LENS_INSTRUCTION\x00"
# Tokens that end an assistant turn in common templates (the tokenizer's eos is added too).
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
# A prompt that starts with this holds a conversation (`conversation`), as a JSON list of turns.
_TURNS = "\x1eturns:"


def conversation(turns: Sequence[str]) -> str:
    """A multi-turn prompt: user, assistant, ..., user turns (an odd number) as one string."""
    if len(turns) % 2 == 0 or not all(isinstance(t, str) for t in turns):
        raise UserError(
            f"a conversation is user, assistant, ..., user turns (an odd number of strings), "
            f"got {len(turns)}"
        )
    return _TURNS + json.dumps(list(turns), ensure_ascii=False)


def turns(prompt: str) -> list[str]:
    """The user and assistant turns of a prompt: one user turn unless it is a `conversation`."""
    if not prompt.startswith(_TURNS):
        return [prompt]
    try:
        found = json.loads(prompt[len(_TURNS) :])
    except json.JSONDecodeError:
        raise UserError("a conversation prompt is not valid JSON after its marker") from None
    if (
        not isinstance(found, list)
        or len(found) % 2 == 0
        or not all(isinstance(t, str) for t in found)
    ):
        raise UserError("a conversation prompt holds an odd number of text turns")
    return found


@dataclass
class EncodedBatch:
    input_ids: torch.Tensor  # [batch, seq], left-padded
    attention_mask: torch.Tensor  # [batch, seq], 0 on padding

    def to(self, device: torch.device) -> EncodedBatch:
        return EncodedBatch(self.input_ids.to(device), self.attention_mask.to(device))

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions counted from each prompt's first real token (what `generate` uses)."""
        return (self.attention_mask.long().cumsum(-1) - 1).clamp_min(0)

    def forward_kwargs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }


class ChatFormatter:
    """Renders prompts (one user turn, or a `conversation`) with the tokenizer's chat template.

    `system=None` keeps the template's own behaviour (Qwen2.5 inserts a default system prompt);
    a string sets the system turn explicitly ("" for an empty one, where the template allows).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        system: str | None = None,
        max_length: int | None = None,
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "this tokenizer has no chat template; refusal-lens needs a chat "
                "(instruction-tuned) model"
            )
        self.tokenizer = tokenizer
        self.system = system
        self.max_length = max_length

    def render(self, instruction: str) -> str:
        """The prompt (one user turn, or a `conversation`) in the chat template, ending with
        the generation prompt."""
        messages = [
            {"role": "user" if n % 2 == 0 else "assistant", "content": text}
            for n, text in enumerate(turns(instruction))
        ]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return str(text)

    @cached_property
    def post_instruction_ids(self) -> list[int]:
        """Template tokens after the instruction (e.g. `<|im_end|>\\n<|im_start|>assistant\\n`)."""
        rendered = self.render(_SENTINEL)
        suffix = rendered.split(_SENTINEL, 1)[1]
        return list(self.tokenizer(suffix, add_special_tokens=False)["input_ids"])

    @cached_property
    def pre_instruction_ids(self) -> list[int]:
        """Template tokens before the instruction: the fixed header (system turn, user tag)."""
        prefix = self.render(_SENTINEL).split(_SENTINEL, 1)[0]
        return list(self.tokenizer(prefix, add_special_tokens=False)["input_ids"])

    @property
    def n_pre_instruction(self) -> int:
        return len(self.pre_instruction_ids)

    @property
    def n_post_instruction(self) -> int:
        return len(self.post_instruction_ids)

    @cached_property
    def stop_token_ids(self) -> list[int]:
        """End-of-turn tokens: generation stops at any of them."""
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        vocab = self.tokenizer.get_vocab()
        ids.update(int(vocab[token]) for token in _END_OF_TURN if token in vocab)
        return sorted(ids)

    def encode(self, instructions: list[str]) -> EncodedBatch:
        if not instructions:
            raise UserError("no prompts to encode: the prompt list is empty")
        texts = [self.render(text) for text in instructions]
        # The template already holds every special token: adding BOS again would double it.
        encoded = self.tokenizer(
            texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt"
        )
        lengths = encoded["attention_mask"].sum(dim=1)
        if self.max_length is not None and int(lengths.max()) > self.max_length:
            longest = int(lengths.argmax())
            raise UserError(
                f"prompt {longest} is {int(lengths[longest])} tokens with its chat template, "
                f"longer than the model's context of {self.max_length}; shorten or drop it"
            )
        return EncodedBatch(encoded["input_ids"], encoded["attention_mask"])
