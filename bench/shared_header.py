"""Last-position scoring with the chat header shared vs the whole left-padded batch.

The direction search scores every (position, layer) candidate by the next-token logits at the
last prompt position under directional ablation; each formatted prompt starts with the same
template header (Qwen2.5: a 24-token default system turn). Arms, same prompts, same process,
interleaved `--repeats` times:
  whole   every row's header run inside the batch (the model's own forward)
  shared  the header run once under the intervention, its KV cache shared by the batch
Prints seconds per arm, the ratio whole/shared and the largest logit difference.

    python bench/shared_header.py --data-dir ../shared/datasets --n-prompts 16
"""

from __future__ import annotations

import argparse
import json

import torch

import refusal_lens.scoring as scoring
from generation_overhead import time_arms
from refusal_lens.data import load_prompts
from refusal_lens.interventions import AblateDirection
from refusal_lens.models import ChatFormatter, load_model
from refusal_lens.models.prefix import position_independent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="harmful_val")
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    lm = load_model(args.model)
    formatter = ChatFormatter(lm.tokenizer)
    texts = load_prompts(args.dataset, data_dir=args.data_dir).texts()[: args.n_prompts]
    direction = torch.randn(lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    edits = [AblateDirection(direction)]
    outputs: dict[str, torch.Tensor] = {}

    def arm(name: str, share: bool):
        def run() -> None:
            scoring.position_independent = position_independent if share else _never
            outputs[name] = scoring.last_position_logits(
                lm, formatter, texts, batch_size=args.batch_size, interventions=edits
            )
            scoring.position_independent = position_independent

        return run

    seconds = time_arms({"whole": arm("whole", False), "shared": arm("shared", True)}, args.repeats)
    tokens = [int(formatter.encode([t]).attention_mask.sum()) for t in texts]
    print(
        json.dumps(
            {
                "prompts": len(texts),
                "header_tokens": formatter.n_pre_instruction,
                "mean_prompt_tokens": round(sum(tokens) / len(tokens), 1),
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "ratio_whole_over_shared": round(seconds["whole"] / seconds["shared"], 2),
                "max_abs_logit_difference": float(
                    (outputs["whole"] - outputs["shared"]).abs().max()
                ),
            },
            indent=1,
        )
    )


def _never(_items: object) -> bool:
    return False


if __name__ == "__main__":
    main()
