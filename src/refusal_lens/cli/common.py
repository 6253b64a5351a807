"""What several commands share: loading the model, refusal tokens, interventions from flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..errors import UserError


def load_lm(args: argparse.Namespace) -> tuple[Any, Any]:
    from transformers.utils import logging as hf_logging

    from ..models import DEFAULT_MODEL, ChatFormatter, load_model

    if not args.verbose:  # transformers' per-tensor loading bars are noise here
        hf_logging.disable_progress_bar()
    lm = load_model(
        args.model or DEFAULT_MODEL, dtype=args.dtype, device=args.device, cache=args.cache_dir
    )
    max_length = getattr(lm.model.config, "max_position_embeddings", None)
    return lm, ChatFormatter(lm.tokenizer, system=args.system, max_length=max_length)


def executor_for(args: argparse.Namespace) -> Any:
    """The executor settings of a long command's flags, checked (its engine installed, its
    cluster reachable) before the model loads."""
    from ..executors import check_executor
    from .args import executor_from

    settings = executor_from(args)
    check_executor(settings)
    return settings


def open_executor(args: argparse.Namespace, settings: Any, lm: Any, formatter: Any) -> Any:
    """The executor of `settings` for the loaded model (a context manager that releases its
    workers)."""
    from ..executors import make_executor

    return make_executor(
        settings, lm, formatter, cache_dir=args.cache_dir, data_dir=getattr(args, "data_dir", None)
    )


def check_datasets(data_dir: str | None, *names: str | None) -> None:
    """Resolve every named prompt set (and the data directory) before the model loads: a typo
    is one line now, not after minutes of work."""
    from ..data import load_prompts, resolve_data_dir

    resolve_data_dir(data_dir)
    for name in names:
        if name:
            load_prompts(name, data_dir=data_dir, limit=1)


def refusal_tokens(spec: str | None, tokenizer: Any) -> Any:
    from ..judges import RefusalTokens

    if spec is None:
        return RefusalTokens.from_phrases(tokenizer)
    return RefusalTokens.from_phrases(tokenizer, [t for t in spec.split(",") if t])


def load_direction_arg(args: argparse.Namespace) -> Any:
    """The direction of --ablate-direction / --add-direction (None without), read and checked
    before the model loads."""
    from ..direction import Direction

    run = args.ablate_direction or args.add_direction
    return None if run is None else Direction.load(run)


def direction_interventions(args: argparse.Namespace, lm: Any, direction: Any = None) -> list[Any]:
    direction = direction or load_direction_arg(args)
    if direction is None:
        return []
    direction.check_model(lm)
    return [direction.ablation() if args.ablate_direction else direction.addition(args.coeff)]


def interventions_from_file(path: str) -> list[Any]:
    from ..interventions import from_dict
    from ..schema import read_json

    data = read_json(Path(path), "intervention file", "pass a JSON file as `steer --json` prints")
    if isinstance(data, dict) and "interventions" in data:
        data = data["interventions"]
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(item, dict) for item in items):
        raise UserError(f"intervention file {path!r} holds no intervention objects")
    many = len(items) > 1
    return [
        from_dict(item, f"{path}" + (f" (intervention {index + 1})" if many else ""))
        for index, item in enumerate(items)
    ]


def run_config(args: argparse.Namespace, *settings: Any) -> dict[str, Any]:
    """What a command was asked, for its manifest: its flags (not the CLI's own bookkeeping)
    and the settings they resolved to (after --config and --set)."""
    skip = ("verbose", "json", "handler", "config", "set")
    config = {k: v for k, v in vars(args).items() if k not in skip and not k.startswith("_")}
    for item in settings:
        config.update(dataclasses.asdict(item))
    return config


def add_settings_args(
    parser: argparse.ArgumentParser, table: str, env_prefix: str, example: str | None = None
) -> None:
    """--config (a TOML table) and repeatable --set NAME=VALUE over one settings class."""
    parser.add_argument("--config", default=None, help=f"TOML file (a [{table}] table)")
    shown = f", e.g. {example}" if example else ""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"override one setting{shown} (file < ${env_prefix}NAME < --set)",
    )
