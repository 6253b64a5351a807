"""Commands about judges: list them, train the learned one, judge a file, measure agreement."""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from typing import Any

from ..errors import UserError

# judges that read the evaluated model (so the command loads --model first)
from .args import Command, add_data_arg, add_judge_arg, add_model_args, executor_flags, positive
from .common import add_settings_args, executor_for, load_lm, open_executor

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


def _judges(
    args: argparse.Namespace, specs: list[str], loaded: tuple[Any, Any] | None = None
) -> dict[str, Any]:
    """The judges of `specs` (checked by `_check_specs` first), built; `loaded`: the model
    and formatter when the caller has them."""
    from ..judges import JudgeContext, make_judge, parse_judge_spec

    needs_model = any(parse_judge_spec(spec)[0] in _READ_MODEL for spec in specs)
    lm, formatter = (loaded or load_lm(args)) if needs_model else (None, None)
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
    where = executor_for(args)
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
    executor, loaded = None, None
    if where.name != "local":  # workers are described by the model (judge-only ones never load it)
        loaded = load_lm(args)
        executor = open_executor(args, where, *loaded)
    judges = _judges(args, specs, loaded)
    with executor if executor is not None else nullcontext():
        rows = judge_agreement(
            judges,
            sets,
            args.out,
            data_dir=args.data_dir,
            limit=args.limit,
            seed=args.seed,
            executor=executor,
        )
    print(agreement_markdown(rows), end="")
    return 0


EXAMPLES = {
    "judge-agreement": """
        refusal-lens judge-agreement --data-dir DATA --limit 300 --out runs/judges
        refusal-lens judge-agreement --data-dir DATA --judge substring \\
            --judge harmbench:model=qwen2.5-coder-1.5b-instruct --out runs/judges
        refusal-lens judge-agreement --data-dir DATA --judge \\
            endpoint:base_url=http://localhost:8000/v1,model=judge --out runs/judges
    """,
    "judge": """
        refusal-lens judge runs/q/completions.jsonl --data-dir DATA --out runs/q/judged
        refusal-lens judge pairs.csv --judge substring --judge learned:threshold=0.7 --out runs/j
        refusal-lens judge answers.jsonl --by condition --by dataset --data-dir DATA --out runs/j
    """,
    "train-judge": """
        refusal-lens train-judge --data-dir DATA
        refusal-lens train-judge --data-dir DATA --set train_sets=gptfuzz-train,my_labels.csv
    """,
    "judges": "refusal-lens judges",
}


def register(command: Command) -> None:
    """This group's subcommands, flags and examples (`parser.build_parser` calls it)."""
    agree = command(
        "judge-agreement",
        cmd_judge_agreement,
        "Accuracy and Cohen's kappa of judges against human labels (XSTest completions, "
        "GPTFuzz responses held out by question, or any labelled file), with 95% bootstrap "
        "intervals.",
    )
    add_model_args(agree)
    add_data_arg(agree)
    executor_flags(agree)
    add_judge_arg(agree, "substring, compliance and learned")
    agree.add_argument(
        "--sets",
        default="xstest,gptfuzz",
        help="labelled sets, comma list: xstest, gptfuzz, gptfuzz-train, or .csv/.json/.jsonl "
        "files with prompt, response and label columns",
    )
    agree.add_argument("--limit", type=positive, default=None, help="random N items per set")
    agree.add_argument("--out", required=True, help="run folder (reused when rerun)")

    judge = command(
        "judge",
        cmd_judge,
        "Judge a file of (prompt, response) pairs with any judges: rate of compliance (95% "
        "interval), refusal and degenerate answers per judge; with a label column, agreement "
        "with the labels. Verdicts go to OUT/verdicts.jsonl.",
    )
    judge.add_argument("file", help=".csv/.json/.jsonl with prompt and response (or completion)")
    add_model_args(judge)
    add_data_arg(judge)
    add_judge_arg(judge, "substring and learned")
    judge.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="also give the rates per value of this column (repeatable: per combination)",
    )
    judge.add_argument("--out", required=True, help="run folder (reused when rerun)")

    trainer = command(
        "train-judge",
        cmd_train_judge,
        "Train the learned compliance judge (a small encoder fine-tuned on GPTFuzz's human "
        "labels, plus any labelled files) into the user cache; the `learned` judge is this one.",
    )
    add_data_arg(trainer)
    trainer.add_argument(
        "--cache-dir",
        default=None,
        help="cache folder (default: $REFUSAL_LENS_CACHE or the user cache dir)",
    )
    add_settings_args(
        trainer,
        "train-judge",
        "REFUSAL_LENS_JUDGE_",
        "--set epochs=3 --set train_sets=gptfuzz-train,mine.csv",
    )

    command("judges", cmd_judges, "List the registered judges and their options.")
