"""Batched greedy generation with the KV cache, interventions active at every decoding step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, GenerationConfig

from .interventions import Intervention, InterventionSet, apply, bind, needs_twin
from .models import ChatFormatter, EncodedBatch, LoadedModel
from .models.cache import cache_argument


@dataclass(frozen=True)
class SampleSettings:
    """Which prompts of a dataset are answered, and how long an answer may be (`generate`,
    `refusal-rate`: their flags come from these fields)."""

    limit: int | None = field(default=None, metadata={"help": "first N prompts only"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens generated per answer"})


def greedy_config(
    lm: LoadedModel, formatter: ChatFormatter, max_new_tokens: int
) -> GenerationConfig:
    """Plain greedy decoding: ignores the sampling and repetition-penalty defaults that some
    models ship in generation_config.json (Qwen2.5 sets repetition_penalty=1.05)."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=formatter.stop_token_ids,
        pad_token_id=lm.tokenizer.pad_token_id,
    )


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices grouped in batches of similar length (less padding), longest first."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def generate(
    lm: LoadedModel,
    formatter: ChatFormatter,
    instructions: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    interventions: Sequence[Intervention] | InterventionSet = (),
    progress: bool = True,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    desc: str = "generate",
) -> list[str]:
    """Greedy completions for `instructions` in input order.

    `on_batch(indices, completions)` is called after each batch so callers can write results
    as they go (resumable runs).
    """
    config = greedy_config(lm, formatter, max_new_tokens)
    completions: list[str] = [""] * len(instructions)
    batches = length_sorted_batches(instructions, batch_size)
    twin = needs_twin(interventions)
    for indices in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        prompts = [instructions[i] for i in indices]
        batch = formatter.encode(prompts).to(lm.device)
        # bound per batch: per-prompt latent sets follow their prompts into the batch
        with apply(lm.model, bind(interventions, prompts, batch.attention_mask)):
            if twin:
                new_tokens = twin_greedy(lm, formatter, batch, max_new_tokens)
            else:
                output = lm.model.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    generation_config=config,
                )
                new_tokens = output[:, batch.input_ids.shape[1] :]
        texts = lm.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for i, text in zip(indices, texts, strict=True):
            completions[i] = text
        if on_batch is not None:
            on_batch(indices, texts)
    return completions


def twin_greedy(
    lm: LoadedModel, formatter: ChatFormatter, batch: EncodedBatch, max_new_tokens: int
) -> torch.Tensor:
    """Greedy decoding of a twin batch: a clean copy of every prompt runs beside the edited one
    and is fed the edited row's tokens, so that interventions can compare each edited position
    with its clean counterpart (latent `retain`). Returns the edited rows' new tokens, padded
    after an end-of-turn token as `generate` does."""
    n = batch.input_ids.shape[0]
    ids = torch.cat([batch.input_ids, batch.input_ids])
    mask = torch.cat([batch.attention_mask, batch.attention_mask])
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    stops = torch.tensor(formatter.stop_token_ids or [-1], device=ids.device)
    finished = torch.zeros(n, dtype=torch.bool, device=ids.device)
    cache = {cache_argument(lm.model): DynamicCache()}  # filled in place at every step
    chosen: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        out = lm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **cache,
        )
        token = out.logits[n:, -1].argmax(dim=-1)
        token = torch.where(finished, torch.full_like(token, pad), token)
        chosen.append(token)
        finished |= torch.isin(token, stops)
        if bool(finished.all()):
            break
        ids = torch.cat([token, token]).unsqueeze(1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
    return torch.stack(chosen, dim=1)
