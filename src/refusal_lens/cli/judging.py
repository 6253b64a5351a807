"""Commands about judges: list them, train the learned one, judge a file, measure agreement."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import UserError
from .common import load_lm

# judges that read the evaluated model (so the command loads --model first)
_READ_MODEL = ("compliance", "first-token")


def _check_specs(specs: list[str]) -> None:
    """Every judge spec names a judge that reads completions, with options it takes."""
    from ..judges import check_judge_spec

    for spec in specs:
        if check_judge_spec(spec)[0] == "first-token":
            raise UserError(
                "first-token scores the evaluated model's own next token, not a given "
                "completion; choose a judge that reads completions"
            )


def _judges(args: argparse.Namespace, specs: list[str]) -> dict[str, Any]:
    """The judges of `specs` (checked by `_check_specs` first), built."""
    from ..judges import JudgeContext, make_judge, parse_judge_spec

    needs_model = any(parse_judge_spec(spec)[0] in _READ_MODEL for spec in specs)
    lm, formatter = load_lm(args) if needs_model else (None, None)
    context = JudgeContext(
        lm=lm,
        formatter=formatter,
        device=args.device,
        cache_dir=args.cache_dir,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
    )
    return {spec: make_judge(spec, context) for spec in specs}


def cmd_judges(_args: argparse.Namespace) -> int:
    from ..judges import judge_names

    for name, summary in judge_names().items():
        print(f"{name:<12} {summary}")
    return 0


def judge_settings(args: argparse.Namespace) -> Any:
    from ..config import load_settings
    from ..judges.learned import LearnedJudgeSettings

    return load_settings(
        LearnedJudgeSettings,
        file=args.config,
        table="train-judge",
        env_prefix="REFUSAL_LENS_JUDGE_",
        overrides=args.set,
    )


def cmd_train_judge(args: argparse.Namespace) -> int:
    from ..judges.learned import train, training_data

    settings = judge_settings(args)
    data = training_data(settings, args.data_dir)  # every set read and typed before training
    print(
        f"training the learned judge on {len(data.rows)} labelled responses "
        f"({', '.join(f'{k}: {v}' for k, v in data.sources.items())})"
    )
    folder = train(settings, args.data_dir, cache=args.cache_dir)
    meta = json.loads((folder / "judge.json").read_text())
    print(f"learned judge: {folder} (train loss per epoch {meta['train_loss']})")
    print(f"use it: --judge learned:folder={folder}  (or plain `learned`: this default)")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from ..data.labelled import read_pairs
    from ..evaluation.agreement import judge_file, judged_markdown
    from ..runs import check_output_folder

    specs = args.judge or ["substring", "learned"]
    _check_specs(specs)
    by = tuple(args.by)
    read_pairs(args.file, group_by=by)  # the file is there and typed before any judge loads
    check_output_folder(args.out)
    judges = _judges(args, specs)
    rows = judge_file(judges, args.file, args.out, batch_size=args.batch_size, group_by=by)
    print(judged_markdown(rows), end="")
    print(f"verdicts: {args.out}/verdicts.jsonl")
    return 0


def cmd_judge_agreement(args: argparse.Namespace) -> int:
    from ..data.labelled import LABELLED_SETS, is_labelled_file, load_labelled
    from ..evaluation.agreement import agreement_markdown, judge_agreement
    from ..runs import check_output_folder

    specs = args.judge or ["substring", "compliance", "learned"]
    _check_specs(specs)
    sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    if not sets:
        raise UserError(f"--sets names no labelled set; choose from {', '.join(LABELLED_SETS)}")
    for name in sets:
        if name not in LABELLED_SETS and not is_labelled_file(name):
            raise UserError(
                f"unknown labelled set {name!r}; choose from {', '.join(LABELLED_SETS)} or "
                "give a .csv/.json/.jsonl file with prompt, response and label columns"
            )
    check_output_folder(args.out)
    for name in sets:  # the labelled data is there and readable, before any model loads
        load_labelled(name, args.data_dir, limit=args.limit, seed=args.seed)
    judges = _judges(args, specs)
    rows = judge_agreement(
        judges, sets, args.out, data_dir=args.data_dir, limit=args.limit, seed=args.seed
    )
    print(agreement_markdown(rows), end="")
    return 0
