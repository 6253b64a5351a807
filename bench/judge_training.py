"""Training throughput of the learned judge: float32 against bfloat16 autocast, and shorter inputs.

Each arm trains a fresh copy of the backbone for a few optimizer steps on the same
length-grouped GPTFuzz batches and prints labelled rows per second; the ratio is against
the float32 arm at 256 tokens, run first in the same process. Accuracy is not measured here
(that needs a whole training): `refusal-lens judge-agreement` does it for a trained judge.

    python bench/judge_training.py --data-dir DATA
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from refusal_lens.judges.learned import (
    LearnedJudgeSettings,
    _backbone,
    _grouped_by_length,
    _load_classifier,
    train_step,
    training_data,
)


def rows_per_second(
    settings: LearnedJudgeSettings,
    precision: str,
    data_dir: str,
    steps: int,
    warmup: int,
    **backbone: object,
) -> float:
    data = training_data(settings, data_dir)
    order = _grouped_by_length(data.rows, settings.batch_size, seed=0)
    torch.manual_seed(0)
    tokenizer, model = _load_classifier(_backbone(settings), num_labels=2, **backbone)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")
    rows = 0
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        start = step * settings.batch_size
        batch = [data.rows[i] for i in order[start : start + settings.batch_size]]
        train_step(model, tokenizer, optimizer, batch, settings, autocast)
        if step >= warmup:
            rows += len(batch)
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--steps", type=int, default=24, help="timed optimizer steps per arm")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    arms: list[tuple[str, str, int, dict[str, object]]] = [
        ("float32, 256 tokens", "float32", 256, {}),
        ("bfloat16, 256 tokens", "bfloat16", 256, {}),
        ("bfloat16, 128 tokens", "bfloat16", 128, {}),
        ("bfloat16, 128 tokens, no dropout", "bfloat16", 128, no_dropout),
        (
            "bfloat16, 128 tokens, no dropout, sdpa",
            "bfloat16",
            128,
            {**no_dropout, "attn_implementation": "sdpa"},
        ),
    ]
    result: dict[str, dict[str, float]] = {}
    for name, precision, tokens, backbone in arms:
        settings = LearnedJudgeSettings(max_tokens=tokens)
        speed = rows_per_second(
            settings, precision, args.data_dir, args.steps, args.warmup, **backbone
        )
        result[name] = {"rows_per_s": round(speed, 2)}
    base = next(iter(result.values()))["rows_per_s"]
    for values in result.values():
        values["speed_vs_float32_256"] = round(values["rows_per_s"] / base, 2)
    print(json.dumps({"threads": torch.get_num_threads(), "arms": result}, indent=2))


if __name__ == "__main__":
    main()
