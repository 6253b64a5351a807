"""The chat template's fixed header (system turn, user tag), run once and shared by a batch.

Every formatted prompt starts with the same header tokens; for Qwen2.5's default system prompt
they are about half of a short request's tokens. Scoring a batch at its last position (the
direction search, the first-token judge) can run the header once, keep its KV cache, and run
only each prompt's own tokens against it. The batch is laid out header, then left padding,
then the prompt's tokens, with explicit position ids and a mask over the padding, so every row
ends at the same last position and the logits of `logits_to_keep=1` are each row's own.

Only valid under interventions that act the same at every position (none, direction ablation,
direction addition): a latent edit can depend on the position (attention sinks, from-position,
prompt-only), and those batches run whole.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from .cache import cache_argument
from .chat import ChatFormatter, EncodedBatch
from .loading import LoadedModel


def position_independent(items: Sequence[Any]) -> bool:
    """Whether every intervention acts the same at every position (so a header computed
    alone equals the header inside any batch)."""
    from ..interventions import AblateDirection, AddDirection

    return all(isinstance(item, AblateDirection | AddDirection) for item in items)


class SharedHeader:
    """The header's KV cache under the interventions active when it was first computed."""

    def __init__(self, lm: LoadedModel, formatter: ChatFormatter) -> None:
        self.lm = lm
        self.header = torch.tensor(formatter.pre_instruction_ids, dtype=torch.long)
        self._cache: Any = None

    def split(self, batch: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch without its header, still left-padded (ids, mask); None when a row does
        not start with the header tokens (a tokenizer that merges across the boundary)."""
        n = self.header.numel()
        if n == 0:
            return None
        pads = (batch.attention_mask == 0).sum(dim=1).tolist()
        header = self.header.to(batch.input_ids.device)
        ids, mask = [], []
        for row, pad in enumerate(pads):
            real = batch.input_ids[row, pad:]
            if real.numel() <= n or not torch.equal(real[:n], header):
                return None
            ids.append(torch.cat([batch.input_ids[row, :pad], real[n:]]))
            mask.append(
                torch.cat([batch.attention_mask[row, :pad], batch.attention_mask[row, pad + n :]])
            )
        return torch.stack(ids), torch.stack(mask)

    def last_logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`[batch, vocab]` next-token logits at the last position of each row of a split
        batch. Call inside the interventions' context: the header is run under them once."""
        device = ids.device
        n = self.header.numel()
        argument = cache_argument(self.lm.model)
        if self._cache is None:
            cache = DynamicCache(config=self.lm.model.config)
            self.lm.model(
                input_ids=self.header.unsqueeze(0).to(device),
                use_cache=True,
                logits_to_keep=1,
                **{argument: cache},
            )
            self._cache = cache
        cache = copy.deepcopy(self._cache)
        cache.batch_repeat_interleave(ids.shape[0])
        attention = torch.cat(
            [torch.ones(ids.shape[0], n, dtype=mask.dtype, device=device), mask], 1
        )
        positions = n + (mask.long().cumsum(-1) - 1).clamp_min(0)
        out = self.lm.model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{argument: cache},
        )
        return out.logits[:, -1]
