"""Tensors as JSON text, for work items' results: the safetensors bytes of a dict of tensors,
base64-encoded. Exact (every dtype and value as stored), compact (a third over the raw bytes)
and safe to read (safetensors holds data only; nothing is unpickled)."""

from __future__ import annotations

import base64
from typing import Any

import torch
from safetensors.torch import load, save

from ..errors import UserError

KEY = "safetensors_base64"


def pack(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """`tensors` (on any device) as a JSON-ready dict."""
    data = save({name: t.detach().cpu().contiguous() for name, t in tensors.items()})
    return {KEY: base64.b64encode(data).decode("ascii")}


def unpack(data: Any) -> dict[str, torch.Tensor]:
    """The tensors `pack` wrote (on the CPU); anything else is an error naming what came."""
    if not isinstance(data, dict) or not isinstance(data.get(KEY), str):
        raise UserError(f"a work item's result is not packed tensors (got {type(data).__name__})")
    try:
        return load(base64.b64decode(data[KEY], validate=True))
    except Exception as error:  # safetensors raises several kinds
        raise UserError(f"a work item's packed tensors are unreadable ({error})") from None
