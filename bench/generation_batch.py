"""Greedy generation throughput by batch size: the number behind the benchmark's default
`batch_size` (generated tokens per second, same prompts, same length, one process).

    python bench/generation_batch.py --data-dir ../shared/datasets --batch-sizes 8,16,32

Each batch size generates `--max-new-tokens` for the first B Alpaca prompts (harmless, so
most completions run to the full length); prints tokens/s and the ratio to the first size.
"""

from __future__ import annotations

import argparse
import time

import torch

from refusal_lens.data import load_prompts
from refusal_lens.generation import generate
from refusal_lens.models import ChatFormatter, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    lm = load_model(args.model, device="cpu")
    formatter = ChatFormatter(lm.tokenizer)
    prompts = load_prompts("alpaca", data_dir=args.data_dir, limit=max(sizes)).texts()
    generate(lm, formatter, prompts[:2], max_new_tokens=4, progress=False)  # warm-up
    first = None
    for size in sizes:
        started = time.perf_counter()
        completions = generate(
            lm,
            formatter,
            prompts[:size],
            max_new_tokens=args.max_new_tokens,
            batch_size=size,
            progress=False,
        )
        seconds = time.perf_counter() - started
        tokens = sum(len(lm.tokenizer(c)["input_ids"]) for c in completions)
        rate = tokens / seconds
        first = first or rate
        print(
            f"batch {size:>3}: {tokens:>5} tokens in {seconds:6.1f} s = {rate:6.1f} tokens/s "
            f"({rate / first:.2f}x batch {sizes[0]})",
            flush=True,
        )


if __name__ == "__main__":
    main()
