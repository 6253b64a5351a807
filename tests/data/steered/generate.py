"""Generate the unlabelled steered answers of `labelled.jsonl` (see GUIDE.md).

    python tests/data/steered/generate.py --run RUN --data-dir DATA --out answers.jsonl

RUN is a `refusal-lens run --quick` folder (its direction, its SAE set, its held-out `ours`
set). Every condition answers the same prompts (the first N of each harmful benchmark), so
the answers are paired across conditions. Records are appended as each batch finishes; a
rerun skips what the file has.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from refusal_lens.data import load_prompts
from refusal_lens.direction import Direction
from refusal_lens.features import FeatureSet
from refusal_lens.generation import generate
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
    args = parser.parse_args()
    run = Path(args.run)
    features = FeatureSet.load(run / "latents" / "heldout" / "ours" / "latents.json")
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
    for dataset in DATASETS:
        prompts = load_prompts(dataset, data_dir=args.data_dir, limit=args.n)
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
