"""Kill a benchmark with SIGKILL once it has stored some completions, rerun it, and report
what the store held before and after (counts, integrity, completions recomputed or kept).

    python bench/benchmark_resume.py --out runs/kill --kill-at 40 -- --quick \\
        --data-dir ../shared/datasets --saes SAES --direction RUN

Everything after `--` goes to `refusal-lens benchmark` (without --out).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path


def snapshot(db: Path) -> dict:
    with sqlite3.connect(db) as conn:
        created = dict(
            conn.execute(
                "SELECT model || saes || intervention || generation || prompt_id, created "
                "FROM completions"
            )
        )
        return {
            "created": created,
            "completions": len(created),
            "verdicts": conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0],
            "measurements": conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0],
            "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--kill-at", type=int, default=40, help="stored completions")
    parser.add_argument("benchmark_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    extra = [a for a in args.benchmark_args if a != "--"]
    command = [
        sys.executable,
        "-m",
        "refusal_lens.cli",
        "benchmark",
        *extra,
        "--out",
        str(args.out),
    ]
    db = args.out / "results.sqlite"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(str(args.out) + ".killed.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if db.exists() and snapshot(db)["completions"] >= args.kill_at:
                break
            time.sleep(1)
        if proc.poll() is not None:
            raise SystemExit(
                f"the benchmark exited ({proc.returncode}) before storing {args.kill_at} "
                f"completions; see {args.out}.killed.log"
            )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_after = time.perf_counter() - started
    before = snapshot(db)
    started = time.perf_counter()
    with open(str(args.out) + ".resumed.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    resumed_after = time.perf_counter() - started
    after = snapshot(db)
    kept = sum(after["created"].get(key) == t for key, t in before["created"].items())
    report = {
        "killed_after_s": round(killed_after, 1),
        "before": {k: v for k, v in before.items() if k != "created"},
        "resumed_exit_code": code,
        "resumed_s": round(resumed_after, 1),
        "after": {k: v for k, v in after.items() if k != "created"},
        "completions_kept_not_recomputed": f"{kept}/{before['completions']}",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
