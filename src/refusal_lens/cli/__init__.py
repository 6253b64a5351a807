"""Command line: one subcommand per stage. It only parses, calls the stage and prints."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from ..analyses.registry import ANALYSES
from ..errors import UserError
from .analyses import cmd_analysis, cmd_analyze
from .evaluation import (
    cmd_benchmark,
    cmd_report,
    cmd_results,
    cmd_run,
)
from .foundation import cmd_datasets, cmd_direction, cmd_generate, cmd_models, cmd_refusal_rate
from .judging import cmd_judge, cmd_judge_agreement, cmd_judges, cmd_train_judge
from .latents import (
    cmd_compare,
    cmd_find_latents,
    cmd_latent_cards,
    cmd_steer,
    cmd_validate_attribution,
)
from .parser import build_parser
from .saes import cmd_eval_saes, cmd_train_saes

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "find-latents": cmd_find_latents,
    "steer": cmd_steer,
    "compare": cmd_compare,
    "latent-cards": cmd_latent_cards,
    "validate-attribution": cmd_validate_attribution,
    "train-saes": cmd_train_saes,
    "eval-saes": cmd_eval_saes,
    "direction": cmd_direction,
    "refusal-rate": cmd_refusal_rate,
    "generate": cmd_generate,
    "judge-agreement": cmd_judge_agreement,
    "judges": cmd_judges,
    "judge": cmd_judge,
    "train-judge": cmd_train_judge,
    "analyze": cmd_analyze,
    **dict.fromkeys(ANALYSES, cmd_analysis),
    "results": cmd_results,
    "benchmark": cmd_benchmark,
    "report": cmd_report,
    "run": cmd_run,
    "models": cmd_models,
    "datasets": cmd_datasets,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
