"""SAE training throughput: this trainer vs SAELens' own trainer, same activations, one script.

Both arms train a TopK SAE (same width, k, batch size, float32) on the same batches read from an
activation cache written by `train-saes` / `collect_activations` (or random data with
`--random`). Each arm runs in its own child process (so peak RSS is its own), after one warm-up
step. SAELens' arm is its `SAETrainer.step` (forward, loss with the TopK auxiliary loss,
backward, gradient clipping, Adam, scheduler, firing bookkeeping), without wandb.

Prints tokens/s per arm, the ratio ours/SAELens (target >= 4) and peak RSS. Arms are
`NAME@DEVICE` (`--arms saelens@cpu,ours@cpu` by default); `--arms ours@cpu,ours@cuda` measures
this trainer on a GPU against the CPU, each arm's ratio taken to the first arm. `ours-bf16`
is this trainer choosing each token's top k from a bfloat16 encoder product (values and
gradients in float32, `TrainConfig.select_dtype`): `--arms ours@cpu,ours-bf16@cpu`.

    python bench/sae_training.py --cache SAES/activations --point resid_post.13
    python bench/sae_training.py --random --arms ours@cpu,ours@cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import torch


def batches(args: argparse.Namespace) -> list[torch.Tensor]:
    if args.random:
        gen = torch.Generator().manual_seed(0)
        n = args.steps + 1  # one warm-up batch, then the timed ones
        return [torch.randn(args.batch_size, args.d_in, generator=gen) for _ in range(n)]
    from refusal_lens.saes.activations import ActivationCache

    cache = ActivationCache.open(args.cache)
    stream = cache.batches(args.batch_size, seed=0)
    return [next(stream)[args.point] for _ in range(args.steps + 1)]


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours(
    args: argparse.Namespace, data: list[torch.Tensor], device: str, select: str = "float32"
) -> float:
    from refusal_lens.saes.architectures import SAEConfig
    from refusal_lens.saes.training import LayerTrainer, TrainConfig

    d_in = data[0].shape[1]
    cfg = TrainConfig(
        expansion=args.expansion, k=args.k, batch_size=args.batch_size, select_dtype=select
    )
    sae_cfg = SAEConfig("topk", d_in, args.expansion * d_in, k=args.k)
    trainer = LayerTrainer(cfg, sae_cfg, 1.0, device)
    trainer.initialise(data[0], torch.Generator().manual_seed(0))
    trainer.step(data[0], 1e-4)
    synchronise(device)
    start = time.perf_counter()
    for x in data[1:]:
        trainer.step(x, 1e-4)  # batches move from the host each step, as in training
    synchronise(device)
    return time.perf_counter() - start


def saelens(args: argparse.Namespace, data: list[torch.Tensor], device: str) -> float:
    warnings.filterwarnings("ignore")
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    d_in = data[0].shape[1]
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=d_in, d_sae=args.expansion * d_in, k=args.k, device=device)
    )
    config = SAETrainerConfig(
        total_training_samples=args.batch_size * 10_000,
        train_batch_size_samples=args.batch_size,
        lr=1e-4,
        lr_end=1e-5,
        device=device,
    )
    trainer = SAETrainer(cfg=config, sae=sae, data_provider=iter(()))

    def step(x: torch.Tensor) -> None:
        trainer.maybe_reset_sparsity()
        trainer.step(x)
        trainer.n_training_steps += 1

    step(data[0].to(device))
    synchronise(device)
    start = time.perf_counter()
    for x in data[1:]:
        step(x.to(device))
    synchronise(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="activation cache folder (index.json + shards)")
    parser.add_argument("--point", default="resid_post.13")
    parser.add_argument("--random", action="store_true", help="random activations instead")
    parser.add_argument("--d-in", type=int, default=896, help="with --random")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--arms", default="saelens@cpu,ours@cpu", help="NAME@DEVICE list, ratios to the first"
    )
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.random and not args.cache:
        parser.error("pass --cache DIR (an activation cache) or --random")
    arms = [arm if "@" in arm else f"{arm}@cpu" for arm in args.arms.split(",")]
    for arm in arms:
        if arm.split("@")[0] not in ("ours", "ours-bf16", "saelens"):
            parser.error(f"unknown arm {arm!r}; use ours, ours-bf16 or saelens @DEVICE")
    if args.arm:
        torch.manual_seed(0)
        data = batches(args)
        name, device = args.arm.split("@")
        if name == "saelens":
            seconds = saelens(args, data, device)
        else:
            seconds = ours(args, data, device, "bfloat16" if name == "ours-bf16" else "float32")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            json.dumps(
                {"tokens_per_s": args.batch_size * args.steps / seconds, "peak_rss_mb": peak}
            )
        )
        return
    results = {}
    for arm in arms:
        child = [sys.executable, __file__, *sys.argv[1:], "--arm", arm]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        results[arm] = json.loads(out.strip().splitlines()[-1])
    first = arms[0]
    summary = {
        "data": "random" if args.random else f"{args.cache}:{args.point}",
        "architecture": "topk",
        "d_sae": f"{args.expansion}x d_in",
        "k": args.k,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "tokens_per_s": {arm: round(r["tokens_per_s"]) for arm, r in results.items()},
        "ratio_vs_" + first: {
            arm: round(r["tokens_per_s"] / results[first]["tokens_per_s"], 2)
            for arm, r in results.items()
        },
        "peak_rss_mb": {arm: round(r["peak_rss_mb"]) for arm, r in results.items()},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
