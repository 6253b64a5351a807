"""float32 vs bfloat16 on this machine: prefill and generation throughput, one process.

Chooses the `--dtype auto` default (README). Prints tokens/s and the bf16/fp32 time ratio.

    python bench/dtype_speed.py --model qwen2.5-coder-0.5b-instruct
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from refusal_lens.data import builtin_prompts
from refusal_lens.generation import generate
from refusal_lens.models import ChatFormatter, load_model
from refusal_lens.scoring import last_position_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = builtin_prompts("harmless").texts()[: args.n_prompts]
    result: dict[str, dict[str, float]] = {}
    for dtype in ("float32", "bfloat16"):
        lm = load_model(args.model, dtype=dtype, device=args.device)
        formatter = ChatFormatter(lm.tokenizer)
        formatter.__dict__["stop_token_ids"] = []  # fixed-length generation
        n_prompt_tokens = int(formatter.encode(texts).attention_mask.sum())
        last_position_logits(lm, formatter, texts[:16])  # warm-up
        prefill, decode = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            last_position_logits(lm, formatter, texts, batch_size=16)
            prefill.append(time.perf_counter() - start)
            start = time.perf_counter()
            generate(
                lm,
                formatter,
                texts,
                max_new_tokens=args.max_new_tokens,
                batch_size=16,
                progress=False,
            )
            decode.append(time.perf_counter() - start)
        result[dtype] = {
            "prefill_tok_s": round(n_prompt_tokens / statistics.median(prefill), 1),
            "generate_tok_s": round(
                len(texts) * args.max_new_tokens / statistics.median(decode), 1
            ),
        }
        del lm
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    result["bf16_time_over_fp32_time"] = {
        stage: round(result["float32"][f"{stage}_tok_s"] / result["bfloat16"][f"{stage}_tok_s"], 3)
        for stage in ("prefill", "generate")
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
