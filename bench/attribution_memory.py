"""LA-IG time and peak memory per prompt: refusal-lens (scores of the candidate latents only,
reduced over positions on the fly) vs a dense implementation that keeps what the reference code
keeps (every step's gradient of every layer's full latent tensor, and the full
`[prompts, positions, d_sae]` attributions of every layer).

Each arm runs in its own process so that its peak RSS is its own; both use the same model, SAE
set, direction, prompts, path and steps. Prints seconds per prompt, the peak RSS above the
loaded model, and the ratios dense / refusal-lens.

    python bench/attribution_memory.py --saes SAES --direction RUN [--n-prompts 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from refusal_lens.attribution import AttributionSettings, _endpoints, _path_at, attribute
from refusal_lens.data import builtin_prompts, load_prompts
from refusal_lens.direction import Direction
from refusal_lens.generation import length_sorted_batches
from refusal_lens.hooks import add_hooks
from refusal_lens.latents import cosine_candidates
from refusal_lens.models import ChatFormatter, LoadedModel, load_model
from refusal_lens.saes import SAESet


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def dense_attribute(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    direction: Direction,
    texts: list[str],
    token: int,
    settings: AttributionSettings,
) -> list[dict[int, torch.Tensor]]:
    """The same path and estimator, storing everything dense."""
    stored = []
    for indices in length_sorted_batches(texts, settings.batch_size):
        batch = formatter.encode([texts[i] for i in indices])
        kwargs = {**batch.forward_kwargs(), "use_cache": False, "logits_to_keep": 1}
        rows = torch.arange(len(indices))
        ends = _endpoints(lm, kwargs, saes, direction)
        target = ends.ablated_logits.argmax(-1)
        grads: dict[int, list[torch.Tensor]] = {layer: [] for layer in saes.layers}
        velocity: dict[int, list[torch.Tensor]] = {layer: [] for layer in saes.layers}
        for alpha in settings.alphas():
            path = _path_at(lm, saes, direction, ends, alpha, settings.estimator)
            with torch.enable_grad(), add_hooks(lm.model, path.hooks()):
                logits = lm.model(**kwargs).logits[:, -1].float()
                (logits[rows, target] - logits[:, token]).sum().backward()
            for layer, (f_a, _e, v_f, _ve) in path.nodes.items():
                grads[layer].append(f_a.grad.detach().clone())
                velocity[layer].append(v_f)
        stored.append(
            {
                layer: (torch.stack(velocity[layer]) * torch.stack(grads[layer])).mean(0)
                for layer in saes.layers
            }
        )
    return stored


def run_arm(args: argparse.Namespace) -> dict[str, float]:
    torch.set_grad_enabled(False)
    lm = load_model(args.model, device="cpu")
    formatter = ChatFormatter(lm.tokenizer)
    saes = SAESet.load(args.saes)
    direction = Direction.load(args.direction)
    prompts = (
        load_prompts("harmful_train", data_dir=args.data_dir)
        if args.data_dir
        else builtin_prompts("harmful", "train")
    )
    texts = prompts.texts()[: args.n_prompts]
    token = int(lm.tokenizer("I", add_special_tokens=False)["input_ids"][0])
    settings = AttributionSettings(steps=args.steps, batch_size=args.batch_size)
    lm.model(**formatter.encode(texts[:1]).forward_kwargs())  # page the mmapped weights in
    loaded = rss_mib("VmRSS")
    start = time.perf_counter()
    if args.arm == "refusal-lens":
        candidates = cosine_candidates(saes, direction, args.per_layer)
        attribute(
            lm,
            formatter,
            saes,
            direction,
            texts,
            token,
            candidates=candidates,
            settings=settings,
            progress=False,
        )
    else:
        dense_attribute(lm, formatter, saes, direction, texts, token, settings)
    seconds = time.perf_counter() - start
    return {
        "seconds_per_prompt": seconds / len(texts),
        "peak_rss_above_model_mib": rss_mib("VmHWM") - loaded,
        "n_prompts": len(texts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--saes", required=True)
    parser.add_argument("--direction", required=True, help="direction run folder")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--per-layer", type=int, default=10)
    parser.add_argument("--arm", choices=("refusal-lens", "dense"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args)))
        return
    results = {}
    for arm in ("refusal-lens", "dense"):
        argv = [a for a in sys.argv[1:]]
        out = subprocess.run(
            [sys.executable, __file__, *argv, "--arm", arm],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[arm] = json.loads(out.strip().splitlines()[-1])
    ours, dense = results["refusal-lens"], results["dense"]
    summary = {
        "saes": args.saes,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "arms": results,
        "ratio_seconds_dense_vs_ours": round(
            dense["seconds_per_prompt"] / ours["seconds_per_prompt"], 3
        ),
        "ratio_peak_rss_dense_vs_ours": round(
            dense["peak_rss_above_model_mib"] / max(ours["peak_rss_above_model_mib"], 1.0), 3
        ),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
