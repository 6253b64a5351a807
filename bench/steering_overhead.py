"""Steered generation (SAE latents clamped at every decoding step) vs plain `model.generate`.

Arms, on the same prompts and batches, interleaved over `--repeats` runs:
  plain    model.generate, no hooks
  steered  refusal-lens generate with `--n-latents` latents scaled by -3 (EditLatents: the SAE
           encoder and the selected decoder rows run at each layer that has a selected latent,
           on the prompt and on every KV-cached decoding step)
Prints tokens/s per arm (medians) and the ratio steered/plain (target <= 1.10 for 20 latents at
11 layers): the median over rounds of the ratio within a round, whose two arms ran next to each
other, the ratio of the medians and that of the fastest rounds. On a CPU whose speed drifts
between rounds, read all three.

    python bench/steering_overhead.py --saes /path/to/sae-set [--latents RUN/latents.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from generation_overhead import paired_ratio, plain_generate, timed_rounds
from refusal_lens.data import builtin_prompts
from refusal_lens.generation import generate
from refusal_lens.interventions import EditLatents
from refusal_lens.latents import LatentSet
from refusal_lens.models import ChatFormatter, load_model
from refusal_lens.saes import SAESet
from refusal_lens.saes.presets import ensure_default_sae_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--saes", help="SAE set (default: the model's cached quick set)")
    parser.add_argument("--latents", help="latent set whose top latents to clamp")
    parser.add_argument("--data-dir", help="data for training the quick set if it is missing")
    parser.add_argument("--n-latents", type=int, default=20)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    formatter = ChatFormatter(lm.tokenizer)
    saes = SAESet.load(args.saes) if args.saes else ensure_default_sae_set(lm, args.data_dir)
    if args.latents:
        latents = LatentSet.load(args.latents).top(args.n_latents)
        source = args.latents
    else:
        generator = torch.Generator().manual_seed(0)
        layers = saes.layers
        latents = tuple(
            (
                layers[i % len(layers)],
                int(
                    torch.randint(saes[f"resid_post.{layers[0]}"].d_sae, (1,), generator=generator)
                ),
            )
            for i in range(args.n_latents)
        )
        source = "random latents spread over the set's layers"
    edit = EditLatents(saes, latents, "scale", -3.0)
    prompts = builtin_prompts("harmful").texts() + builtin_prompts("harmless").texts()
    texts = prompts[: args.n_prompts]
    # a fixed number of new tokens per arm: no early stop, so both arms do the same work
    formatter.__dict__["stop_token_ids"] = []

    arms = {
        "plain": lambda: plain_generate(lm, formatter, texts, args.max_new_tokens, args.batch_size),
        "steered": lambda: generate(
            lm,
            formatter,
            texts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            progress=False,
            interventions=[edit],
        ),
    }
    rounds = timed_rounds(arms, args.repeats)
    median = {name: statistics.median(values) for name, values in rounds.items()}
    tokens = len(texts) * args.max_new_tokens
    result = {
        "model": lm.name,
        "dtype": str(lm.dtype),
        "device": str(lm.device),
        "saes": saes.path,
        "latents": source,
        "n_latents": len(set(latents)),
        "layers_edited": sorted({layer for layer, _ in latents}),
        "n_prompts": len(texts),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "tokens_per_s": {name: round(tokens / t, 1) for name, t in median.items()},
        "ratio_steered_vs_plain": round(paired_ratio(rounds, "steered", "plain"), 3),
        "ratio_of_medians": round(median["steered"] / median["plain"], 3),
        "ratio_of_minima": round(min(rounds["steered"]) / min(rounds["plain"]), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
