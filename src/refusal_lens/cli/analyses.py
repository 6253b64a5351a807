"""Commands of the analyses (Yeo et al. 2025): categories, circuits, probes, jailbreaks,
minimal sets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError
from .common import add_settings_args, load_lm


def _from_benchmark(run: str | None) -> dict[str, str]:
    """The SAE set, direction and `ours` feature set of a benchmark (or `run`) folder."""
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


def _settings(args: argparse.Namespace, cls: type, table: str, quick: dict, extra: list[str]):
    from ..config import load_settings

    return load_settings(
        cls,
        file=args.config,
        table=table,
        env_prefix=f"REFUSAL_LENS_{table.upper()}_",
        overrides=[*extra, *args.set],
        defaults=quick if args.quick else None,
    )


def _prepare(args: argparse.Namespace, settings: Any, paths: dict[str, str], out: str) -> dict:
    """Everything an analysis reads, read and checked before the model loads: its settings'
    prompt sets, adversarial sources and judges, the SAE set, feature set and direction, and
    the output folder."""
    from ..data import load_prompts, resolve_data_dir
    from ..data.adversarial import load_adversarial
    from ..direction import Direction
    from ..features import FeatureSet
    from ..judges import check_judge_spec
    from ..runs import check_output_folder
    from ..saes import SAESet

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
    loaded = {
        "saes": SAESet.load(paths["saes"]),
        "latents": FeatureSet.load(paths["latents"]),
        "direction": Direction.load(paths["direction"]) if paths.get("direction") else None,
    }
    check_output_folder(out)
    return loaded


def _print_result(out: str, name: str, summary: dict) -> None:
    print((Path(out) / f"{name}.md").read_text(), end="")
    print(f"wall time {summary['wall_seconds']:.0f} s; results: {Path(out) / f'{name}.json'}")


def cmd_probes(args: argparse.Namespace) -> int:
    from ..analyses.probes import QUICK_PROBES, ProbeSettings, probes_job

    extra = [f"sources={','.join(args.source)}"] if args.source else []
    settings = _settings(args, ProbeSettings, "probes", QUICK_PROBES, extra)
    paths, out = _inputs(args, "probes")
    loaded = _prepare(args, settings, paths, out)
    lm, formatter = load_lm(args)
    summary = probes_job(
        lm,
        formatter,
        loaded["saes"],
        loaded["latents"],
        loaded["direction"],
        settings,
        out,
        data_dir=args.data_dir,
        device=args.device,
        cache_dir=args.cache_dir,
    )
    _print_result(out, "probes", summary)
    return 0


def cmd_categories(args: argparse.Namespace) -> int:
    from ..analyses.categories import QUICK_CATEGORIES, CategorySettings, categories_job

    extra = [f"dataset={args.dataset}"] if args.dataset else []
    settings = _settings(args, CategorySettings, "categories", QUICK_CATEGORIES, extra)
    paths, out = _inputs(args, "categories")
    loaded = _prepare(args, settings, paths, out)
    lm, formatter = load_lm(args)
    summary = categories_job(
        lm,
        formatter,
        loaded["saes"],
        paths["saes"],
        loaded["latents"],
        loaded["direction"],
        paths["direction"],
        settings,
        out,
        data_dir=args.data_dir,
        device=args.device,
        cache_dir=args.cache_dir,
    )
    print((Path(out) / "categories.md").read_text(), end="")
    print(
        f"wall time {summary['wall_seconds']:.0f} s; common latents: {Path(out) / 'common'}; "
        f"harm latents: {Path(out) / 'harm'}"
    )
    return 0


def categories_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, "categories")
    parser.add_argument(
        "--dataset", default=None, help="categorised harmful prompts (default: strongreject)"
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default: RUN/analyses/categories)"
    )


def cmd_circuits(args: argparse.Namespace) -> int:
    from ..analyses.circuits import QUICK_CIRCUITS, CircuitSettings, circuits_job
    from ..features import FeatureSet

    settings = _settings(args, CircuitSettings, "circuits", QUICK_CIRCUITS, [])
    paths, out = _inputs(args, "circuits")
    harm = args.harm_latents or (
        str(Path(args.run) / "analyses" / "categories" / "harm") if args.run else None
    )
    if harm is None:
        raise UserError("pass --harm-latents (the harm set of `refusal-lens categories`) or --run")
    loaded = _prepare(args, settings, paths, out)
    upstream = FeatureSet.load(harm)
    lm, formatter = load_lm(args)
    summary = circuits_job(
        lm,
        formatter,
        loaded["saes"],
        loaded["latents"],
        upstream,
        settings,
        out,
        direction=loaded["direction"],
        data_dir=args.data_dir,
    )
    _print_result(out, "circuits", summary)
    return 0


def circuits_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, "circuits")
    parser.add_argument(
        "--harm-latents",
        default=None,
        help="upstream latents (default: RUN/analyses/categories/harm, from `categories`)",
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default: RUN/analyses/circuits)"
    )


def cmd_minimal(args: argparse.Namespace) -> int:
    from ..analyses.minimal import QUICK_MINIMAL, MinimalSettings, minimal_job

    settings = _settings(args, MinimalSettings, "minimal", QUICK_MINIMAL, [])
    paths, out = _inputs(args, "minimal")
    loaded = _prepare(args, settings, paths, out)
    lm, formatter = load_lm(args)
    summary = minimal_job(
        lm,
        formatter,
        loaded["saes"],
        loaded["latents"],
        settings,
        out,
        data_dir=args.data_dir,
        device=args.device,
        cache_dir=args.cache_dir,
    )
    _print_result(out, "minimal", summary)
    return 0


def minimal_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, "minimal")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/analyses/minimal)")


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..analyses.suite import ANALYSES, RunInputs, analyze_job
    from ..report import write_report
    from ..runs import check_output_folder

    inputs = RunInputs.of(args.run)
    if args.model is None:
        args.model = inputs.model
    only = tuple(name for name in (args.only or ",".join(ANALYSES)).split(",") if name.strip())
    unknown = [name for name in only if name not in ANALYSES]
    if unknown or not only:
        raise UserError(
            f"--only {args.only!r}: unknown analysis {unknown[0] if unknown else '(none)'!r}; "
            f"choose from {', '.join(ANALYSES)}"
        )
    check_output_folder(Path(args.run) / "analyses", "analyses folder")
    check_output_folder(Path(args.run) / "report", "report folder")
    lm, formatter = load_lm(args)
    done = analyze_job(
        lm,
        formatter,
        args.run,
        only=only,
        quick=args.quick,
        data_dir=args.data_dir,
        device=args.device,
        cache_dir=args.cache_dir,
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
        "--only", default=None, help="comma-separated subset of the analyses (default: all)"
    )


def cmd_jailbreaks(args: argparse.Namespace) -> int:
    from ..analyses.jailbreaks import QUICK_JAILBREAKS, JailbreakSettings, jailbreaks_job
    from ..features import FeatureSet

    extra = [f"source={args.source}"] if args.source else []
    settings = _settings(args, JailbreakSettings, "jailbreaks", QUICK_JAILBREAKS, extra)
    paths, out = _inputs(args, f"jailbreaks-{Path(settings.source).stem}")
    loaded = _prepare(args, settings, paths, out)
    harm = FeatureSet.load(args.harm_latents) if args.harm_latents else None
    lm, formatter = load_lm(args)
    summary = jailbreaks_job(
        lm,
        formatter,
        loaded["saes"],
        loaded["latents"],
        loaded["direction"],
        settings,
        out,
        harm=harm,
        data_dir=args.data_dir,
        device=args.device,
        cache_dir=args.cache_dir,
    )
    _print_result(out, "jailbreaks", summary)
    return 0


def _common_arguments(parser: argparse.ArgumentParser, table: str) -> None:
    parser.add_argument(
        "--run", default=None, help="benchmark / run folder: its SAE set, direction and ours set"
    )
    parser.add_argument("--saes", default=None, help="SAE set folder")
    parser.add_argument("--latents", default=None, help="refusal latents (a latents.json)")
    parser.add_argument("--direction", metavar="RUN", default=None, help="refusal direction run")
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes)")
    add_settings_args(parser, table, f"REFUSAL_LENS_{table.upper()}_")


def jailbreaks_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, "jailbreaks")
    parser.add_argument(
        "--source",
        default=None,
        help="suffixes (default), gptfuzz, or a .csv/.json/.jsonl file with prompt and goal "
        "columns",
    )
    parser.add_argument(
        "--harm-latents", default=None, help="a second latent set to compare (harm latents)"
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default: RUN/analyses/jailbreaks-SOURCE)"
    )


def probes_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, "probes")
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        help="adversarial prompts: gptfuzz, suffixes or a .csv/.json/.jsonl file with a prompt "
        "column (repeatable; default gptfuzz and suffixes)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: RUN/analyses/probes)")
