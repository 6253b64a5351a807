"""Write the package's data manifest (`src/refusal_lens/data/sources.json`).

Each file the pipeline reads from a data directory is listed with the public URL it is
published at (a pinned commit) and the sha256 and size of its content, computed here from a
data directory that holds the files (`--data-dir DATA`). `refusal-lens datasets fetch`
downloads from these URLs and checks every file against the manifest.

    python tools/data_sources.py --data-dir DATA
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

GITHUB = "https://raw.githubusercontent.com"
MANIFEST = Path(__file__).resolve().parents[1] / "src" / "refusal_lens" / "data" / "sources.json"
GUTENBERG = [
    "austen-emma",
    "austen-persuasion",
    "austen-sense",
    "blake-poems",
    "chesterton-ball",
    "chesterton-brown",
    "chesterton-thursday",
    "melville-moby_dick",
    "milton-paradise",
    "shakespeare-caesar",
    "shakespeare-hamlet",
    "shakespeare-macbeth",
    "whitman-leaves",
]
ALPACA_EVAL_MODELS = [
    "Meta-Llama-3-8B-Instruct",
    "Mistral-7B-Instruct-v0.2",
    "claude-2",
    "gpt4_1106_preview",
    "llama-2-70b-chat-hf",
]
XSTEST_MODELS = ["gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct"]


def mmlu_subjects(data_dir: Path) -> list[str]:
    folder = data_dir / "capability" / "mmlu" / "test"
    return sorted(p.name.removesuffix("_test.csv") for p in folder.glob("*_test.csv"))


def spec(data_dir: Path) -> list[tuple[str, str, str, str, str, list[tuple[str, str]]]]:
    """(group, what it is for, license, repository, commit, [(layout path, repository path)])."""
    rd = "andyrdt/refusal_direction", "9d852fae1a9121c78b29142de733cb1340770cc3"
    mmlu = mmlu_subjects(data_dir)
    return [
        (
            "advbench",
            "AdvBench harmful behaviors (Zou et al., 2023)",
            "MIT",
            "llm-attacks/llm-attacks",
            "0f505d82e25c15a83b6954db28191b69927a255d",
            [("advbench/harmful_behaviors.csv", "data/advbench/harmful_behaviors.csv")],
        ),
        (
            "jailbreakbench",
            "JBB-Behaviors, harmful (Chao et al., 2024)",
            "MIT",
            *rd,
            [("jailbreakbench/behaviors.csv", "dataset/raw/jailbreakbench.csv")],
        ),
        (
            "jailbreakbench",
            "JBB-Behaviors, benign",
            "MIT",
            "Baisayan/hack",
            "2b37da1c255e43e16a74ecd3e51c99ea992b5237",
            [("jailbreakbench/benign-behaviors.csv", "data/benign-behaviors.csv")],
        ),
        (
            "strongreject",
            "StrongREJECT forbidden prompts (Souly et al., 2024)",
            "MIT",
            "busycalibrating/AdversariaLLM",
            "eaee0d37ae91778f8f845ebfbf92ff5dd94ab8d8",
            [
                (
                    "strongreject/strongreject_dataset.csv",
                    "data/behavior_datasets/strongreject_dataset.csv",
                )
            ],
        ),
        (
            "xstest",
            "XSTest prompts and labelled completions (Rottger et al., 2024)",
            "CC-BY-4.0",
            "paul-rottger/exaggerated-safety",
            "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d",
            [("xstest/xstest_prompts.csv", "xstest_prompts.csv")]
            + [
                (
                    f"xstest/model_completions/xstest_v2_completions_{m}.csv",
                    f"model_completions/xstest_v2_completions_{m}.csv",
                )
                for m in XSTEST_MODELS
            ],
        ),
        (
            "refusal_direction",
            "harmful/harmless splits and processed benchmarks (Arditi et al.)",
            "Apache-2.0 (re-packaged sets keep their own terms)",
            *rd,
            [
                (f"refusal_direction/splits/{k}_{s}.json", f"dataset/splits/{k}_{s}.json")
                for k in ("harmful", "harmless")
                for s in ("train", "val", "test")
            ]
            + [
                (f"refusal_direction/processed/{n}.json", f"dataset/processed/{n}.json")
                for n in ("harmbench_test", "harmbench_val", "malicious_instruct", "tdc2023")
            ],
        ),
        (
            "gptfuzz",
            "GPTFuzzer templates, questions and human-labelled responses",
            "MIT",
            "sherdencooper/GPTFuzz",
            "1eddeb565740ae311b5f4950492b011a6f866fe7",
            [
                (f"gptfuzz/datasets/{p}", f"datasets/{p}")
                for p in (
                    "prompts/GPTFuzzer.csv",
                    "questions/question_list.csv",
                    "responses_labeled/train.csv",
                    "responses_labeled/evaluate.csv",
                )
            ],
        ),
        (
            "refusal_sae",
            "adversarial suffixes (Yeo et al., 2025)",
            "none stated (research use)",
            "wj210/refusal_sae",
            "f7b8c81fb00d860ba27d0f7396102b4c221ec372",
            [("refusal_sae/advsuffixes.csv", "advsuffixes.csv")],
        ),
        (
            "general_text",
            "AlpacaEval model outputs (SAE training chat text)",
            "CC-BY-NC-4.0",
            "tatsu-lab/alpaca_eval",
            "cd543a149df89434d8a54582c0151c0b945c3d20",
            [
                (
                    f"general_text/alpaca_eval/results/{m}/model_outputs.json",
                    f"results/{m}/model_outputs.json",
                )
                for m in ALPACA_EVAL_MODELS
            ],
        ),
        (
            "general_text",
            "GPTeacher role-play (SAE training chat text)",
            "MIT",
            "teknium1/GPTeacher",
            "481075123c29854bddb82655badeef6a438f2436",
            [
                (
                    "general_text/gpteacher/Roleplay/roleplay-simple-deduped-roleplay-instruct.json",
                    "Roleplay/roleplay-simple-deduped-roleplay-instruct.json",
                )
            ],
        ),
        (
            "general_text",
            "Project Gutenberg books of NLTK (SAE training prose)",
            "public domain",
            "nltk/nltk",
            "4dc39fbf6965509f7b74316eff239bd110a03b49",
            [
                (f"general_text/gutenberg/{n}.txt", f"nltk_data/corpora/gutenberg/{n}.txt")
                for n in GUTENBERG
            ],
        ),
        (
            "hh_rlhf",
            "HH-RLHF harmless-base test dialogues (SAE training chat text)",
            "MIT",
            "anthropics/hh-rlhf",
            "354e5c3cb8960630860dd5774a6ac2a58313bf4d",
            [("hh_rlhf/harmless-base/test.jsonl", "harmless-base/test.jsonl.gz")],
        ),
        (
            "capability",
            "ARC-Challenge test",
            "CC-BY-SA-4.0",
            "LzyFischer/icml_kd",
            "30f6ce59d478ce4ad1c53dd1f4195d97cb29c530",
            [("capability/arc_challenge/test.jsonl", "data/arc_challenge/test.jsonl")],
        ),
        (
            "capability",
            "GSM8K test",
            "MIT",
            "openai/grade-school-math",
            "3101c7d5072418e28b9008a6636bde82a006892c",
            [("capability/gsm8k/test.jsonl", "grade_school_math/data/test.jsonl")],
        ),
        (
            "capability",
            "MMLU test and dev",
            "MIT",
            "HaeChan0305/MLILAB-FedLLM",
            "d92730e8bacd7b3a61e551e015e40588e10234b4",
            [
                (f"capability/mmlu/{s}/{n}_{s}.csv", f"data/mmlu/{s}/{n}_{s}.csv")
                for n in mmlu
                for s in ("test", "dev")
            ],
        ),
        (
            "capability",
            "OpenBookQA and TruthfulQA",
            "Apache-2.0",
            "benedictflorance/truthfulqa_experiments",
            "6fdfd38288e86296582a584694df5cf43d1f634a",
            [
                ("capability/openbookqa/openbookqa.jsonl", "datasets/openbookqa.jsonl"),
                ("capability/truthfulqa/TruthfulQA.csv", "datasets/TruthfulQA.csv"),
            ],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a data directory holding every file")
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    files = []
    for group, what, license_, repo, commit, pairs in spec(data_dir):
        for layout, remote in pairs:
            content = (data_dir / layout).read_bytes()
            files.append(
                {
                    "path": layout,
                    "group": group,
                    "url": f"{GITHUB}/{repo}/{commit}/{remote}",
                    "gunzip": remote.endswith(".gz"),
                    "sha256": hashlib.sha256(content).hexdigest(),
                    "bytes": len(content),
                    "what": what,
                    "license": license_,
                }
            )
    MANIFEST.write_text(json.dumps({"format": 1, "files": files}, indent=1) + "\n")
    total = sum(f["bytes"] for f in files)
    print(f"wrote {MANIFEST} ({len(files)} files, {total / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
