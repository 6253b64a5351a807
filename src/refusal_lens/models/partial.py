"""Rerun a model from one decoder layer on: the upper part of a forward pass, for splicing.

`LayerCalls.capture()` records how every decoder layer was called during one forward (its
positional and keyword arguments: attention masks, rotary embeddings, position ids), and
`logits_after(layer, hidden)` reruns the layers above `layer` on a replacement output of
`layer`, then the final norm and the unembedding (with Gemma's logit soft-capping). Splicing an
SAE reconstruction at layer `l` then costs the layers above `l` instead of a whole forward.
Models whose stack does not fit this shape are detected (`matches_full_forward`) so callers can
fall back to full forwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..hooks import decoder_layers

_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "use_cache", "cache_position")


class LayerCalls:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self.calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    @contextmanager
    def capture(self) -> Iterator[LayerCalls]:
        handles = []

        def recorder(index: int):
            def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
                # a KV cache would be appended to again by the rerun: never pass one on
                kept = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS}
                self.calls[index] = (args[1:], kept)

            return pre_hook

        try:
            for index, layer in enumerate(self.layers):
                handles.append(layer.register_forward_pre_hook(recorder(index), with_kwargs=True))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def supported(self) -> bool:
        inner = getattr(self.model, "model", None)
        return isinstance(getattr(inner, "norm", None), nn.Module) and isinstance(
            getattr(self.model, "lm_head", None), nn.Module
        )

    @torch.inference_mode()
    def logits_after(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the model whose layer `layer` output `hidden` (after a captured forward)."""
        h = hidden
        for index in range(layer + 1, len(self.layers)):
            rest, kwargs = self.calls[index]
            if "hidden_states" in kwargs:
                out = self.layers[index](**{**kwargs, "hidden_states": h})
            else:
                out = self.layers[index](h, *rest, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        logits = self.model.lm_head(self.model.model.norm(h))
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    def matches_full_forward(
        self,
        layer: int,
        hidden: torch.Tensor,
        logits: torch.Tensor,
        real: torch.Tensor,
        tolerance: float = 1e-3,
    ) -> bool:
        """Whether rerunning from `layer` on its clean output reproduces the clean logits at
        the real (non-padding) positions `real`."""
        if not self.supported():
            return False
        try:
            again = self.logits_after(layer, hidden)
        except (KeyError, TypeError, RuntimeError):
            return False
        want = logits[real].float()
        scale = float(want.abs().max().clamp_min(1.0))
        return float((again[real].float() - want).abs().max()) <= tolerance * scale
