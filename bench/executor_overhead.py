"""The quick benchmark through each executor: local, then Ray with 1 and 2 workers, on the
same model and settings, each into a new folder with nothing shared (every completion, verdict
and measurement computed again). Prints wall time, generated tokens per second and each
executor's time in the stages it spreads (the harmful arms and side effects) as a ratio to
local (Ray's overhead at 1 worker: target under 1.10x). Wall time includes what runs on the
driver (the first config also finds the direction if it is not cached) and Ray's start.

    python bench/executor_overhead.py --data-dir DATA [--out /tmp/executors]

Uses the cached direction of the model (found by an earlier `run --quick`) and the arms that
need no SAE (base and direction ablation), so that every second is generation, judging and
teacher forcing, which are what the executor spreads. The 1-worker Ray pool gets the threads
the local run has; the 2-worker pool splits them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = [
    "methods=base,direction",
    "capabilities.tasks=",
    "induce_values=",
    "agreement_limit=0",
    "cards=false",
    "share_results=false",
]


def tokens(db: Path, tokenizer: object) -> int:
    with sqlite3.connect(db) as conn:
        rows = [r[0] for r in conn.execute("SELECT completion FROM completions")]
    return sum(len(tokenizer(text)["input_ids"]) for text in rows)  # type: ignore[operator]


def executor_arms(threads: int) -> dict[str, list[str]]:
    """Label -> flags: local, then Ray with one worker of every thread and with two workers
    that split them."""
    whole, half = str(threads), str(max(1, threads // 2))
    return {
        "local": ["--executor", "local"],
        "ray, 1 worker": ["--executor", "ray", "--workers", "1", "--worker-threads", whole],
        "ray, 2 workers": ["--executor", "ray", "--workers", "2", "--worker-threads", half],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="/tmp/refusal-lens-executors")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--report", action="store_true", help="only print OUT's finished runs")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.report:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    arms = executor_arms(args.threads)
    rows = {}
    walls_file = out / "walls.json"
    walls = json.loads(walls_file.read_text()) if args.report else {}
    for label, flags in arms.items():
        folder = out / label.replace(", ", "-").replace(" ", "")
        if args.report:
            summary = json.loads((folder / "benchmark.json").read_text())
            rows[label] = (walls[label], summary, folder)
            continue
        command = [
            sys.executable, "-m", "refusal_lens.cli", "benchmark", "--quick",
            "--data-dir", args.data_dir, "--out", str(folder), *flags,
        ]  # fmt: skip
        for setting in SETTINGS:
            command += ["--set", setting]
        started = time.perf_counter()
        with (out / "log.txt").open("a") as log:
            subprocess.run(command, check=True, stdout=log, stderr=log)
        wall = time.perf_counter() - started
        walls[label] = wall
        walls_file.write_text(json.dumps(walls))
        rows[label] = (wall, json.loads((folder / "benchmark.json").read_text()), folder)
        print(f"{label}: {wall:.0f} s", flush=True)
    from refusal_lens.models import load_model

    summary = rows["local"][1]
    tokenizer = load_model(summary["model"]["name"], device="cpu").tokenizer

    def spread(summary: dict) -> float:  # the stages whose work the executor runs
        stages = summary["stage_seconds"]
        return sum(v for k, v in stages.items() if k.startswith(("harmful", "side effects")))

    base = spread(rows["local"][1])
    print(f"{'executor':<16}{'wall (s)':>10}{'spread (s)':>11}{'tokens/s':>10}{'ratio':>8}  stages")
    for label, (wall, summary, folder) in rows.items():
        stages = summary["stage_seconds"]
        seconds = spread(summary)
        count = tokens(folder / "results.sqlite", tokenizer)
        print(
            f"{label:<16}{wall:>10.0f}{seconds:>11.0f}{count / seconds:>10.1f}"
            f"{seconds / base:>8.3f}  "
            + ", ".join(f"{k.split(' (')[0]} {v:.0f}" for k, v in stages.items())
        )
        workers = summary.get("executor", {}).get("workers", {}).get("generate", {})
        for name, w in workers.items():
            busy = w["busy_seconds"]
            print(f"    {name}: {w['items']} items, {w['units']} prompts, {busy} s busy")


if __name__ == "__main__":
    main()
