"""Batched generation through refusal-lens vs plain `model.generate`, same prompts, one process.

Arms (each run `--repeats` times, interleaved so drift hits all arms alike):
  plain     model.generate on the same left-padded batches, no hooks
  hooks     refusal-lens generate with a read-only hook at every point ablation uses (no edit)
  ablation  refusal-lens generate with directional ablation at every layer
Prints tokens/s per arm and the ratios hooks/plain and ablation/plain (target <= 1.10).

    python bench/generation_overhead.py --n-prompts 32 --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from refusal_lens.data import builtin_prompts
from refusal_lens.generation import generate, greedy_config, length_sorted_batches
from refusal_lens.hooks import HookPoint, add_hooks
from refusal_lens.interventions import AblateDirection
from refusal_lens.models import ChatFormatter, LoadedModel, load_model


def plain_generate(
    lm: LoadedModel,
    formatter: ChatFormatter,
    texts: list[str],
    max_new_tokens: int,
    batch_size: int,
) -> int:
    config = greedy_config(lm, formatter, max_new_tokens)
    new_tokens = 0
    with torch.inference_mode():
        for indices in length_sorted_batches(texts, batch_size):
            batch = formatter.encode([texts[i] for i in indices]).to(lm.device)
            out = lm.model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                generation_config=config,
            )
            new_tokens += out[:, batch.input_ids.shape[1] :].numel()
    return new_tokens


def time_arms(arms: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per arm; one warm-up of the first arm, then the arms interleaved."""
    return {name: statistics.median(values) for name, values in timed_rounds(arms, repeats).items()}


def timed_rounds(arms: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per arm and round; one warm-up of the first arm, then the arms interleaved, so
    that round i's arms ran next to each other (a ratio within a round shares its noise)."""
    next(iter(arms.values()))()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, arm in arms.items():
            start = time.perf_counter()
            arm()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], arm: str, baseline: str) -> float:
    """The median over rounds of `arm / baseline` within each round."""
    return statistics.median(a / b for a, b in zip(times[arm], times[baseline], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    formatter = ChatFormatter(lm.tokenizer)
    prompts = builtin_prompts("harmful").texts() + builtin_prompts("harmless").texts()
    texts = prompts[: args.n_prompts]
    direction = torch.randn(lm.d_model)
    # a fixed number of new tokens per arm: no early stop, so every arm does the same work
    formatter.__dict__["stop_token_ids"] = []

    def read_only(_act: torch.Tensor, _point: HookPoint) -> None:
        return None

    noop_hooks = [
        (HookPoint(layer, kind), read_only)
        for layer in range(lm.n_layers)
        for kind in ("resid_pre", "attn_out", "mlp_out")
    ]

    def through_refusal_lens(interventions: list[AblateDirection]) -> None:
        generate(
            lm,
            formatter,
            texts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            progress=False,
            interventions=interventions,
        )

    def run_hooks() -> None:
        with add_hooks(lm.model, noop_hooks):
            through_refusal_lens([])

    arms = {
        "plain": lambda: plain_generate(lm, formatter, texts, args.max_new_tokens, args.batch_size),
        "hooks": run_hooks,
        "ablation": lambda: through_refusal_lens([AblateDirection(direction)]),
    }
    median = time_arms(arms, args.repeats)
    tokens = len(texts) * args.max_new_tokens
    result = {
        "model": lm.name,
        "dtype": str(lm.dtype),
        "device": str(lm.device),
        "n_prompts": len(texts),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "tokens_per_s": {name: round(tokens / t, 1) for name, t in median.items()},
        "ratio_hooks_vs_plain": round(median["hooks"] / median["plain"], 3),
        "ratio_ablation_vs_plain": round(median["ablation"] / median["plain"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
