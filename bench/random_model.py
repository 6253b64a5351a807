"""A random-weight model with a real model's architecture, and a random SAE set for it.

For speed and memory benchmarks, where the weights' values do not matter (a fixed number of new
tokens per prompt, the cost of SAE steering), on machines that do not hold the real weights: a
GPU box with no hub access gets the architecture from `config.json` and the tokenizer files
alone (about 12 MB for Qwen2.5). Never use what it writes for a result about refusal.

    python bench/random_model.py --like MODEL_FOLDER --out /tmp/model --saes /tmp/saes \
        --layers 6,12,18
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from refusal_lens.hooks import HookPoint
from refusal_lens.models import load_model
from refusal_lens.saes import SAEConfig, SAESet, build_sae


def random_model(like: str, out: str, seed: int) -> None:
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(like)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(like).save_pretrained(out)


def random_saes(
    model_folder: str, out: str, layers: list[int], expansion: int, k: int, seed: int
) -> SAESet:
    lm = load_model(model_folder, device="cpu")
    torch.manual_seed(seed)
    saes = {}
    for layer in layers:
        sae = build_sae(SAEConfig("topk", lm.d_model, expansion * lm.d_model, k=k))
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn_like(sae.W_enc) / lm.d_model**0.5)
            sae.W_dec.copy_(torch.randn_like(sae.W_dec))
            sae.normalize_decoder()
        saes[HookPoint(layer, "resid_post")] = sae
    sae_set = SAESet(
        {"name": lm.name, "weights_sha256": lm.weights_sha256},
        saes,
        {"note": "random weights, for speed benchmarks only"},
    )
    sae_set.save(out)
    return sae_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", required=True, help="HF folder with config.json + tokenizer")
    parser.add_argument("--out", required=True, help="where the random model is written")
    parser.add_argument("--saes", help="also write a random TopK SAE set here")
    parser.add_argument("--layers", default="", help="SAE layers, comma-separated")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random_model(args.like, args.out, args.seed)
    summary = {"model": args.out}
    if args.saes:
        layers = [int(layer) for layer in args.layers.split(",") if layer]
        if not layers:
            parser.error("--saes needs --layers")
        random_saes(args.out, args.saes, layers, args.expansion, args.k, args.seed)
        summary["saes"] = args.saes
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
