"""Capability numbers through lm-eval (the benchmark's engine, our intervention active inside
it) against our own teacher-forced scorer, item by item, for the base model and under
direction ablation: same items, same prompt format, same scoring (acc, acc_norm).

    python bench/capability_crosscheck.py --data-dir ../shared/datasets --direction RUN --n 100

Prints per condition: both accuracies, how many items' predictions agree, the largest
log-likelihood difference, and both wall times.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from refusal_lens.direction import Direction
from refusal_lens.evaluation.capabilities import (
    CapabilityRunner,
    CapabilitySettings,
    direct_multiple_choice,
)
from refusal_lens.evaluation.store import Condition, ResultStore
from refusal_lens.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--direction", required=True, help="direction run folder")
    parser.add_argument("--n", type=int, default=100, help="ARC-Challenge items")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = load_model(args.model, device="cpu")
    direction = Direction.load(args.direction)
    direction.check_model(lm)
    path = Path(args.data_dir) / "capability" / "arc_challenge" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][: args.n]
    contexts = [f"Question: {r['question']}\nAnswer:" for r in rows]
    choices = [r["choices"]["text"] for r in rows]
    gold = [r["choices"]["label"].index(r["answerKey"]) for r in rows]
    settings = CapabilitySettings(
        tasks=("arc_challenge",), limit=args.n, batch_size=args.batch_size, chunk=args.n
    )
    report = {}
    with tempfile.TemporaryDirectory() as tmp, ResultStore(Path(tmp) / "r.sqlite") as store:
        runner = CapabilityRunner(lm, store, settings, args.data_dir, Path(tmp))
        for label, edits in (("base", []), ("direction ablation", [direction.ablation()])):
            condition = Condition(
                lm.weights_sha256, store.intervention_id([e.to_dict() for e in edits]), "", label
            )
            start = time.perf_counter()
            runner.evaluate(condition, edits)
            lm_eval_s = time.perf_counter() - start
            start = time.perf_counter()
            direct = direct_multiple_choice(
                lm, contexts, choices, interventions=edits, batch_size=args.batch_size
            )
            direct_s = time.perf_counter() - start
            stored = {
                r["item"]: json.loads(r["detail"])
                for r in store.query(
                    "measurements", {"intervention": condition.intervention, "metric": "acc"}
                )
            }
            acc = store.measurements(condition, runner.task_key("arc_challenge"), "acc")
            norm = store.measurements(condition, runner.task_key("arc_challenge"), "acc_norm")
            n = len(rows)
            gap = max(
                abs(a - b)
                for i in range(n)
                for a, b in zip(
                    stored[str(i)]["loglikelihoods"], direct[i]["loglikelihoods"], strict=True
                )
            )
            report[label] = {
                "n": n,
                "lm_eval": {
                    "acc": sum(acc[str(i)] for i in range(n)) / n,
                    "acc_norm": sum(norm[str(i)] for i in range(n)) / n,
                    "seconds": round(lm_eval_s, 1),
                },
                "direct": {
                    "acc": sum(d["pred"] == g for d, g in zip(direct, gold, strict=True)) / n,
                    "acc_norm": sum(d["pred_norm"] == g for d, g in zip(direct, gold, strict=True))
                    / n,
                    "seconds": round(direct_s, 1),
                },
                "items_agreeing_acc": sum(
                    (acc[str(i)] == 1.0) == (direct[i]["pred"] == gold[i]) for i in range(n)
                ),
                "items_agreeing_acc_norm": sum(
                    (norm[str(i)] == 1.0) == (direct[i]["pred_norm"] == gold[i]) for i in range(n)
                ),
                "max_loglikelihood_difference": gap,
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
