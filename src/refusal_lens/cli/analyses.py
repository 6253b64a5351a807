"""Commands of the analyses (Yeo et al. 2025): one per entry of `analyses.registry`, all
parsed and run the same way, and `analyze`, every analysis on a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..analyses.registry import ANALYSES, AnalysisEntry
from ..errors import UserError
from .args import Command, add_data_arg, add_model_args, executor_flags
from .common import add_settings_args, executor_for, load_lm, open_executor


def _from_benchmark(run: str | None) -> dict[str, str]:
    """The SAE set, direction and `ours` latent set of a benchmark (or `run`) folder."""
    from ..analyses.suite import benchmark_inputs

    return {} if run is None else benchmark_inputs(run)


def _inputs(args: argparse.Namespace, name: str) -> tuple[dict[str, str], str]:
    """The SAE set, latents and direction paths (flags beat the --run folder) and the output
    folder (default RUN/analyses/NAME)."""
    found = _from_benchmark(args.run)
    paths = {key: getattr(args, key) or found.get(key) for key in ("saes", "latents", "direction")}
    for key, path in paths.items():
        if path is None:
            raise UserError(f"pass --{key} (or --run, a benchmark folder that has one)")
    if args.run and args.model is None:
        args.model = found["model"]
    out = args.out or (str(Path(args.run) / "analyses" / name) if args.run else None)
    if out is None:
        raise UserError(f"pass --out (or --run, whose analyses/{name} folder is then used)")
    return paths, out


def _flag_overrides(args: argparse.Namespace, entry: AnalysisEntry) -> list[str]:
    """The analysis' own flags as settings overrides (NAME=VALUE), before --set ones."""
    overrides = []
    for flag in entry.flags:
        value = getattr(args, flag.flag.lstrip("-").replace("-", "_"))
        if value:
            overrides.append(f"{flag.setting}={','.join(value) if flag.repeat else value}")
    return overrides


def _check_settings(args: argparse.Namespace, settings: Any) -> None:
    """Everything the settings name, read and checked before the model loads: prompt sets,
    adversarial sources and judges."""
    from ..data import load_prompts, resolve_data_dir
    from ..data.adversarial import load_adversarial
    from ..judges import check_judge_spec

    resolve_data_dir(args.data_dir)
    for name in ("dataset", "test_dataset"):
        value = getattr(settings, name, None)
        if value:
            load_prompts(value, data_dir=args.data_dir, limit=1)
    for source in getattr(settings, "sources", ()):
        load_adversarial(source, data_dir=args.data_dir, n=1)
    source = getattr(settings, "source", None)
    if source is not None and source not in ("suffixes", "gptfuzz") and not Path(source).is_file():
        raise UserError(
            f"unknown jailbreak source {source!r}; use suffixes, gptfuzz or a "
            ".csv/.json/.jsonl file with prompt and goal columns"
        )
    judges = getattr(settings, "judges", None) or (getattr(settings, "judge", None),)
    for spec in judges:
        if spec:
            check_judge_spec(spec)


def _harm_path(args: argparse.Namespace, entry: AnalysisEntry) -> str | None:
    if entry.harm == "no":
        return None
    if args.harm_latents:
        return str(args.harm_latents)
    if entry.harm == "needed":
        if not args.run:
            raise UserError(
                "pass --harm-latents (the harm set of `refusal-lens categories`) or --run"
            )
        return str(Path(args.run) / "analyses" / "categories" / "harm")
    return None


def cmd_analysis(args: argparse.Namespace) -> int:
    """One analysis of the registry, named by the command."""
    from ..analyses.inputs import AnalysisInputs
    from ..analyses.suite import analysis_settings
    from ..direction import Direction
    from ..latents import LatentSet
    from ..runs import check_output_folder
    from ..saes import SAESet

    entry = ANALYSES[args.command]
    overrides = [*_flag_overrides(args, entry), *args.set]
    settings = analysis_settings(entry, quick=args.quick, overrides=overrides, config=args.config)
    paths, out = _inputs(args, entry.output_name(settings))
    harm_path = _harm_path(args, entry)
    _check_settings(args, settings)
    saes = SAESet.load(paths["saes"])
    latents = LatentSet.load(paths["latents"])
    direction = Direction.load(paths["direction"])
    harm = LatentSet.load(harm_path) if harm_path else None
    where = executor_for(args)
    check_output_folder(out)
    lm, formatter = load_lm(args)
    executor = open_executor(args, where, lm, formatter)
    inputs = AnalysisInputs(
        lm=lm,
        formatter=formatter,
        saes=saes,
        saes_path=paths["saes"],
        direction=direction,
        direction_path=paths["direction"],
        latents=latents,
        ours=latents,
        harm=harm,
        data_dir=args.data_dir,
        device=args.device,
        cache_dir=args.cache_dir,
        executor=executor,
    )
    with executor:
        summary = entry.load().run(inputs, settings, Path(out))
    print((Path(out) / f"{entry.name}.md").read_text(), end="")
    print(f"wall time {summary['wall_seconds']:.0f} s; results: {Path(out) / f'{entry.name}.json'}")
    return 0


