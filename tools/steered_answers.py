"""Generate unlabelled steered answers like the packaged `steered` sets (data/steered/GUIDE.md).

    python tools/steered_answers.py --run RUN --data-dir DATA --out answers.jsonl

RUN is a `refusal-lens run --quick` folder (its direction, its SAE set, its held-out `ours`
set). Every condition answers the same prompts (the first N of each harmful benchmark), so
the answers are paired across conditions. Records are appended as each batch finishes; a
rerun skips what the file has.

The judge's training answers (`train.jsonl`) come from other benchmarks, with every prompt of
the evaluation benchmarks removed, near-duplicates included:

    python tools/steered_answers.py --run RUN --data-dir DATA --out train-answers.jsonl \
        --datasets strongreject,harmbench_val,malicious_instruct,tdc2023 --n 25 \
        --exclude jailbreakbench,harmbench_test,advbench

Training prompts may have been used to select the latents (the judge is not measured on
them); the test set's prompts must not have been, and are checked. Identical answers to one
prompt (several clamps often give the same text) are labelled once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from refusal_lens.data import load_prompts
from refusal_lens.direction import Direction
from refusal_lens.generation import generate
from refusal_lens.heldout import without
from refusal_lens.latents import LatentSet
from refusal_lens.models import ChatFormatter, load_model
from refusal_lens.saes import SAESet

DATASETS = ("jailbreakbench", "harmbench_test", "advbench")
# (name, K*, c): the latent clamps beside base and direction ablation
CLAMPS = (("ours", 10, -3.0), ("ours", 20, -3.0), ("ours", 20, -6.0), ("ours", 30, -6.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=12, help="prompts per benchmark")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    parser.add_argument(
        "--exclude", default="", help="datasets whose prompts (and near-duplicates) are dropped"
    )
    args = parser.parse_args()
    run = Path(args.run)
    features = LatentSet.load(run / "latents" / "heldout" / "ours" / "latents.json")
    direction = Direction.load(run / "direction")
    saes = SAESet.load(features.saes["path"])
    lm = load_model(features.model.get("name", "qwen2.5-coder-0.5b-instruct"))
    formatter = ChatFormatter(lm.tokenizer)
    direction.check_model(lm)
    conditions = {"base": [], "direction ablation": [direction.ablation()]}
    for method, k, c in CLAMPS:
        conditions[f"{method} K*={k} c={c:g}"] = [features.edit(saes, k=k, mode="scale", value=c)]
    out = Path(args.out)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            record = json.loads(line)
            done.add((record["condition"], record["dataset"], record["prompt"]))
    excluded = [load_prompts(d, data_dir=args.data_dir) for d in args.exclude.split(",") if d]
    for dataset in args.datasets.split(","):
        prompts = load_prompts(dataset, data_dir=args.data_dir)
        if excluded:
            prompts = without(prompts, excluded)
        prompts = prompts.head(args.n)
        if not excluded:  # a test set is held out from latent selection; training data need not be
            features.check_held_out(prompts)
        for condition, interventions in conditions.items():
            todo = [t for t in prompts.texts() if (condition, dataset, t) not in done]
            if not todo:
                continue

            def write(
                indices: list[int],
                texts: list[str],
                todo: list[str] = todo,
                condition: str = condition,
                dataset: str = dataset,
            ) -> None:
                with out.open("a") as handle:
                    for i, text in zip(indices, texts, strict=True):
                        record = {
                            "dataset": dataset,
                            "condition": condition,
                            "prompt": todo[i],
                            "completion": text,
                            "max_new_tokens": args.max_new_tokens,
                        }
                        handle.write(json.dumps(record) + "\n")

            generate(
                lm,
                formatter,
                todo,
                max_new_tokens=args.max_new_tokens,
                interventions=interventions,
                on_batch=write,
                desc=f"{dataset} · {condition}",
            )


if __name__ == "__main__":
    main()
