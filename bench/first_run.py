"""A new user's first `refusal-lens run --quick`, then a rerun into a new folder, per stage.

    python bench/first_run.py --data-dir DATA [--workdir /tmp/first-run]
    python bench/first_run.py --data-dir DATA --model qwen2.5-coder-1.5b-instruct \
        --extra qwen15 --no-rerun --analyze

Clones this repository's HEAD into WORKDIR, makes a new venv, installs it as the README does,
and runs `run --quick` with an empty user cache (so the learned judge, the model conversion,
the direction and the quick SAEs are all made), then the same command into a new folder (all
of them cached). Prints the install time and each stage's seconds from `benchmark.json`
(`judges` includes the judge's first training), the totals, and each total as a fraction of
its target (first run 20 min with the install, rerun 5 min). Takes as long as it measures:
about an hour on 2 CPU cores.

With `--model` the run is of another model (installed with `--extra`); `--analyze` then
times `analyze --quick` on the first run, one analysis at a time in the suite's order, and
prints the sitting (install, run and analyses) against its target of 2.5 hours.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGETS = {"first": 20 * 60, "rerun": 5 * 60, "sitting": 150 * 60}
ANALYSES = ("categories", "circuits", "jailbreaks", "probes", "minimal")


def timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as handle:
        subprocess.run(command, cwd=cwd, env=env, check=True, stdout=handle, stderr=handle)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the benchmark data folder")
    parser.add_argument("--workdir", default="/tmp/refusal-lens-first-run")
    parser.add_argument("--model", help="a model other than the embedded default")
    parser.add_argument("--extra", action="append", default=[], help="another extra to install")
    parser.add_argument("--no-rerun", action="store_true", help="skip the rerun")
    parser.add_argument("--analyze", action="store_true", help="then time analyze --quick")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    data = str(Path(args.data_dir).resolve())
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    clone, log = work / "clone", work / "log.txt"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    env = {**os.environ, "REFUSAL_LENS_CACHE": str(work / "cache")}
    env.pop("REFUSAL_LENS_DATA", None)
    venv = clone / ".venv"
    install = timed([sys.executable, "-m", "venv", str(venv)], clone, env, log)
    extras = ",".join(["qwen05", *args.extra, "judges", "capabilities"])
    pip = [str(venv / "bin" / "pip"), "install", "-q", "-e", f".[{extras}]"]
    install += timed(pip, clone, env, log)
    cli = str(venv / "bin" / "refusal-lens")
    rows: dict[str, dict[str, float]] = {}
    walls: dict[str, float] = {}
    model = ["--model", args.model] if args.model else []
    for name in ("first",) if args.no_rerun else ("first", "rerun"):
        out = f"runs/{name}"
        command = [cli, "run", "--quick", *model, "--data-dir", data, "--out", out]
        walls[name] = timed(command, clone, env, log)
        summary = json.loads((clone / out / "benchmark.json").read_text())
        rows[name] = summary["stage_seconds"]
        print(f"{name}: {walls[name]:.0f} s", flush=True)
    walls["first"] += install
    analyses: dict[str, float] = {}
    if args.analyze:
        for analysis in ANALYSES:
            command = [cli, "analyze", "runs/first", "--quick", "--only", analysis]
            analyses[analysis] = timed([*command, "--data-dir", data], clone, env, log)
            print(f"analyze {analysis}: {analyses[analysis]:.0f} s", flush=True)
        walls["sitting"] = walls["first"] + sum(analyses.values())
    rows.setdefault("rerun", {})
    stages = list(dict.fromkeys([*rows["first"], *rows["rerun"]]))
    print(f"install: {install:.0f} s (venv + pip install, as the README)")
    print(f"{'stage':<16}{'first (s)':>12}{'rerun (s)':>12}")
    for stage in stages:
        first, rerun = rows["first"].get(stage, 0.0), rows["rerun"].get(stage, 0.0)
        print(f"{stage:<16}{first:>12.0f}{rerun:>12.0f}")
    for analysis, seconds in analyses.items():
        print(f"analyze --quick --only {analysis}: {seconds:.0f} s")
    labels = {
        "first": "first run, install included",
        "rerun": "rerun into a new folder",
        "sitting": "install, first run and analyze --quick",
    }
    for name, wall in walls.items():
        label = labels[name]
        print(
            f"{label}: {wall:.0f} s ({wall / 60:.1f} min); target {TARGETS[name] / 60:.0f} min: "
            f"{wall / TARGETS[name]:.2f}x"
        )


if __name__ == "__main__":
    main()
