"""Gate scores on the defence study's test prompts: batches by length against batches in the
order given.

The `defend` study scores every validation and test prompt under every gate before it gates
anything (one forward per batch, up to the deepest gate's layer). Its pools mix one-line
requests with jailbreak templates of a thousand tokens; a batch pads every row to its longest.
Arms, same prompts (the quick study's test pools: attacks, plain requests, Alpaca and XSTest
safe prompts), same process, interleaved `--repeats` times:
  given   batches in the pools' own order (how the study batched before)
  sorted  batches of similar length, longest first (`defence.gates`, now)
Prints seconds per arm, the padded token count of each, the ratio given/sorted and the
largest score difference (padding changes the last bits only).

    python bench/gate_scores.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import argparse
import json

import torch

from generation_overhead import paired_ratio, timed_rounds
from refusal_lens.analyses.defend import QUICK, DefendSettings, build_pools
from refusal_lens.config import load_settings
from refusal_lens.defence.gates import gates_prompt_scores
from refusal_lens.generation import length_sorted_batches
from refusal_lens.interventions import DirectionGate
from refusal_lens.models import ChatFormatter, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--layer", type=int, default=18, help="the gate's layer (the forward's end)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    settings = load_settings(
        DefendSettings, overrides=[f"{k}={v}" for k, v in QUICK.items() if "." not in k]
    )
    pools = build_pools(settings, {}, args.data_dir)
    texts = [
        *(a.prompt for a in pools.test_attacks),
        *pools.test_goals.texts(),
        *pools.harmless_test.texts(),
        *pools.safe_test.texts(),
    ]
    lm = load_model(args.model)
    formatter = ChatFormatter(lm.tokenizer)
    vector = torch.randn(lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    gate = DirectionGate(vector, args.layer, 0.0, pool="mean")
    size = args.batch_size
    outputs: dict[str, torch.Tensor] = {}

    def given() -> None:
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        scores = [gates_prompt_scores(lm, formatter, [gate], c, batch_size=size)[0] for c in chunks]
        outputs["given"] = torch.cat(scores)

    def by_length() -> None:
        outputs["sorted"] = gates_prompt_scores(lm, formatter, [gate], texts, batch_size=size)[0]

    times = timed_rounds({"given": given, "sorted": by_length}, args.repeats)
    lengths = [int(formatter.encode([t]).attention_mask.sum()) for t in texts]

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    in_order = [list(range(i, min(i + size, len(texts)))) for i in range(0, len(texts), size)]
    print(
        json.dumps(
            {
                "prompts": len(texts),
                "tokens": sum(lengths),
                "padded_tokens": {
                    "given": padded(in_order),
                    "sorted": padded(length_sorted_batches(texts, size)),
                },
                "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
                "ratio_given_over_sorted": round(1 / paired_ratio(times, "sorted", "given"), 2),
                "max_abs_score_difference": float(
                    (outputs["given"] - outputs["sorted"]).abs().max()
                ),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
