"""The playground's streaming against `refusal-lens generate` on the same prompt and edit.

    python bench/playground_speed.py RUN [--prompts 4] [--max-new-tokens 64] [--repeats 3]

RUN is a benchmark folder (its model, SAE set and `ours` set at its searched value). For each
prompt (JailbreakBench when $REFUSAL_LENS_DATA is set, else the built-in harmful test prompts):
the playground answers base and steered side by side (`Playground.stream`, one model copy,
alternating steps), and `generate` answers the same prompt twice, base then steered, at batch
size 1. Prints the time to the first streamed token, tokens/s of each, and the ratio of the
playground's wall time to generate's for the same two answers (both greedy, fixed length).
"""

from __future__ import annotations

import argparse
import statistics
import time

from refusal_lens.analyses.suite import benchmark_inputs
from refusal_lens.data import builtin_prompts, load_prompts, resolve_data_dir
from refusal_lens.generation import generate
from refusal_lens.models import ChatFormatter, load_model
from refusal_lens.playground import Controls, Playground, Sampling
from refusal_lens.saes import SAESet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    found = benchmark_inputs(args.run)
    lm = load_model(found["model"])
    formatter = ChatFormatter(lm.tokenizer)
    formatter.__dict__["stop_token_ids"] = []  # fixed-length answers: the same work for both
    playground = Playground.from_run(lm, formatter, args.run, SAESet.load(found["saes"]))
    edit = playground.interventions(Controls("latents/heldout/ours"))
    prompts = (
        load_prompts("jailbreakbench", limit=args.prompts).texts()
        if resolve_data_dir(None)
        else builtin_prompts("harmful", "test").texts()[: args.prompts]
    )
    sampling = Sampling(args.max_new_tokens)
    generate(lm, formatter, prompts[:1], max_new_tokens=4, progress=False)  # warm-up
    first, stream_s, generate_s = [], [], []
    for _ in range(args.repeats):
        for prompt in prompts:
            ask = [{"role": "user", "content": prompt}]
            start = time.perf_counter()
            for i, _pair in enumerate(playground.stream(ask, edit, sampling)):
                if i == 1:  # both panes have their first token
                    first.append(time.perf_counter() - start)
            stream_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            for interventions in ([], edit):
                generate(
                    lm,
                    formatter,
                    [prompt],
                    max_new_tokens=args.max_new_tokens,
                    batch_size=1,
                    interventions=interventions,
                    progress=False,
                )
            generate_s.append(time.perf_counter() - start)
    tokens = 2 * args.max_new_tokens
    stream, gen = statistics.median(stream_s), statistics.median(generate_s)
    print(f"model {lm.name} ({lm.identity()['dtype']}), {len(prompts)} prompts x {args.repeats}")
    print(f"time to first token (both panes): {statistics.median(first):.2f} s (median)")
    print(f"playground: {tokens / stream:.1f} tokens/s over both answers ({stream:.2f} s)")
    print(f"generate, base then steered: {tokens / gen:.1f} tokens/s ({gen:.2f} s)")
    print(f"playground / generate wall time: {stream / gen:.3f}x")


if __name__ == "__main__":
    main()
