"""Commands of the sparse autoencoders: train and evaluate SAE sets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from .args import (
    Command,
    add_data_arg,
    add_model_args,
    executor_flags,
    finite,
    positive,
    settings_flags,
    settings_from,
)
from .common import executor_for, load_lm, open_executor


def cmd_train_saes(args: argparse.Namespace) -> int:
    from ..saes.mixture import parse_mixture
    from ..saes.presets import (
        default_sae_folder,
        parse_count,
        parse_layers,
        preset,
        train_sae_set,
        with_overrides,
    )

    where = executor_for(args)
    _check_train_args(args)
    lm, formatter = load_lm(args)
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
    with open_executor(args, where, lm, formatter) as executor:
        sae_set = train_sae_set(
            lm,
            recipe,
            out,
            data_dir=args.data_dir,
            activations=args.activations,
            executor=executor,
        )
    seconds = sae_set.info.get("seconds", {})
    print(
        f"trained {len(sae_set)} SAEs at {', '.join(p.name for p in sae_set.points)} "
        f"(collect {seconds.get('collect', 0):.0f}s, train {seconds.get('train', 0):.0f}s) "
        f"-> {out}"
    )
    return 0


def _check_train_args(args: argparse.Namespace) -> None:
    """Every flag of train-saes that can be checked without the model, checked before it
    loads: layer list syntax, counts, the mixture (each source readable), the output folders."""
    from ..runs import check_output_folder
    from ..saes.mixture import documents, parse_mixture
    from ..saes.presets import parse_count, parse_layers

    if args.layers and args.layers != "all" and not parse_layers(args.layers, 1 << 30):
        raise UserError(f"--layers {args.layers!r} names no layer; write e.g. 6-18 or 6,9,12")
    for flag, text in (
        ("--width", args.width and args.width.rstrip("xX")),
        ("--tokens", args.tokens),
        ("--collect-tokens", args.collect_tokens),
    ):
        if text is not None and parse_count(text) <= 0:
            raise UserError(f"{flag} must be positive, got {text!r}")
    if args.lr is not None and args.lr <= 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    if args.sink_factor is not None and args.sink_factor < 0:
        raise UserError(
            f"--sink-factor must be 0 (keep every token) or more, got {args.sink_factor}"
        )
    if args.mixture:
        for source in parse_mixture(args.mixture):
            next(iter(documents(source.name, args.data_dir, "train")), None)
    flags = (args.layers, args.architecture, args.width, args.k, args.lr, args.sae_batch_size)
    flags += (args.tokens, args.collect_tokens, args.mixture, args.cache_dtype)
    if args.out is None and (args.preset != "quick" or any(f is not None for f in flags)):
        raise UserError("pass --out FOLDER (only the plain quick preset goes to the cache)")
    if args.out is not None:
        check_output_folder(args.out)
    if args.activations is not None:
        check_output_folder(args.activations, "--activations")


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
    from ..data import resolve_data_dir
    from ..runs import check_output_folder
    from ..saes.evaluation import EvalConfig, evaluate_sae_set
    from ..saes.presets import parse_layers
    from ..saes.report import format_table, write_report
    from ..saes.sets import SAESet

    cfg = settings_from(EvalConfig, args)
    if args.layers and args.layers != "all" and not parse_layers(args.layers, 1 << 30):
        raise UserError(f"--layers {args.layers!r} names no layer; write e.g. 8-16 or 9,12,15")
    given = SAESet.load(args.saes) if args.saes else None  # read before the model loads
    if args.out or args.saes:
        check_output_folder(args.out or args.saes)
    resolve_data_dir(args.data_dir)
    lm, _ = load_lm(args)
    folder = args.saes
    if folder is None:
        from ..saes.presets import default_sae_folder

        folder = default_sae_folder(lm, args.cache_dir)
        if not folder.exists():
            raise UserError(
                f"no cached SAEs for {lm.name}; train them with refusal-lens train-saes "
                "--data-dir DATA, or pass an SAE set folder"
            )
    sae_set = given if given is not None else SAESet.load(folder)
    if args.layers:
        sae_set = sae_set.subset(parse_layers(args.layers, lm.n_layers))
    report = evaluate_sae_set(lm, sae_set, args.data_dir, cfg)
    out = Path(args.out or folder)
    write_report(report, out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        print(f"wrote {out / 'eval.json'} and {out / 'eval.png'}")
    return 0


EXAMPLES = {
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
}


def _eval_flags(parser: argparse.ArgumentParser) -> None:
    from ..saes.evaluation import EvalConfig

    settings_flags(parser, EvalConfig, skip=("batch_size", "sets", "seed"))


def register(command: Command) -> None:
    """This group's subcommands, flags and examples (`parser.build_parser` calls it)."""
    train = command(
        "train-saes",
        cmd_train_saes,
        "Train one SAE per chosen layer on the model's activations over a chat-aware text "
        "mixture (collection and training both resume when rerun).",
    )
    add_model_args(train)
    add_data_arg(train)
    executor_flags(train)
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
    train.add_argument("--k", type=positive, help="active latents per token (TopK/BatchTopK)")
    train.add_argument("--tokens", help="training tokens, e.g. 2M (default: the preset's)")
    train.add_argument(
        "--collect-tokens", help="activations to collect (reused across epochs; default: preset)"
    )
    train.add_argument("--lr", type=finite)
    train.add_argument("--sae-batch-size", type=positive, help="tokens per training step")
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
        type=finite,
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
        type=positive,
        help="repeat post-instruction tokens this many times in the stream (default 4)",
    )

    evaluate = command(
        "eval-saes",
        cmd_eval_saes,
        "Evaluate an SAE set on held-out generic text, chat text and the post-instruction "
        "positions of held-out harmful and harmless requests.",
    )
    evaluate.add_argument(
        "saes", nargs="?", help="SAE set folder (default: this model's cached quick SAEs)"
    )
    add_model_args(evaluate)
    add_data_arg(evaluate)
    command.defer(evaluate, _eval_flags)
    evaluate.add_argument("--layers", help="evaluate these layers only, e.g. 8-16 or 9,12,15")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.add_argument("--out", help="folder for eval.json and eval.png (default: the set)")
