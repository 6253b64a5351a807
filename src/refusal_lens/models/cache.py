"""The KV-cache argument of a model's forward, which transformers renamed."""

from __future__ import annotations

import inspect

import torch


def cache_argument(model: torch.nn.Module) -> str:
    """The forward argument that takes the KV cache: `cache` since transformers 5.24
    (`past_key_values` is deprecated there and goes in 5.40), `past_key_values` before."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
