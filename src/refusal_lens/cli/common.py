"""What several commands share: loading the model, refusal tokens, interventions from flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserError


def load_lm(args: argparse.Namespace) -> tuple[Any, Any]:
    from transformers.utils import logging as hf_logging

    from ..models import ChatFormatter, load_model

    if not args.verbose:  # transformers' per-tensor loading bars are noise here
        hf_logging.disable_progress_bar()
    lm = load_model(args.model, dtype=args.dtype, device=args.device, cache=args.cache_dir)
    max_length = getattr(lm.model.config, "max_position_embeddings", None)
    return lm, ChatFormatter(lm.tokenizer, system=args.system, max_length=max_length)


def refusal_tokens(spec: str | None, tokenizer: Any) -> Any:
    from ..judges import RefusalTokens

    if spec is None:
        return RefusalTokens.from_phrases(tokenizer)
    return RefusalTokens.from_phrases(tokenizer, [t for t in spec.split(",") if t])


def direction_interventions(args: argparse.Namespace, lm: Any) -> list[Any]:
    from ..direction import Direction

    run = args.ablate_direction or args.add_direction
    if run is None:
        return []
    direction = Direction.load(run)
    direction.check_model(lm)
    return [direction.ablation() if args.ablate_direction else direction.addition(args.coeff)]


def interventions_from_file(path: str) -> list[Any]:
    from ..interventions import from_dict

    file = Path(path)
    if not file.is_file():
        raise UserError(f"intervention file {path!r} does not exist; pass a JSON file")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"intervention file {path!r} is not valid JSON ({error})") from None
    if isinstance(data, dict) and "interventions" in data:
        data = data["interventions"]
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(item, dict) for item in items):
        raise UserError(f"intervention file {path!r} holds no intervention objects")
    return [from_dict(item) for item in items]
