"""`train-saes` through each executor: local, then Ray with 1 and 2 workers, the same recipe
into new folders. Activation collection (4 batches per work item) and SAE training (one layer
group per worker) are what the executor spreads. Prints each arm's collection and training
seconds, their ratio to local (Ray's overhead at 1 worker), each arm's final FVU, and how far
its activation cache and SAEs are from local's (relative Frobenius distances).

    python bench/train_saes_executors.py --data-dir DATA [--tokens 400k --collect-tokens 130k]

The 1-worker Ray pool gets the threads the local run has; the 2-worker pool splits them.
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

import torch

from executor_overhead import executor_arms
from refusal_lens.saes import SAESet
from refusal_lens.saes.activations import ActivationCache


def distance(a: Path, b: Path) -> dict[str, float]:
    """How far arm `b` is from arm `a`: the relative Frobenius distance of the cached
    activations (the worst shard and point), the share of activation values that differ at all,
    and the relative distance of the SAE weights (the worst SAE and parameter)."""
    x, y = ActivationCache.open(a / "activations"), ActivationCache.open(b / "activations")
    if x.shards != y.shards:
        return {"activations_relative": float("inf")}
    worst, differ, total = 0.0, 0, 0
    for number in range(len(x.shards)):
        p, q = x.load_shard(number), y.load_shard(number)
        for point in x.points:
            u, v = p[point].float(), q[point].float()
            worst = max(worst, float((u - v).norm() / u.norm()))
            differ += int((u != v).sum())
            total += u.numel()
    s, t = SAESet.load(a), SAESet.load(b)
    weights = 0.0
    for point, sae in s:
        other = t[point].state_dict()
        for name, tensor in sae.state_dict().items():
            scale = float(tensor.norm()) or 1.0
            weights = max(weights, float((tensor - other[name]).norm()) / scale)
    return {
        "activations_relative": worst,
        "activation_values_differing": differ / total,
        "weights_relative": weights,
    }


def final_fvu(folder: Path) -> float:
    """The mean over layers of each SAE's FVU at its last training step."""
    stats = SAESet.load(folder).info["final_stats"]
    return round(sum(s["fvu"] for s in stats.values()) / len(stats), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="/tmp/refusal-lens-train-executors")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--tokens", default="400k", help="training tokens (the quick preset's)")
    parser.add_argument("--collect-tokens", default="130k", help="(the quick preset's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    arms = executor_arms(args.threads)
    rows = {}
    for name, flags in arms.items():
        folder = out / name.replace(", ", "-").replace(" ", "")
        command = [
            sys.executable, "-m", "refusal_lens.cli", "train-saes", "--model", args.model,
            "--data-dir", args.data_dir, "--tokens", args.tokens,
            "--collect-tokens", args.collect_tokens, "--out", str(folder), *flags,
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        seconds = SAESet.load(folder).info["seconds"]
        rows[name] = {"folder": folder, "wall": wall, **seconds}
        print(
            f"{name}: collect {seconds['collect']:.0f}s, train {seconds['train']:.0f}s", flush=True
        )
    local = rows["local"]
    report = {
        "model": args.model,
        "tokens": args.tokens,
        "collect_tokens": args.collect_tokens,
        "threads": args.threads,
        "torch": torch.__version__,
        "arms": {
            name: {
                "wall_s": round(row["wall"], 1),
                "collect_s": round(row["collect"], 1),
                "train_s": round(row["train"], 1),
                "collect_ratio": round(row["collect"] / local["collect"], 3),
                "train_ratio": round(row["train"] / local["train"], 3),
                "final_fvu": final_fvu(row["folder"]),
                "vs_local": distance(local["folder"], row["folder"]),
            }
            for name, row in rows.items()
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
