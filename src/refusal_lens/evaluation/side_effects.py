"""Side effects of an intervention on prompts it should leave alone.

`completion_kl`: the base model's own greedy completions of harmless prompts, teacher-forced
through the base and the intervened model; per prompt the mean over completion tokens of
`KL(p_base || p_intervened)` of the next-token distributions, averaged over prompts with a
bootstrap interval. Padding never counts (explicit masks), and both conditions see exactly the
same token sequences, so the number measures the intervention and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import UserError
from ..generation import generate, length_sorted_batches
from ..interventions import Intervention, InterventionSet, apply, bind, needs_twin, twin_logits
from ..models import ChatFormatter, LoadedModel
from ..teacher_forcing import next_token_nll, prompt_lengths, teacher_forced_batch
from .statistics import Estimate, bootstrap_mean


def base_completions(
    lm: LoadedModel,
    formatter: ChatFormatter,
    instructions: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> list[str]:
    return generate(
        lm,
        formatter,
        instructions,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=False,
    )


@torch.inference_mode()
def completion_kl(
    lm: LoadedModel,
    formatter: ChatFormatter,
    instructions: Sequence[str],
    completions: Sequence[str],
    interventions: Sequence[Intervention] | InterventionSet,
    *,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> Estimate:
    """Mean per-prompt KL(base || intervened) over the base model's completion tokens (empty
    completions have no tokens and are left out of the mean)."""
    per_prompt = completion_kl_per_prompt(
        lm,
        formatter,
        instructions,
        completions,
        interventions,
        batch_size=batch_size,
        progress=progress,
    )
    scored = [kl for kl in per_prompt if math.isfinite(kl)]
    if not scored:
        raise UserError("every base completion is empty: there are no tokens to compare the KL on")
    return bootstrap_mean(scored, seed=seed)


@torch.inference_mode()
def completion_kl_per_prompt(
    lm: LoadedModel,
    formatter: ChatFormatter,
    instructions: Sequence[str],
    completions: Sequence[str],
    interventions: Sequence[Intervention] | InterventionSet,
    *,
    batch_size: int = 4,
    progress: bool = False,
) -> list[float]:
    """Per prompt, the mean over completion tokens of KL(base || intervened). An empty
    completion is compared where the base model ended it: the last prompt position, which
    predicted end-of-turn. A row with no compared position is NaN, never a KL of 0."""
    return completion_kl_and_nll(
        lm,
        formatter,
        instructions,
        completions,
        interventions,
        batch_size=batch_size,
        progress=progress,
    )[0]


@torch.inference_mode()
def completion_kl_and_nll(
    lm: LoadedModel,
    formatter: ChatFormatter,
    instructions: Sequence[str],
    completions: Sequence[str],
    interventions: Sequence[Intervention] | InterventionSet,
    *,
    batch_size: int = 4,
    progress: bool = False,
) -> tuple[list[float], list[float]]:
    """`completion_kl_per_prompt` and, from the same intervened forward pass, the
    completion's mean NLL under the intervention (`completion_nll`'s number: `inf` for an
    empty completion)."""
    if not instructions:
        raise UserError("no prompts for the KL side-effect measure: the prompt list is empty")
    per_prompt: list[float] = [math.nan] * len(instructions)
    nll_per_prompt: list[float] = [math.inf] * len(instructions)
    twin = needs_twin(interventions)
    for indices in tqdm(
        length_sorted_batches(list(instructions), batch_size),
        desc="harmless KL",
        disable=not progress,
        unit="batch",
    ):
        ids, attention, predicts = teacher_forced_batch(
            lm, formatter, [instructions[i] for i in indices], [completions[i] for i in indices]
        )
        ids, attention = ids.to(lm.device), attention.to(lm.device)
        positions = (attention.cumsum(-1) - 1).clamp_min(0)
        # left padding: every scored position lies in the last `keep` positions (the very
        # last one predicts past the completion and is never scored)
        keep = int(predicts.sum(dim=1).max()) + 1
        kwargs = {
            "input_ids": ids,
            "attention_mask": attention,
            "position_ids": positions,
            "logits_to_keep": keep,
        }
        base = lm.model(**kwargs).logits
        batch_texts = [instructions[i] for i in indices]
        lengths = prompt_lengths(attention, predicts)
        with apply(lm.model, bind(interventions, batch_texts, attention, lengths)):
            edited = twin_logits(lm.model, twin, **kwargs)  # twin: latent `retain`
        scored = predicts[:, -keep:]
        targets = ids[:, -keep + 1 :] if keep > 1 else ids[:, :0]
        nll = next_token_nll(edited[:, :-1], targets).cpu()  # position t predicts token t+1
        for row, index in enumerate(indices):
            tokens = nll[row][predicts[row, -keep:-1]]
            if tokens.numel():
                nll_per_prompt[index] = float(tokens.mean())
            if not scored[row].any():
                continue
            p_log = F.log_softmax(base[row].float(), dim=-1)
            q_log = F.log_softmax(edited[row].float(), dim=-1)
            kl = (p_log.exp() * (p_log - q_log)).sum(dim=-1).cpu()
            per_prompt[index] = float(kl[scored[row]].mean())
    return per_prompt, nll_per_prompt