def analysis_arguments(parser: argparse.ArgumentParser, entry: AnalysisEntry) -> None:
    """The flags every analysis command has, then the entry's own."""
    parser.add_argument(
        "--run", default=None, help="benchmark / run folder: its SAE set, direction and ours set"
    )
    parser.add_argument("--saes", default=None, help="SAE set folder")
    parser.add_argument("--latents", default=None, help="refusal latents (a latents.json)")
    parser.add_argument("--direction", metavar="RUN", default=None, help="refusal direction run")
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes)")
    add_settings_args(parser, entry.name, f"REFUSAL_LENS_{entry.name.upper()}_")
    for flag in entry.flags:
        if flag.repeat:
            parser.add_argument(flag.flag, action="append", default=[], help=flag.help)
        else:
            parser.add_argument(flag.flag, default=None, help=flag.help)
    if entry.harm != "no":
        default = (
            "default: RUN/analyses/categories/harm, from `categories`"
            if entry.harm == "needed"
            else "a second latent set to compare"
        )
        parser.add_argument("--harm-latents", default=None, help=f"harm latents ({default})")
    parser.add_argument(
        "--out", default=None, help="output folder (default: under RUN/analyses/, by analysis)"
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..analyses.suite import RunInputs, analyze_job
    from ..report import write_report
    from ..runs import check_output_folder

    inputs = RunInputs.of(args.run)
    if args.model is None:
        args.model = inputs.model
    suite = ",".join(name for name, entry in ANALYSES.items() if entry.in_suite)
    only = tuple(name for name in (args.only or suite).split(",") if name.strip())
    unknown = [name for name in only if name not in ANALYSES]
    if unknown or not only:
        raise UserError(
            f"--only {args.only!r}: unknown analysis {unknown[0] if unknown else '(none)'!r}; "
            f"choose from {', '.join(ANALYSES)}"
        )
    where = executor_for(args)
    check_output_folder(Path(args.run) / "analyses", "analyses folder")
    check_output_folder(Path(args.run) / "report", "report folder")
    lm, formatter = load_lm(args)
    with open_executor(args, where, lm, formatter) as executor:
        done = analyze_job(
            lm,
            formatter,
            args.run,
            only=only,
            quick=args.quick,
            data_dir=args.data_dir,
            device=args.device,
            cache_dir=args.cache_dir,
            executor=executor,
        )
    for name, state in done.items():
        print(f"{name}: {state}")
    page, _ = write_report(args.run)
    print(f"report: {page}")
    return 0


def analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="benchmark / run folder (its SAE set, direction, ours set)")
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes each)")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated analyses (default: every one but defend, run only when named)",
    )


EXAMPLES = {
    "analyze": """
        refusal-lens analyze runs/quickstart --quick --data-dir DATA
        refusal-lens analyze runs/bench --only categories,circuits --data-dir DATA
    """,
}


def register(command: Command) -> None:
    """This group's subcommands, flags and examples (`parser.build_parser` calls it)."""
    for entry in ANALYSES.values():
        analysis = command(entry.name, cmd_analysis, entry.help, entry.examples)
        add_model_args(analysis)
        add_data_arg(analysis)
        analysis_arguments(analysis, entry)
        executor_flags(analysis)
    analyze = command(
        "analyze",
        cmd_analyze,
        "Every analysis on a benchmark or run folder, in the method's order (categories, "
        "circuits, jailbreaks, probes, minimal), each into RUN/analyses/NAME, then the report "
        "again with their sections.",
    )
    add_model_args(analyze)
    add_data_arg(analyze)
    analyze_arguments(analyze)
    executor_flags(analyze)
