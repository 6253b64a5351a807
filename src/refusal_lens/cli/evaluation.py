"""Commands of the evaluation suite: benchmark, run, results, report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from .args import Command, add_data_arg, add_model_args, executor_flags
from .common import add_settings_args, executor_for, load_lm, open_executor


def benchmark_settings(args: argparse.Namespace) -> Any:
    from ..benchmark import QUICK, BenchmarkConfig
    from ..config import load_settings

    overrides = list(args.set)
    for name in ("saes", "direction"):
        if getattr(args, name):
            overrides.append(f"{name}={getattr(args, name)}")
    if args.model is not None:  # --model given: it beats the file
        overrides.append(f"model={args.model}")
    return load_settings(
        BenchmarkConfig,
        file=args.config,
        table="benchmark",
        env_prefix="REFUSAL_LENS_BENCH_",
        overrides=overrides,
        defaults=QUICK if args.quick else None,
    )


def cmd_benchmark(args: argparse.Namespace) -> int:
    from ..benchmark import benchmark_job, usable_judges, validate_inputs
    from ..runs import check_output_folder

    config, notes = usable_judges(benchmark_settings(args), args.data_dir, args.cache_dir)
    args.model = config.model
    validate_inputs(config, args.data_dir)
    for note in notes:
        print(note)
    where = executor_for(args)
    check_output_folder(args.out)
    lm, formatter = load_lm(args)
    with open_executor(args, where, lm, formatter) as executor:
        summary = benchmark_job(
            lm,
            formatter,
            config,
            args.out,
            data_dir=args.data_dir,
            device=args.device,
            cache_dir=args.cache_dir,
            executor=executor,
        )
    print((Path(args.out) / "benchmark.md").read_text(), end="")
    print(
        f"wall time {summary['wall_seconds']:.0f} s; results: {Path(args.out) / 'results.sqlite'}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import write_report
    from ..runs import check_output_folder

    if args.agreement and not Path(args.agreement).is_file():
        raise UserError(
            f"--agreement {args.agreement} does not exist; pass the agreement.json that "
            "judge-agreement wrote"
        )
    if not (Path(args.run) / "benchmark.json").is_file():
        raise UserError(
            f"no benchmark.json in {args.run}; run `refusal-lens benchmark --out {args.run}` first"
        )
    check_output_folder(Path(args.run) / "report", "report folder")
    page, markdown = write_report(args.run, agreement=args.agreement)
    print(f"report: {page} (and {markdown})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import time

    from ..benchmark import benchmark_job, validate_inputs, without_data_dir
    from ..data import check_dataset_name
    from ..report import write_report
    from ..runs import check_output_folder

    started = time.perf_counter()
    config = benchmark_settings(args)
    # without a data directory the benchmarks are replaced by the built-in set (and a note
    # says so), but a name that is no dataset at all is a typo, not a fallback
    for name in (*config.datasets, config.harmless):
        check_dataset_name(name)
    config, notes = without_data_dir(config, args.data_dir, args.cache_dir)
    args.model = config.model
    out = Path(args.out or f"runs/{Path(config.model).name}{'-quick' if args.quick else ''}")
    validate_inputs(config, args.data_dir)
    where = executor_for(args)
    check_output_folder(out)
    for note in notes:
        print(note)
    lm, formatter = load_lm(args)
    with open_executor(args, where, lm, formatter) as executor:
        summary = benchmark_job(
            lm,
            formatter,
            config,
            out,
            data_dir=args.data_dir,
            device=args.device,
            cache_dir=args.cache_dir,
            executor=executor,
        )
    page, _ = write_report(out)
    print((out / "benchmark.md").read_text(), end="")
    print(
        f"pipeline done in {time.perf_counter() - started:.0f} s "
        f"(benchmark {summary['wall_seconds']:.0f} s); report: {page}"
    )
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    import csv
    import io
    import sqlite3

    from ..evaluation.store import ResultStore
    from ..runs import check_output_file

    path = Path(args.store)
    if path.is_dir():
        path = path / "results.sqlite"
    if not path.is_file():
        raise UserError(f"no results store at {path}; pass a results.sqlite or a run folder")
    filters = {}
    for item in args.where:
        column, sep, value = item.partition("=")
        if not sep or not column.strip():
            raise UserError(f"--where {item!r} is not COLUMN=VALUE")
        filters[column] = value
    if args.out:
        check_output_file(args.out, "--out", (path,))
    # read-only: a file that is not a results store is an error, never given a schema
    with ResultStore(path, read_only=True) as store:
        try:
            rows = store.query(args.table, filters)
        except sqlite3.Error as error:
            raise UserError(f"{path} could not be read as a results store ({error})") from None
    if args.format == "json":
        text = json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    elif args.format == "csv" or args.table != "summary":
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        text = buffer.getvalue()
    else:
        text = _summary_table(rows)
    if args.out:
        Path(args.out).write_text(text)
        print(f"{len(rows)} rows -> {args.out}")
    else:
        print(text, end="")
    return 0


def _summary_table(rows: list[dict[str, Any]]) -> str:
    def rate(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"{'condition':<32} {'dataset':<18} {'judge':<12} {'n':>5} refused complied"]
    for row in rows:
        lines.append(
            f"{row['condition'][:32]:<32} {row['dataset'][:18]:<18} {row['judge_name']:<12} "
            f"{row['n']:>5} {rate(row['refusal_rate']):>7} {rate(row['complied_rate']):>8}"
        )
    return "\n".join(lines) + "\n"


EXAMPLES = {
    "results": """
        refusal-lens results runs/bench                       # refusal/complied rates per condition
        refusal-lens results runs/bench --table verdicts --where judge_name=substring --format csv
        refusal-lens results runs/bench --table measurements --where metric=acc --format json
    """,
    "benchmark": """
        refusal-lens benchmark --quick --data-dir DATA --out runs/bench-quick
        refusal-lens benchmark --config bench.toml --data-dir DATA --out runs/bench
        refusal-lens benchmark --saes SAES --direction runs/qwen05 --set limit=100 \\
            --set protocols=heldout,transductive --set judges=substring,compliance --out runs/b
    """,
    "report": """
        refusal-lens report runs/bench                 # runs/bench/report/report.html
        refusal-lens report runs/bench --agreement runs/judges/agreement.json
    """,
    "run": """
        refusal-lens run --quick                              # the embedded default, minutes
        refusal-lens run --data-dir DATA                      # the full benchmark
        refusal-lens run --model qwen2.5-coder-1.5b-instruct --data-dir DATA --out runs/q15
    """,
}


def register(command: Command) -> None:
    """This group's subcommands, flags and examples (`parser.build_parser` calls it)."""
    results = command(
        "results",
        cmd_results,
        "Query a results store (completions, verdicts, measurements, or a per-condition "
        "summary) as a table, CSV or JSON.",
    )
    results.add_argument("store", help="results.sqlite, or a run folder holding one")
    results.add_argument(
        "--table",
        default="summary",
        choices=("summary", "completions", "verdicts", "measurements"),
    )
    results.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="keep rows whose column equals the value (repeatable)",
    )
    results.add_argument("--format", default="table", choices=("table", "csv", "json"))
    results.add_argument("--out", default=None, help="write to this file instead of stdout")

    bench = command(
        "benchmark",
        cmd_benchmark,
        "The paper's benchmark: refusal and jailbreak rates of every method with every judge, "
        "side effects, capabilities (lm-eval) and refusal induction, with intervals and paired "
        "tests; resumable through RUN/results.sqlite.",
    )
    add_model_args(bench)
    add_data_arg(bench)
    bench.add_argument("--saes", default=None, help="SAE set folder (default: cached quick set)")
    bench.add_argument("--direction", metavar="RUN", default=None, help="refusal direction run")
    bench.add_argument("--quick", action="store_true", help="small sizes (CI, the main job)")
    add_settings_args(
        bench,
        "benchmark",
        "REFUSAL_LENS_BENCH_",
        "--set limit=100 --set capabilities.tasks=arc_challenge",
    )
    bench.add_argument("--out", required=True, help="run folder (reused when rerun)")
    executor_flags(bench)

    report = command(
        "report",
        cmd_report,
        "Write RUN/report/report.html (self-contained, figures embedded) and report.md from a "
        "benchmark run folder.",
    )
    report.add_argument("run", help="benchmark run folder")
    report.add_argument(
        "--agreement",
        default=None,
        help="agreement.json of a judge-agreement run (default: RUN/judges/agreement.json)",
    )

    pipeline = command(
        "run",
        cmd_run,
        "The whole pipeline on one model: refusal direction -> SAEs (the cached quick set, "
        "trained on first use) -> refusal latents -> benchmark -> report, each stage reusing "
        "what the run folder already has.",
    )
    add_model_args(pipeline)
    add_data_arg(pipeline)
    pipeline.add_argument("--quick", action="store_true", help="small sizes (minutes)")
    pipeline.add_argument("--config", default=None, help="TOML file (a [benchmark] table)")
    pipeline.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    pipeline.add_argument("--saes", default=None, help="SAE set folder (default: cached quick set)")
    pipeline.add_argument("--direction", metavar="RUN", default=None)
    pipeline.add_argument("--out", default=None, help="run folder (default: runs/MODEL[-quick])")
    executor_flags(pipeline)
