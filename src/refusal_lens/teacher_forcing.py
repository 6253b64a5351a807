"""Teacher forcing: a prompt (in its chat template) followed by a given completion, scored
token by token. Used by the harmless-KL side effect, cross-entropy on rollouts, and the
fluency part of the compliance judge."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import UserError
from .generation import length_sorted_batches
from .interventions import Intervention, InterventionSet, apply, bind, needs_twin, twin_logits
from .models import ChatFormatter, LoadedModel


def teacher_forced_batch(
    lm: LoadedModel,
    formatter: ChatFormatter,
    instructions: Sequence[str],
    completions: Sequence[str],
    *,
    max_completion_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask, and a mask of the positions that predict a
    completion token (the last prompt position predicts the first one)."""
    rows, scored = [], []
    for instruction, completion in zip(instructions, completions, strict=True):
        prompt = lm.tokenizer(formatter.render(instruction), add_special_tokens=False)["input_ids"]
        answer = lm.tokenizer(completion, add_special_tokens=False)["input_ids"]
        if max_completion_tokens is not None:
            answer = answer[:max_completion_tokens]
        rows.append(prompt + answer)
        # the last prompt position always counts: it predicts the first answer token (or EOS)
        scored.append((len(prompt) - 1, len(prompt) + max(len(answer), 1) - 1))
    width = max(len(r) for r in rows)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    predicts = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, (start, end)) in enumerate(zip(rows, scored, strict=True)):
        offset = width - len(row)
        ids[i, offset:] = torch.tensor(row)
        attention[i, offset:] = 1
        predicts[i, offset + start : offset + end] = True
    return ids, attention, predicts


def prompt_lengths(attention: torch.Tensor, predicts: torch.Tensor) -> list[int]:
    """Each row's prompt tokens in a `teacher_forced_batch` (its last prompt position is the
    first that predicts), for interventions that decide on the prompt alone (`bind`)."""
    pads = (attention == 0).sum(dim=1)
    first = predicts.long().argmax(dim=1)
    return (first.cpu() - pads.cpu() + 1).tolist()


def next_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`-log p(target)` per position, `[batch, seq]`, one row at a time in float32 (a full
    float32 log-softmax of a batch over a 150k vocabulary would take gigabytes)."""
    rows = [
        F.cross_entropy(logits[r].float(), targets[r], reduction="none")
        for r in range(logits.shape[0])
    ]
    return torch.stack(rows) if rows else logits.new_zeros((0, targets.shape[1]))


@torch.inference_mode()
def completion_nll(
    lm: LoadedModel,
    formatter: ChatFormatter,
    instructions: Sequence[str],
    completions: Sequence[str],
    *,
    interventions: Sequence[Intervention] | InterventionSet = (),
    batch_size: int = 8,
    max_completion_tokens: int | None = 256,
    progress: bool = False,
) -> list[float]:
    """Per pair, the mean negative log-likelihood (nats per token) of the completion given the
    prompt; exp of it is the completion's perplexity. An empty completion has no tokens to
    score and gets `inf` (it is not fluent text)."""
    if not instructions:
        raise UserError("no prompt/completion pairs to score: the list is empty")
    if len(instructions) != len(completions):
        raise UserError(f"{len(instructions)} prompts but {len(completions)} completions")
    out = [0.0] * len(instructions)
    keyed = [p + "\x00" + c for p, c in zip(instructions, completions, strict=True)]
    for indices in tqdm(
        length_sorted_batches(keyed, batch_size), desc="score", disable=not progress, unit="batch"
    ):
        prompts = [instructions[i] for i in indices]
        ids, attention, predicts = teacher_forced_batch(
            lm,
            formatter,
            prompts,
            [completions[i] for i in indices],
            max_completion_tokens=max_completion_tokens,
        )
        ids, attention = ids.to(lm.device), attention.to(lm.device)
        positions = (attention.cumsum(-1) - 1).clamp_min(0)
        # rows are left-padded, so every scored position lies in the last `keep` positions
        keep = int(predicts.sum(dim=1).max()) + 1
        lengths = prompt_lengths(attention, predicts)
        with apply(lm.model, bind(interventions, prompts, attention, lengths)):
            logits = twin_logits(
                lm.model,
                needs_twin(interventions),
                input_ids=ids,
                attention_mask=attention,
                position_ids=positions,
                logits_to_keep=keep,
            )
        targets = ids[:, -keep + 1 :] if keep > 1 else ids[:, :0]
        nll = next_token_nll(logits[:, :-1], targets).cpu()  # position t predicts token t+1
        mask = predicts[:, -keep:-1]
        for row, index in enumerate(indices):
            scored = nll[row][mask[row]]
            out[index] = float(scored.mean()) if scored.numel() else float("inf")
    return out


@torch.inference_mode()
def text_nll(
    lm: LoadedModel,
    texts: Sequence[str],
    *,
    interventions: Sequence[Intervention] | InterventionSet = (),
    batch_size: int = 8,
    max_tokens: int = 256,
    progress: bool = False,
) -> list[float]:
    """Per document, the mean next-token NLL (nats) of plain text (no chat template), first
    `max_tokens` tokens, every token after the first scored."""
    if not texts:
        raise UserError("no documents to score: the list is empty")
    out = [0.0] * len(texts)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    for indices in tqdm(
        length_sorted_batches(texts, batch_size), desc="text", disable=not progress, unit="batch"
    ):
        rows = [
            lm.tokenizer(texts[i], add_special_tokens=False)["input_ids"][:max_tokens]
            for i in indices
        ]
        if min(len(r) for r in rows) < 2:
            raise UserError("a document is shorter than two tokens; drop it from the text set")
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            ids[k, width - len(row) :] = torch.tensor(row)
            attention[k, width - len(row) :] = 1
        ids, attention = ids.to(lm.device), attention.to(lm.device)
        positions = (attention.cumsum(-1) - 1).clamp_min(0)
        with apply(lm.model, bind(interventions, [texts[i] for i in indices], attention)):
            logits = twin_logits(
                lm.model,
                needs_twin(interventions),
                input_ids=ids,
                attention_mask=attention,
                position_ids=positions,
            )
        nll = next_token_nll(logits[:, :-1], ids[:, 1:]).cpu()
        scored = (attention[:, :-1] * attention[:, 1:]).bool().cpu()
        for k, index in enumerate(indices):
            out[index] = float(nll[k][scored[k]].mean())
    return out
