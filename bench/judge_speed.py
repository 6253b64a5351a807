"""Time and memory of the judges per 100 answers: the cost of reading for compliance.

    python bench/judge_speed.py --data-dir ../shared/datasets --judges substring,learned

Judges the labelled steered answers of the default model (the packaged `steered` set,
216 answers of up to 96 tokens) with each judge in turn, in one process: seconds per 100
answers (after a warm-up call), the ratio to the first judge (the baseline, substring by
default), and the resident memory the judge added when it loaded (the process's peak RSS
before and after). The learned judge must be trained (`refusal-lens train-judge`); the
compliance judge loads the default chat model for its fluency test.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from refusal_lens.data.labelled import load_labelled
from refusal_lens.judges import JudgeContext, make_judge


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--judges", default="substring,learned")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    rows = load_labelled("steered")
    prompts = [r.prompt for r in rows]
    answers = [r.response for r in rows]
    context = JudgeContext(device="cpu", data_dir=args.data_dir, batch_size=16)
    if "compliance" in args.judges.split(","):
        from refusal_lens.models import ChatFormatter, load_model

        context.lm = load_model("qwen2.5-coder-0.5b-instruct", device="cpu")
        context.formatter = ChatFormatter(context.lm.tokenizer)
    print(f"{len(rows)} answers, {torch.get_num_threads()} threads")
    baseline = None
    for spec in args.judges.split(","):
        before = peak_rss_mib()
        judge = make_judge(spec, context)
        judge.verdicts(prompts[:4], answers[:4])  # warm-up
        added = peak_rss_mib() - before
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            judge.verdicts(prompts, answers)
            times.append(time.perf_counter() - started)
        per_100 = min(times) / len(rows) * 100
        baseline = baseline or per_100
        print(
            f"{spec:<12} {per_100:8.3f} s per 100 answers  x{per_100 / baseline:8.1f} "
            f"vs {args.judges.split(',')[0]}  peak RSS +{added:.0f} MiB on load"
        )


if __name__ == "__main__":
    main()
