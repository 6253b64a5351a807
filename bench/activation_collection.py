"""Activation collection (one forward truncated after the highest SAE layer) vs a plain full
forward of the model on the same batches, and the truncated forward with the system turn every
chat row starts with run once as a KV prefix (`shared`, what `collect_activations` does). Each
arm runs in its own child process so its peak RAM is its own; the arms alternate `--repeats`
times, on a seeded sample of the default training mixture batched as collection batches it.

Prints sequence tokens/s per arm (real tokens of the rows, the system turn included, so the
arms share one denominator), the speed-ups truncated/full (target >= 1.5) and shared/truncated,
the largest difference of the shared arm's kept activations from the truncated arm's, the
peak RSS of each arm, and the machine's float32 matmul throughput against the GFLOP/s the
shared arm achieves (2 x the parameters of the layers it runs, per token run).

    python bench/activation_collection.py --layers 11,13,15 --n-seqs 32 --data-dir DATA
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file, save_file

from refusal_lens.hooks import HookPoint
from refusal_lens.models import load_model
from refusal_lens.saes.activations import (
    SharedPrefix,
    TokenMask,
    _length_batches,
    forward_batch,
    truncated_forward,
)
from refusal_lens.saes.mixture import DEFAULT_MIXTURE, Tokenizer, pad_batch, sample_sequences


def run_arm(args: argparse.Namespace) -> dict[str, float]:
    lm = load_model(args.model, dtype=args.dtype)
    tok = Tokenizer(lm.tokenizer, context=args.context)
    seqs = sample_sequences(
        DEFAULT_MIXTURE, tok, args.n_seqs * args.context * 4, args.data_dir, "train", 0
    )
    seqs = seqs[: args.n_seqs]
    points = [HookPoint(int(layer), "resid_post") for layer in args.layers.split(",")]
    pad = lm.tokenizer.pad_token_id or 0
    rows = _length_batches(seqs, args.batch_size)  # as collect_activations batches them
    batches = [pad_batch(batch, pad) for batch in rows]
    real = sum(int(mask.sum()) for _, mask, _ in batches)
    prefix = SharedPrefix.of(lm, points, seqs, TokenMask())
    run_tokens = real
    if args.arm == "shared" and prefix is not None:
        run_tokens -= prefix.ids.numel() * sum(prefix.starts(s) for s in seqs)

    def once() -> list[torch.Tensor]:
        kept = []
        for batch, (ids, mask, kinds) in zip(rows, batches, strict=True):
            if args.arm == "full":
                with torch.inference_mode():
                    lm.model(
                        input_ids=ids.to(lm.device),
                        attention_mask=mask.to(lm.device),
                        use_cache=False,
                    )
                continue
            if args.arm == "shared":
                acts, _, kinds = forward_batch(lm, points, batch, pad, prefix)
            else:
                acts = truncated_forward(lm, points, ids, mask)
            keep = TokenMask().keep(kinds)
            kept.append(acts[points[-1]][keep].float())
        return kept

    once()  # warm-up
    start = time.perf_counter()
    kept = once()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kept and args.save:
        save_file({"kept": torch.cat(kept)}, f"{args.save}.{args.arm}.safetensors")
    last = max(int(layer) for layer in args.layers.split(","))
    params = sum(
        p.numel() for layer in lm.model.model.layers[: last + 1] for p in layer.parameters()
    )
    return {
        "tokens_per_s": real / seconds,
        "peak_rss_mb": peak_mb,
        "tokens": real,
        "gflops": 2 * params * run_tokens / seconds / 1e9,
    }


def matmul_gflops(threads: int) -> float:
    """The float32 matmul throughput of this machine on a model-sized product."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 896), torch.randn(896, 4864)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    n = 20
    for _ in range(n):
        a @ b
    return 2 * 2048 * 896 * 4864 * n / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--layers", default="11,13,15")
    parser.add_argument("--n-seqs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arm", choices=("truncated", "full", "shared"), help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args)))
        return
    import tempfile

    results: dict[str, list[dict[str, float]]] = {"full": [], "truncated": [], "shared": []}
    scratch = tempfile.mkdtemp()
    for repeat in range(args.repeats):
        for arm in results:
            child = [sys.executable, __file__, *sys.argv[1:], "--arm", arm]
            if repeat == 0:
                child += ["--save", f"{scratch}/kept"]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            results[arm].append(json.loads(out.strip().splitlines()[-1]))
    truncated = load_file(f"{scratch}/kept.truncated.safetensors")["kept"]
    shared = load_file(f"{scratch}/kept.shared.safetensors")["kept"]
    gflops = statistics.median(r["gflops"] for r in results["shared"])
    peak = matmul_gflops(torch.get_num_threads())
    speed = {
        arm: statistics.median(r["tokens_per_s"] for r in runs) for arm, runs in results.items()
    }
    summary = {
        "model": args.model,
        "layers": args.layers,
        "tokens_per_arm_run": results["full"][0]["tokens"],
        "tokens_per_s": {arm: round(v, 1) for arm, v in speed.items()},
        "speedup_truncated_vs_full": round(speed["truncated"] / speed["full"], 2),
        "speedup_shared_vs_truncated": round(speed["shared"] / speed["truncated"], 2),
        "shared_max_abs_diff": float((shared - truncated).abs().max()),
        "kept_activation_scale": float(truncated.abs().mean()),
        "shared_gflops": round(gflops, 1),
        "matmul_gflops": round(peak, 1),
        "fraction_of_matmul": round(gflops / peak, 2),
        "peak_rss_mb": {
            arm: round(max(r["peak_rss_mb"] for r in runs)) for arm, runs in results.items()
        },
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
