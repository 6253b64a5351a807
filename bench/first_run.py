"""A new user's first `refusal-lens run --quick`, then a rerun into a new folder, per stage.

    python bench/first_run.py --data-dir DATA [--workdir /tmp/first-run]

Clones this repository's HEAD into WORKDIR, makes a new venv, installs it as the README does,
and runs `run --quick` with an empty user cache (so the learned judge, the model conversion,
the direction and the quick SAEs are all made), then the same command into a new folder (all
of them cached). Prints the install time and each stage's seconds from `benchmark.json`
(`judges` includes the judge's first training), the totals, and each total as a fraction of
its target (first run 20 min with the install, rerun 5 min). Takes as long as it measures:
about an hour on 2 CPU cores.
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

TARGETS = {"first": 20 * 60, "rerun": 5 * 60}


def timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as handle:
        subprocess.run(command, cwd=cwd, env=env, check=True, stdout=handle, stderr=handle)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the benchmark data folder")
    parser.add_argument("--workdir", default="/tmp/refusal-lens-first-run")
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
    pip = [str(venv / "bin" / "pip"), "install", "-q", "-e", ".[qwen05,judges,capabilities]"]
    install += timed(pip, clone, env, log)
    cli = str(venv / "bin" / "refusal-lens")
    rows: dict[str, dict[str, float]] = {}
    walls: dict[str, float] = {}
    for name in ("first", "rerun"):
        out = f"runs/{name}"
        command = [cli, "run", "--quick", "--data-dir", data, "--out", out]
        walls[name] = timed(command, clone, env, log)
        summary = json.loads((clone / out / "benchmark.json").read_text())
        rows[name] = summary["stage_seconds"]
    walls["first"] += install
    stages = list(dict.fromkeys([*rows["first"], *rows["rerun"]]))
    print(f"install: {install:.0f} s (venv + pip install, as the README)")
    print(f"{'stage':<16}{'first (s)':>12}{'rerun (s)':>12}")
    for stage in stages:
        first, rerun = rows["first"].get(stage, 0.0), rows["rerun"].get(stage, 0.0)
        print(f"{stage:<16}{first:>12.0f}{rerun:>12.0f}")
    for name, wall in walls.items():
        label = "first run, install included" if name == "first" else "rerun into a new folder"
        print(
            f"{label}: {wall:.0f} s ({wall / 60:.1f} min); target {TARGETS[name] / 60:.0f} min: "
            f"{wall / TARGETS[name]:.2f}x"
        )


if __name__ == "__main__":
    main()
