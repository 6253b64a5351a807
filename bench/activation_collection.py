"""Activation collection (one forward truncated after the highest SAE layer) vs a plain full
forward of the model on the same batches. Each arm runs in its own child process so its peak
RAM is its own; the arms alternate `--repeats` times.

Prints real (non-padding) tokens/s per arm, the speed-up truncated/full (target >= 1.5) and the
peak RSS of each arm.

    python bench/activation_collection.py --layers 11,13,15 --n-seqs 32 --data-dir DATA
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from refusal_lens.hooks import HookPoint
from refusal_lens.models import load_model
from refusal_lens.saes.activations import truncated_forward
from refusal_lens.saes.mixture import DEFAULT_MIXTURE, Tokenizer, pad_batch, sample_sequences


def run_arm(args: argparse.Namespace) -> dict[str, float]:
    lm = load_model(args.model, dtype=args.dtype)
    tok = Tokenizer(lm.tokenizer, context=args.context)
    seqs = sample_sequences(
        DEFAULT_MIXTURE, tok, args.n_seqs * args.context * 4, args.data_dir, "train", 0
    )
    seqs = sorted(seqs, key=lambda s: -len(s.input_ids))[: args.n_seqs]
    points = [HookPoint(int(layer), "resid_post") for layer in args.layers.split(",")]
    pad = lm.tokenizer.pad_token_id or 0
    batches = [
        pad_batch(seqs[i : i + args.batch_size], pad) for i in range(0, len(seqs), args.batch_size)
    ]
    real = sum(int(mask.sum()) for _, mask, _ in batches)

    def once() -> None:
        for ids, mask, _ in batches:
            if args.arm == "truncated":
                truncated_forward(lm, points, ids, mask)
            else:
                with torch.inference_mode():
                    lm.model(
                        input_ids=ids.to(lm.device),
                        attention_mask=mask.to(lm.device),
                        use_cache=False,
                    )

    once()  # warm-up
    start = time.perf_counter()
    once()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_s": real / seconds, "peak_rss_mb": peak_mb, "tokens": real}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--layers", default="11,13,15")
    parser.add_argument("--n-seqs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arm", choices=("truncated", "full"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args)))
        return
    results: dict[str, list[dict[str, float]]] = {"full": [], "truncated": []}
    for _ in range(args.repeats):
        for arm in results:
            child = [sys.executable, __file__, *sys.argv[1:], "--arm", arm]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            results[arm].append(json.loads(out.strip().splitlines()[-1]))
    speed = {
        arm: statistics.median(r["tokens_per_s"] for r in runs) for arm, runs in results.items()
    }
    summary = {
        "model": args.model,
        "layers": args.layers,
        "tokens_per_arm_run": results["full"][0]["tokens"],
        "tokens_per_s": {arm: round(v, 1) for arm, v in speed.items()},
        "speedup_truncated_vs_full": round(speed["truncated"] / speed["full"], 2),
        "peak_rss_mb": {
            arm: round(max(r["peak_rss_mb"] for r in runs)) for arm, runs in results.items()
        },
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
