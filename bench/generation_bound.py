"""Decoding throughput against the machine's two bounds: memory bandwidth and matmul rate.

A decoding step of batch B reads every weight once (and the KV cache) and does about
2 x parameters x B multiply-adds. So, measured in this process on the same cores:
  bandwidth bound  tokens/s <= B x copy bandwidth / bytes read per step
  compute bound    tokens/s <= matmul GFLOP/s / (2 x non-embedding parameters + 2 x head)
and the achieved rate of one decoding step (a KV-cached forward of B new tokens, timed over
`--steps` steps after a prefill) and of `refusal_lens.generation.generate` at the benchmark's
batch size. Prints each as a fraction of the lower bound.

    python bench/generation_bound.py --batch-size 32
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


def copy_bandwidth(n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second moved by a large tensor copy (each byte read once and written once)."""
    source = torch.ones(n_bytes // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    target.copy_(source)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - start)
    return 2 * n_bytes / min(times)


def matmul_rate(rows: int, d_in: int, d_out: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of `[rows, d_in] @ [d_in, d_out]` in `dtype` (the MLP's shape at batch `rows`)."""
    a = torch.randn(rows, d_in, dtype=dtype)
    w = torch.randn(d_out, d_in, dtype=dtype)
    torch.nn.functional.linear(a, w)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(a, w)
    return 2 * rows * d_in * d_out * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = load_model(args.model, dtype=args.dtype, device="cpu")
    formatter = ChatFormatter(lm.tokenizer)
    formatter.__dict__["stop_token_ids"] = []  # every row generates every token
    model, batch = lm.model, args.batch_size
    element = torch.finfo(lm.dtype).bits // 8
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == embed.data_ptr()
    every = sum(p.numel() for p in model.parameters())
    body = every - embed.numel() - (0 if tied else head.numel())
    # a step reads the layers and the head; the input embedding only at B rows
    bytes_per_step = (body + head.numel()) * element
    flops_per_token = 2 * (body + head.numel())

    prompts = (builtin_prompts("harmful").texts() + builtin_prompts("harmless").texts())[:batch]
    encoded = formatter.encode(prompts)
    out = model(**encoded.forward_kwargs(), use_cache=True)
    cache = out.past_key_values
    ids = out.logits[:, -1:].argmax(-1)
    mask = encoded.attention_mask
    step_times = []
    for _ in range(args.steps):
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        start = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        step_times.append(time.perf_counter() - start)
        cache, ids = out.past_key_values, out.logits[:, -1:].argmax(-1)
    kv_bytes = sum(
        t.numel() * t.element_size()
        for layer in (cache.layers if hasattr(cache, "layers") else [])
        for t in (layer.keys, layer.values)
    )
    step = statistics.median(step_times)

    start = time.perf_counter()
    generate(lm, formatter, prompts, max_new_tokens=args.max_new_tokens, batch_size=batch,
             progress=False)  # fmt: skip
    generate_rate = batch * args.max_new_tokens / (time.perf_counter() - start)

    bandwidth = copy_bandwidth()
    config = model.config
    rate = matmul_rate(batch, config.hidden_size, config.intermediate_size, lm.dtype)
    bandwidth_bound = batch * bandwidth / (bytes_per_step + kv_bytes)
    compute_bound = rate / flops_per_token
    bound = min(bandwidth_bound, compute_bound)
    result = {
        "model": lm.name,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "batch_size": batch,
        "weights_read_per_step_mb": round(bytes_per_step / 2**20, 1),
        "kv_cache_mb_at_last_step": round(kv_bytes / 2**20, 1),
        "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "matmul_gflop_s_at_batch": round(rate / 1e9, 1),
        "bound_tokens_s": {
            "bandwidth": round(bandwidth_bound, 1),
            "compute": round(compute_bound, 1),
        },
        "achieved_tokens_s": {
            "decoding_step": round(batch / step, 1),
            "generate": round(generate_rate, 1),
        },
        "fraction_of_lower_bound": {
            "decoding_step": round(batch / step / bound, 2),
            "generate": round(generate_rate / bound, 2),
        },
        "binding": "bandwidth" if bandwidth_bound < compute_bound else "compute",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
