"""The paper's benchmark at full size on 1, 8 and 64 GPUs: its work items, its tokens and the
expected GPU-hours, from per-token costs measured on one H100 (docs/results.md, section 10).

    python bench/paper_scale_plan.py --config configs/gemma-2-2b-it-gemma-scope.toml \\
        --layers 26 --params 2.6e9
    python bench/paper_scale_plan.py --config configs/llama-3.1-8b-instruct-llama-scope.toml \\
        --layers 32 --params 8.0e9

Counts come from the config (arms, prompts, lengths, judges, capability tasks). Costs:
decoding at batch 32 is bound by kernel launches, not by weight bytes, on an H100 for models of
this size (the 0.5B model's step is 21.7 ms where reading its weights takes 0.3 ms), so the
measured step time is scaled by the number of layers (and taken as the step time at the
config's batch size too); prefill and teacher forcing by FLOPs
at a model FLOP utilisation `--mfu`. Every assumption is a flag and is printed. Generation is
counted at full length (an upper bound: answers stop at end of turn). The bounds of scaling
are printed beside the hours: items per arm, model and SAE loading per replica, the
sequential stages that stay on the driver. Not in the plan: the analyses (their circuits
patching and probes run on the driver today).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from refusal_lens.benchmark.config import LATENT_METHODS, BenchmarkConfig
from refusal_lens.config import load_settings

# Measured on one H100 (docs/results.md, section 10): the 0.5B model (24 layers) generating
# 128 tokens at batch 32 in bfloat16: 1,476 tokens/s plain, 1,272 with a 20-latent clamp.
MEASURED_LAYERS = 24
MEASURED_PLAIN = 1476.0
MEASURED_STEERED = 1272.0
MEASURED_BATCH = 32


@dataclass
class Work:
    name: str
    items: int  # work items the executor can spread
    decode_tokens: float = 0.0  # generated tokens (each one decoding step per row)
    prefill_tokens: float = 0.0  # tokens through forward passes only
    backward_tokens: float = 0.0  # tokens through forward and backward (attribution)
    judge_tokens: float = 0.0  # tokens through the judge model
    on_driver: bool = False  # not yet spread by the executor


def arms(config: BenchmarkConfig) -> list[tuple[str, bool]]:
    """(label, steered with SAEs) of every harmful arm, as `build_arms` makes them."""
    out = [("base", False)]
    if "direction" in config.methods:
        out.append(("direction ablation", False))
    for method in config.methods:
        if method not in LATENT_METHODS:
            continue
        seeds = config.random_seeds if method == "random" else (0,)
        for protocol in config.protocols:
            if protocol == "transductive" and method == "random":
                continue
            out += [(f"{method} {protocol} {seed}", True) for seed in seeds]
    return out


def plan(config: BenchmarkConfig, prompt_tokens: int, judge_tokens: int) -> list[Work]:
    every = arms(config)
    batch = config.batch_size
    selections = sum(m in ("ours", "ap") for m in config.methods) * len(config.protocols)
    n = (config.limit or 100) * len(config.datasets)
    works = [
        Work(
            "harmful generation",
            len(every) * math.ceil(n / batch),
            decode_tokens=len(every) * n * config.max_new_tokens,
            prefill_tokens=len(every) * n * prompt_tokens,
        ),
        Work(
            "harmful verdicts (classifier)",
            len(every) * math.ceil(n / 64),
            judge_tokens=len(every) * n * judge_tokens,
        ),
        Work(
            "side effects (rollouts, KL, CE, XSTest)",
            len(every) * (math.ceil(config.n_harmless / 16) + math.ceil(config.n_generic / 16)),
            decode_tokens=config.n_harmless * config.rollout_tokens
            + len(every) * config.xstest_limit * config.screen_tokens,
            prefill_tokens=len(every)
            * (
                config.n_harmless * (prompt_tokens + config.rollout_tokens) + config.n_generic * 256
            ),
        ),
        Work(
            "induction",
            (len(config.induce_values) + 2) * math.ceil(config.n_induce / batch),
            decode_tokens=(len(config.induce_values) + 2) * config.n_induce * config.screen_tokens,
        ),
        Work(
            "latent selection (LA-IG attribution, 10 steps)",
            selections * math.ceil(config.n_select / min(8, max(1, batch // 2))),
            backward_tokens=selections * config.n_select * prompt_tokens * 10,
        ),
        Work(
            "direction search (candidates x validation)",
            0,
            prefill_tokens=95 * 2 * config.direction_n_val * prompt_tokens,
            on_driver=True,
        ),
    ]
    caps = config.capabilities
    capability_arms = len(config.capability_methods) or len(every)
    choice_items = sum(t != "gsm8k" for t in caps.tasks) * (caps.limit or 300) * 4
    works.append(
        Work(
            "capabilities (lm-eval)",
            0,
            prefill_tokens=capability_arms * choice_items * 300,
            decode_tokens=capability_arms * ("gsm8k" in caps.tasks) * caps.gsm8k_limit * 256,
            on_driver=True,
        )
    )
    return works


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a benchmark TOML (configs/)")
    parser.add_argument("--layers", type=int, required=True, help="the model's layers")
    parser.add_argument("--params", type=float, required=True, help="the model's parameters")
    parser.add_argument("--judge-params", type=float, default=13e9, help="the classifier's")
    parser.add_argument("--mfu", type=float, default=0.35, help="prefill FLOP utilisation")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 bf16 dense")
    parser.add_argument("--prompt-tokens", type=int, default=120, help="chat prompt, mean")
    parser.add_argument("--judge-tokens", type=int, default=600, help="classifier input")
    parser.add_argument("--load-seconds", type=float, default=60.0, help="model + SAEs / replica")
    args = parser.parse_args()
    config = load_settings(BenchmarkConfig, file=args.config, table="benchmark")
    step = MEASURED_BATCH / MEASURED_PLAIN * args.layers / MEASURED_LAYERS  # s per decode step
    steer = MEASURED_PLAIN / MEASURED_STEERED
    flops = args.peak_tflops * 1e12 * args.mfu
    print(f"config {args.config}: {len(arms(config))} harmful arms, batch {config.batch_size}")
    print(
        f"assumed: decode step {step * 1e3:.1f} ms (the 0.5B's at batch {MEASURED_BATCH} "
        f"x {args.layers}/{MEASURED_LAYERS} layers), steering x{steer:.2f}, prefill at "
        f"{args.mfu:.0%} of {args.peak_tflops:.0f} TFLOP/s"
    )
    header = f"{'work':<46}{'items':>7}{'decoded':>10}{'GPU-h':>8}{'where':>9}"
    print(header)
    total = spread = 0.0
    per_arm_items = math.ceil((config.limit or 100) * len(config.datasets) / config.batch_size)
    for work in plan(config, args.prompt_tokens, args.judge_tokens):
        seconds = work.decode_tokens / config.batch_size * step * steer  # one step per row batch
        seconds += work.prefill_tokens * 2 * args.params / flops
        seconds += work.backward_tokens * 6 * args.params / flops
        seconds += work.judge_tokens * 2 * args.judge_params / flops
        total += seconds
        spread += 0 if work.on_driver else seconds
        where = "driver" if work.on_driver else "workers"
        decoded = f"{work.decode_tokens / 1e6:.2f} M"
        print(f"{work.name:<46}{work.items:>7}{decoded:>10}{seconds / 3600:>8.2f}{where:>9}")
    print(f"total: {total / 3600:.2f} GPU-hours on one GPU")
    serial = total - spread
    for gpus in (1, 8, 64):
        usable = min(gpus, per_arm_items)  # arms run one after another
        wall = serial + spread / usable + args.load_seconds
        print(
            f"{gpus:>3} GPUs: {wall / 3600:.2f} h wall, {wall * gpus / 3600:.1f} GPU-hours "
            f"({usable} busy per arm: {per_arm_items} items each)"
        )


if __name__ == "__main__":
    main()
