"""Directions as intervention data: a vector stored by file (with its sha256) or by value."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .. import schema
from ..errors import UserError


def vector_sha256(vector: torch.Tensor) -> str:
    """Content hash of a vector: results are keyed by what was applied, not by a file name."""
    return hashlib.sha256(vector.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def vector_to_json(vector: torch.Tensor, source: str | None) -> dict[str, Any]:
    if source is not None:
        return {"file": source, "sha256": vector_sha256(vector)}
    return {"values": [float(x) for x in vector.float().tolist()]}


def read_direction_file(path: str | Path) -> torch.Tensor:
    """The `direction` tensor of a direction.safetensors: one finite, non-zero vector."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"direction file {file} does not exist; rerun `refusal-lens direction`")
    try:
        tensors = load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise UserError(f"direction file {file} is unreadable ({first}); recompute it") from None
    vector = tensors.get("direction")
    if vector is None:
        raise UserError(f"direction file {file} holds no 'direction' tensor; recompute it")
    if vector.ndim != 1 or not vector.is_floating_point() or not vector.numel():
        raise UserError(
            f"direction file {file}: the direction is a {vector.dtype} tensor of shape "
            f"{tuple(vector.shape)}, not a vector of floats; recompute it"
        )
    if not torch.isfinite(vector).all():
        raise UserError(f"direction file {file} holds NaN or infinite values; recompute it")
    return vector


VECTOR_SCHEMA = schema.Either(
    (
        schema.Obj(required={"file": schema.Str(nonempty=True)}),
        schema.Obj(required={"values": schema.ListOf(schema.Number(), min_len=1)}),
    )
)


def vector_from_json(data: dict[str, Any]) -> tuple[torch.Tensor, str | None]:
    if "file" in data:
        vector = read_direction_file(data["file"])
        expected = data.get("sha256")
        if isinstance(expected, str) and expected and vector_sha256(vector) != expected:
            raise UserError(
                f"direction file {data['file']} is not the one this intervention was written "
                f"with (sha256 {vector_sha256(vector)[:12]}..., recorded {expected[:12]}...); "
                "point it at the original direction or drop the sha256"
            )
        return vector, str(data["file"])
    return torch.tensor(data["values"], dtype=torch.float32), None


def checked_vector(vector: torch.Tensor, model: nn.Module) -> torch.Tensor:
    d_model = int(model.config.hidden_size)
    if vector.ndim != 1 or vector.shape[0] != d_model:
        raise UserError(
            f"direction has shape {tuple(vector.shape)} but the model's d_model is "
            f"{d_model}; use a direction computed for this model"
        )
    if not torch.isfinite(vector).all():
        raise UserError("direction contains NaN or inf values; recompute it")
    return vector.float()


def unit_vector(vector: torch.Tensor, model: nn.Module) -> torch.Tensor:
    checked = checked_vector(vector, model)
    norm = checked.norm()
    if norm == 0:
        raise UserError("direction has zero norm; it cannot be ablated")
    return checked / norm
