"""Removing the evaluation sets' prompts (and near copies) from the selection pools.

Every selection (the direction, each latent set, each search) drops from its pools every
prompt of the benchmark's evaluation sets, exact or with word-set Jaccard >= 0.6. Arms, on the
same pools and evaluation sets (the benchmark's: JailbreakBench, HarmBench test, AdvBench and
Alpaca, the harmless set):
  every-shared-word   the baseline: compare each pool prompt with every evaluation prompt that
                      shares any word with it ("how", "a", ... make that nearly all of them)
  prefix-filtered     `heldout.without`: compare only pairs that share a word of their
                      rarest-first prefixes (exact: the same prompts are kept)
Prints seconds per pool and the ratio.

    python bench/heldout_index.py --data-dir DATA
"""

from __future__ import annotations

import argparse
import json
import time

from refusal_lens import heldout
from refusal_lens.data import PromptSet, load_prompts
from refusal_lens.jobs import DEFAULT_EVAL_SETS, split_prompts


def every_shared_word(pool: PromptSet, others: list[PromptSet]) -> PromptSet:
    """The previous index: words -> sets, every set sharing a word is compared."""
    by_word: dict[str, list[frozenset[str]]] = {}
    for other in others:
        for prompt in other:
            item = heldout.words(prompt.text)
            for word in item:
                by_word.setdefault(word, []).append(item)

    def near(item: frozenset[str]) -> bool:
        candidates = {id(c): c for w in item for c in by_word.get(w, ())}.values()
        return bool(item) and any(
            len(item & c) / len(item | c) >= heldout.NEAR_DUPLICATE_JACCARD for c in candidates
        )

    kept = pool
    for other in others:
        kept = kept.without(other)
    return kept.filter(lambda p: not near(heldout.words(p.text)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    evaluation = [load_prompts(n, data_dir=args.data_dir) for n in (*DEFAULT_EVAL_SETS, "alpaca")]
    result: dict[str, dict[str, float | int]] = {}
    for kind in ("harmful", "harmless"):
        pool = split_prompts(kind, "train", args.data_dir, None)
        start = time.perf_counter()
        baseline = every_shared_word(pool, evaluation)
        middle = time.perf_counter()
        fast = heldout.without(pool, evaluation)
        end = time.perf_counter()
        if baseline.texts() != fast.texts():
            raise SystemExit(f"{kind}: the two indexes keep different prompts")
        result[f"{kind} train pool"] = {
            "prompts": len(pool),
            "kept": len(fast),
            "every_shared_word_s": round(middle - start, 2),
            "prefix_filtered_s": round(end - middle, 2),
            "speed_up": round((middle - start) / max(end - middle, 1e-9), 1),
        }
    sizes = {p.name: len(p) for p in evaluation}
    print(json.dumps({"evaluation_sets": sizes, "pools": result}, indent=2))


if __name__ == "__main__":
    main()
