"""The argument parser: every subcommand, its flags and examples."""

from __future__ import annotations

import argparse
import math
import textwrap
from typing import NoReturn

from ..settings import DEFAULT_MODEL
from .common import add_settings_args

EXAMPLES = {
    "direction": """
        refusal-lens direction --out runs/direction        # default model, built-in prompts
        refusal-lens direction --data-dir DATA --out runs/qwen05
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
    "judge": """
        refusal-lens judge runs/q/completions.jsonl --data-dir DATA --out runs/q/judged
        refusal-lens judge pairs.csv --judge substring --judge learned:threshold=0.7 --out runs/j
        refusal-lens judge answers.jsonl --by condition --by dataset --data-dir DATA --out runs/j
    """,
    "train-judge": """
        refusal-lens train-judge --data-dir DATA
        refusal-lens train-judge --data-dir DATA --set train_sets=gptfuzz-train,my_labels.csv
    """,
    "analyze": """
        refusal-lens analyze runs/quickstart --quick --data-dir DATA
        refusal-lens analyze runs/bench --only categories,circuits --data-dir DATA
    """,
    "run": """
        refusal-lens run --quick                              # the embedded default, minutes
        refusal-lens run --data-dir DATA                      # the full benchmark
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
    "datasets": """
        refusal-lens datasets                      # the names --dataset accepts
        refusal-lens datasets fetch data           # download every set into ./data, verified
        refusal-lens datasets fetch data --only advbench,jailbreakbench
        refusal-lens datasets check ../shared/datasets   # what a data folder lacks
    """,
}


METHOD_CHOICES = ("ours", "cossim", "actdiff", "ap", "random")


def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,  # None = not given: a run folder's or config's model, else DEFAULT_MODEL
        help="registered alias, HF hub id, local HF folder or .gguf file (default: the run's or "
        f"config's model, else {DEFAULT_MODEL})",
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
        help="benchmark data folder in the layout of the guide's Data section (default: "
        "$REFUSAL_LENS_DATA; without one, built-in prompts are used)",
    )


def _add_judge_arg(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--judge",
        action="append",
        metavar="SPEC",
        help="judge spec, repeatable: name or name:key=value,... (see `refusal-lens judges`; "
        f"default: {default}); --model is the compliance judge's fluency model",
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
        type=_finite,
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
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _finite(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line on stderr, `error: ...` naming the
    command and pointing at its --help, exit code 2 (argparse prints the usage block too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="refusal-lens", description="Find, ablate and explain refusal in chat language models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, examples: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text.replace("%", "%%"),  # argparse formats help, not descriptions
            description=help_text,
            epilog=_examples(examples or EXAMPLES[name]),
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
    direction.add_argument("--kl-threshold", type=_finite, default=0.1)
    direction.add_argument(
        "--induce-threshold",
        type=_finite,
        default=None,
        help="refusal score that adding the direction must reach on harmless prompts "
        "(default: midpoint of the harmless and refused-harmful baselines; Arditi: 0)",
    )
    direction.add_argument("--prune-layer-fraction", type=_finite, default=0.2)
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
    train.add_argument("--lr", type=_finite)
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
        type=_finite,
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
        "write them as a latent set (RUN/latents.json).",
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
    find.add_argument("--match", help="latent set the random control matches (method random)")
    find.add_argument("--scale", type=_finite, default=-3.0, help="default scale saved in the set")
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
    find.add_argument("--kl-limit", type=_finite, default=0.1, help="harmless KL a choice may cost")
    find.add_argument("--n-val", type=_positive, default=32, help="validation prompts per class")

    check = command(
        "validate-attribution",
        "Compare a latent set's attribution scores with the real effect of patching each "
        "latent from its clean to its direction-ablated value (rank correlation, top-k overlap).",
    )
    _add_model_args(check)
    check.add_argument("--latents", required=True, help="latent set from find-latents (ours/ap)")
    check.add_argument("--saes", help="SAE set folder (default: the one the latent set names)")
    check.add_argument("--n-prompts", type=_positive, default=16)
    check.add_argument("--top", type=_positive, default=20, help="latents compared per prompt")
    check.add_argument("--top-k", type=_positive, default=5, help="k of the top-k overlap")
    check.add_argument("--out", help="JSON file for the report (default: next to the set)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    cards = command(
        "latent-cards",
        "Latent cards for a latent set: top contexts (corpus, harmful, harmless), logit lens, "
        "cosine with the refusal direction, firing rates; JSON and a self-contained HTML page.",
    )
    _add_model_args(cards)
    _add_data_arg(cards)
    cards.add_argument("--latents", required=True, help="latent set (latents.json)")
    cards.add_argument("--saes", help="SAE set folder (default: the one the latent set names)")
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
        "Refusal rates (95% bootstrap intervals) of base, direction ablation and latent sets on "
        "benchmark datasets, each with its KL on harmless prompts; optional refusal induction.",
    )
    _add_model_args(compare)
    _add_data_arg(compare)
    compare.add_argument("latents", nargs="*", help="latent sets (latents.json) to compare")
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
    compare.add_argument("--scale", type=_finite, help="use this scale for every set")
    compare.add_argument(
        "--per-prompt",
        action="store_true",
        help="each prompt with its own latent set (sets selected on these prompts)",
    )
    compare.add_argument("--out", required=True, help="run folder (reused when rerun)")

    steer = command(
        "steer",
        "Generate with SAE latents scaled or set (a latent set from find-latents) and measure "
        "the refusal rate.",
    )
    _add_model_args(steer)
    _add_data_arg(steer)
    steer.add_argument("--latents", required=True, help="latent set (latents.json)")
    steer.add_argument("--saes", help="SAE set folder (default: the one the latent set names)")
    steer.add_argument("--dataset", required=True, help="dataset name or local file")
    steer.add_argument("--column", default=None)
    steer.add_argument("--limit", type=_positive, default=None, help="first N prompts only")
    steer.add_argument("--k", type=_positive, help="use the top K latents (default: the set's)")
    how = steer.add_mutually_exclusive_group()
    how.add_argument("--scale", type=_finite, help="multiply the latents by this")
    how.add_argument("--set-value", type=_finite, help="set the latents to this value")
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
        help="pin this other latent set's latents to their clean values (a clean twin of each "
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
        "GPTFuzz responses held out by question, or any labelled file), with 95% bootstrap "
        "intervals.",
    )
    _add_model_args(agree)
    _add_data_arg(agree)
    _add_judge_arg(agree, "substring, compliance and learned")
    agree.add_argument(
        "--sets",
        default="xstest,gptfuzz",
        help="labelled sets, comma list: xstest, gptfuzz, gptfuzz-train, or .csv/.json/.jsonl "
        "files with prompt, response and label columns",
    )
    agree.add_argument("--limit", type=_positive, default=None, help="random N items per set")
    agree.add_argument("--out", required=True, help="run folder (reused when rerun)")

    judge = command(
        "judge",
        "Judge a file of (prompt, response) pairs with any judges: rate of compliance (95% "
        "interval), refusal and degenerate answers per judge; with a label column, agreement "
        "with the labels. Verdicts go to OUT/verdicts.jsonl.",
    )
    judge.add_argument("file", help=".csv/.json/.jsonl with prompt and response (or completion)")
    _add_model_args(judge)
    _add_data_arg(judge)
    _add_judge_arg(judge, "substring and learned")
    judge.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="also give the rates per value of this column (repeatable: per combination)",
    )
    judge.add_argument("--out", required=True, help="run folder (reused when rerun)")

    trainer = command(
        "train-judge",
        "Train the learned compliance judge (a small encoder fine-tuned on GPTFuzz's human "
        "labels, plus any labelled files) into the user cache; the `learned` judge is this one.",
    )
    _add_data_arg(trainer)
    trainer.add_argument(
        "--cache-dir",
        default=None,
        help="cache folder (default: $REFUSAL_LENS_CACHE or the user cache dir)",
    )
    add_settings_args(
        trainer,
        "train-judge",
        "REFUSAL_LENS_JUDGE_",
        "--set epochs=3 --set train_sets=gptfuzz-train,mine.csv",
    )

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
    bench.add_argument("--quick", action="store_true", help="small sizes (CI, the main job)")
    add_settings_args(
        bench,
        "benchmark",
        "REFUSAL_LENS_BENCH_",
        "--set limit=100 --set capabilities.tasks=arc_challenge",
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

    from ..analyses.registry import ANALYSES
    from .analyses import analysis_arguments, analyze_arguments

    for entry in ANALYSES.values():
        analysis = command(entry.name, entry.help, entry.examples)
        _add_model_args(analysis)
        _add_data_arg(analysis)
        analysis_arguments(analysis, entry)
    analyze = command(
        "analyze",
        "Every analysis on a benchmark or run folder, in the method's order (categories, "
        "circuits, jailbreaks, probes, minimal), each into RUN/analyses/NAME, then the report "
        "again with their sections.",
    )
    _add_model_args(analyze)
    _add_data_arg(analyze)
    analyze_arguments(analyze)

    command("judges", "List the registered judges and their options.")
    command("models", "List the registered models.")
    datasets = command(
        "datasets",
        "List the dataset names that --dataset accepts; fetch the benchmark data directory "
        "(every file the pipeline reads, from its public source at a pinned commit, each "
        "checked by sha256) or check a data folder against it.",
    )
    datasets.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=("list", "fetch", "check"),
        help="list (default): the dataset names; fetch DIR: download into DIR (resumes); "
        "check DIR: the files DIR lacks or holds another version of",
    )
    datasets.add_argument("folder", nargs="?", help="the data folder (fetch, check)")
    datasets.add_argument(
        "--only", default="", help="comma-separated groups (top folders), e.g. advbench,xstest"
    )
    datasets.add_argument(
        "--mirror",
        help="a copy to read instead of the internet: a folder laid out as "
        "MIRROR/host/path, or an http(s) base URL",
    )
    return parser
