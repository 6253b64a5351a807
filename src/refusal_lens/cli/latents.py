"""Commands of the refusal latents: find, validate, compare, cards, steer."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from .args import (
    Command,
    add_data_arg,
    add_model_args,
    executor_flags,
    positive,
    settings_flags,
    settings_from,
)
from .common import check_datasets, executor_for, load_lm, open_executor, run_config


def cmd_find_latents(args: argparse.Namespace) -> int:
    from ..attribution import AttributionSettings
    from ..jobs import LatentsChoice, latents_job
    from ..latents import LatentSet, SearchSettings, SelectionSettings
    from ..runs import check_output_folder

    settings = settings_from(
        SelectionSettings,
        args,
        seed=args.seed,
        batch_size=args.batch_size,
        attribution=settings_from(
            AttributionSettings, args, batch_size=AttributionSettings.batch_for(args.batch_size)
        ),
    )
    choice = settings_from(LatentsChoice, args)
    search = settings_from(SearchSettings, args, batch_size=args.batch_size)
    if choice.search and (not search.ks or not search.values):
        raise UserError("--search needs a K* grid and a scale grid (--search-ks, --search-scales)")
    _check_saes_arg(args.saes)
    if args.direction:
        from ..direction import Direction

        Direction.load(args.direction)
    if choice.match:
        LatentSet.load(choice.match)
    check_datasets(args.data_dir, choice.harmful, choice.harmless)
    check_output_folder(args.out)
    where = executor_for(args)
    lm, formatter = load_lm(args)
    with open_executor(args, where, lm, formatter) as executor:
        latent_set = latents_job(
            lm,
            formatter,
            args.out,
            choice=choice,
            settings=settings,
            data_dir=args.data_dir,
            seed=args.seed,
            search_settings=search,
            executor=executor,
        )
    top = ", ".join(f"{layer}:{latent}" for layer, latent in latent_set.top())
    print(
        f"{latent_set.method} ({latent_set.protocol}): {len(latent_set.top())} latents on "
        f"{latent_set.selected_on['harmful']['n']} prompts of "
        f"{latent_set.selected_on['harmful']['name']}: {top}"
    )
    chosen = latent_set.intervention
    print(
        f"intervention: {chosen['mode']} {chosen['value']:g}, K*={chosen['k']} "
        f"({chosen['chosen_by']})"
    )
    print(f"written: {Path(args.out) / 'latents.json'}")
    return 0


def _check_saes_arg(folder: str | None) -> None:
    """--saes names an SAE set (its saeset.json readable), one SAELens-format SAE, or a
    registry spec (`sae-lens:RELEASE[:ID_PATTERN]`, fetched once into the cache now)."""
    if folder is None:
        return
    from ..saes.io import CFG_FILE
    from ..saes.registry import is_registry_spec
    from ..saes.sets import SET_FILE, SAESet, read_set_index

    path = SAESet.from_registry(folder) if is_registry_spec(folder) else Path(folder)
    if (path / SET_FILE).is_file():
        read_set_index(path / SET_FILE)
    elif not (path / CFG_FILE).is_file():
        raise UserError(
            f"no SAE set at {path} ({SET_FILE} missing); pass the folder that train-saes wrote"
        )


def _load_saes(folder: str | None, latent_set: Any) -> Any:
    """The SAE set of --saes or the one a latent set names, loaded before the model."""
    from ..saes import SAESet

    path = folder or latent_set.saes.get("path")
    if not path:
        raise UserError("the latent set names no SAE set folder; pass --saes SAES")
    return SAESet.load(path)


def _info_direction(latent_set: Any) -> Any:
    from ..direction import Direction

    source = (latent_set.info.get("direction") or {}).get("source")
    if not source:
        raise UserError(
            f"the {latent_set.method} latent set does not record its refusal direction "
            "(info.direction.source); rerun find-latents"
        )
    return Direction.load(source)


def validation_dtype(requested: str) -> str:
    """The dtype `validate-attribution` runs the model in: float32 unless one is named. Patching
    one latent moves the refusal metric by a few hundredths of a logit, below bfloat16's
    resolution at logits of ten or more: in bfloat16 the patched effects read as rounding noise
    (docs/guide.md, section 8: Validation)."""
    return "float32" if requested == "auto" else requested


def cmd_validate_attribution(args: argparse.Namespace) -> int:
    from ..attribution import AttributionSettings, ValidationSettings, validate_attribution
    from ..latents import LatentSet
    from ..runs import check_output_file, write_json

    check = settings_from(ValidationSettings, args)
    latent_set = LatentSet.load(args.latents)
    if not latent_set.per_prompt:
        raise UserError(
            f"the {latent_set.method} latent set has no attributions; validate a set made with "
            "--method ours or ap"
        )
    target = Path(args.out) if args.out else Path(args.latents).with_name("validation.json")
    if Path(args.latents).is_dir() and not args.out:
        target = Path(args.latents) / "validation.json"
    check_output_file(target, "--out", (args.latents,))
    saes = _load_saes(args.saes, latent_set)
    direction = _info_direction(latent_set)
    saved = (latent_set.info.get("settings") or {}).get("attribution")
    token = (latent_set.info.get("refusal_token") or {}).get("id")
    if saved is None or token is None:
        raise UserError(
            "the latent set does not record its attribution settings or refusal token "
            "(info.settings.attribution, info.refusal_token.id); rerun find-latents"
        )
    try:
        batch = AttributionSettings.batch_for(args.batch_size)
        settings = AttributionSettings(**{**saved, "batch_size": batch})
    except TypeError as error:
        raise UserError(
            f"{args.latents}: info.settings.attribution is not a set of attribution settings "
            f"({error}); rerun find-latents"
        ) from None
    args.dtype = validation_dtype(args.dtype)
    lm, formatter = load_lm(args)
    latent_set.check_model(lm)
    saes.check_model(lm)
    prompts = [row["prompt"] for row in latent_set.per_prompt][: check.n_prompts]
    report = validate_attribution(
        lm,
        formatter,
        saes,
        direction,
        prompts,
        int(token),
        list(latent_set.top(min(check.top, len(latent_set.latents)))),
        settings=settings,
        top_k=check.top_k,
    )
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
    from ..cards import CardSettings, build_cards, write_cards
    from ..data import resolve_data_dir
    from ..jobs import split_prompts
    from ..latents import LatentSet
    from ..runs import check_output_folder

    settings = settings_from(CardSettings, args, batch_size=args.batch_size)
    latent_set = LatentSet.load(args.latents)
    if args.k:
        latent_set.top(args.k)
    saes = _load_saes(args.saes, latent_set)
    direction = _info_direction(latent_set)
    check_datasets(args.data_dir, args.harmful, args.harmless)
    check_output_folder(args.out)
    lm, formatter = load_lm(args)
    latent_set.check_model(lm)
    saes.check_model(lm)
    harmful = split_prompts("harmful", "val", args.data_dir, args.harmful, settings.n_prompts)
    harmless = split_prompts("harmless", "val", args.data_dir, args.harmless, settings.n_prompts)
    cards = build_cards(
        lm,
        formatter,
        saes,
        latent_set.top(args.k),
        direction,
        harmful,
        harmless,
        data_dir=resolve_data_dir(args.data_dir),
        settings=settings,
    )
    title = f"{lm.name}: {latent_set.method} latents ({latent_set.protocol})"
    json_path, html_path = write_cards(cards, args.out, title)
    print(f"{len(cards)} latent cards: {json_path}, {html_path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..direction import Direction
    from ..jobs import CompareSettings, compare_job
    from ..latents import LatentSet
    from ..runs import check_output_folder

    settings = settings_from(CompareSettings, args, batch_size=args.batch_size)
    if settings.harmless_kl == "":
        settings = replace(settings, harmless_kl=None)
    if not args.latents and not args.direction:
        raise UserError("nothing to compare: give latent sets (latents.json) or --direction RUN")
    if not settings.datasets:
        raise UserError("--datasets names no dataset; e.g. --datasets jailbreakbench,advbench")
    if bool(settings.induce_values) != bool(settings.induce_on):
        raise UserError(
            "refusal induction needs both --induce-on (a harmless set) and --induce-values "
            "(e.g. 4,8,16); give both or neither"
        )
    for path in args.latents:
        LatentSet.load(path)
    if args.direction:
        Direction.load(args.direction)
    _check_saes_arg(args.saes)
    check_datasets(args.data_dir, *settings.datasets, settings.harmless_kl, settings.induce_on)
    check_output_folder(args.out)
    lm, formatter = load_lm(args)
    compare_job(
        lm,
        formatter,
        args.out,
        latent_sets=args.latents,
        direction=args.direction,
        settings=settings,
        data_dir=args.data_dir,
        saes=args.saes,
        seed=args.seed,
    )
    print((Path(args.out) / "compare.md").read_text(), end="")
    print(f"written: {Path(args.out) / 'compare.json'}, {Path(args.out) / 'compare.md'}")
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    from ..data import load_prompts
    from ..latents import LatentSet
    from ..runs import RunDir, check_output_folder
    from ..steering import SteerSettings, check_steer, steer_job

    settings = settings_from(SteerSettings, args)
    latent_set = LatentSet.load(args.latents)
    prompts = load_prompts(
        args.dataset, data_dir=args.data_dir, column=args.column, limit=settings.limit
    )
    check_steer(latent_set, prompts, settings)
    saes = _load_saes(args.saes, latent_set)
    check_datasets(args.data_dir, settings.harmless_kl)
    if args.out:
        check_output_folder(args.out)
    lm, formatter = load_lm(args)
    run = RunDir(args.out) if args.out else None
    if run is not None:
        run.write_manifest("steer", run_config(args, settings), lm.identity(), args.seed)
    data = steer_job(
        lm,
        formatter,
        latent_set,
        saes,
        prompts,
        settings,
        data_dir=args.data_dir,
        run=run,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(data))
        return 0
    low, high = data["ci95"]
    print(
        f"{prompts.name} ({data['condition']}): refusal rate {data['refusal_rate']:.3f} "
        f"[{low:.3f}, {high:.3f}] n={data['n']} judge={data['judge']['name']}"
    )
    if "harmless_kl" in data:
        print(f"harmless KL ({data['harmless_kl']['dataset']}): {data['harmless_kl']['mean']:.4f}")
    return 0


EXAMPLES = {
    "find-latents": """
        refusal-lens find-latents --saes saes/quick --direction runs/quickstart --out runs/latents
        refusal-lens find-latents --method cossim --direction runs/quickstart --out runs/cossim
        refusal-lens find-latents --method random --match runs/latents/latents.json \\
            --direction runs/quickstart --out runs/random-0 --seed 0
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
    "steer": """
        refusal-lens steer --latents runs/latents/latents.json --dataset jailbreakbench \\
            --limit 100 --json --out runs/steer-jbb
        refusal-lens steer --latents runs/latents/latents.json --set-value 12 --dataset alpaca \\
            --limit 100 --out runs/induce
    """,
}


def _find_latents_flags(parser: argparse.ArgumentParser) -> None:
    from ..attribution import AttributionSettings
    from ..jobs import LatentsChoice
    from ..latents import SearchSettings, SelectionSettings

    settings_flags(
        parser, SelectionSettings, skip=("keep_ranked", "mode", "seed", "batch_size", "attribution")
    )
    settings_flags(
        parser, LatentsChoice, skip=("saes", "direction", "exclude", "harmful_val", "harmless_val")
    )
    settings_flags(parser, AttributionSettings, skip=("batch_size",))
    settings_flags(parser, SearchSettings, skip=("max_new_tokens", "batch_size"))


def _compare_flags(parser: argparse.ArgumentParser) -> None:
    from ..jobs import CompareSettings

    settings_flags(parser, CompareSettings, skip=("batch_size",))


def _validation_flags(parser: argparse.ArgumentParser) -> None:
    from ..attribution import ValidationSettings

    settings_flags(parser, ValidationSettings)


def _card_flags(parser: argparse.ArgumentParser) -> None:
    from ..cards import CardSettings

    settings_flags(parser, CardSettings, skip=("batch_size", "seed"))


def _steer_flags(parser: argparse.ArgumentParser) -> None:
    from ..steering import SteerSettings

    settings_flags(parser, SteerSettings)


def register(command: Command) -> None:
    """This group's subcommands, flags and examples (`parser.build_parser` calls it)."""
    find = command(
        "find-latents",
        cmd_find_latents,
        "Select the SAE latents that mediate refusal (LA-IG or a baseline) on train prompts and "
        "write them as a latent set (RUN/latents.json).",
    )
    add_model_args(find)
    add_data_arg(find)
    find.add_argument("--out", required=True, help="run folder (reused when rerun)")
    find.add_argument("--saes", help="SAE set folder (default: this model's cached quick SAEs)")
    find.add_argument(
        "--direction", metavar="RUN", help="refusal direction run (default: found into OUT)"
    )
    command.defer(find, _find_latents_flags)
    executor_flags(find)

    check = command(
        "validate-attribution",
        cmd_validate_attribution,
        "Compare a latent set's attribution scores with the real effect of patching each "
        "latent from its clean to its direction-ablated value (rank correlation, top-k overlap).",
    )
    add_model_args(check)
    check.add_argument("--latents", required=True, help="latent set from find-latents (ours/ap)")
    check.add_argument("--saes", help="SAE set folder (default: the one the latent set names)")
    command.defer(check, _validation_flags)
    check.add_argument("--out", help="JSON file for the report (default: next to the set)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    cards = command(
        "latent-cards",
        cmd_latent_cards,
        "Latent cards for a latent set: top contexts (corpus, harmful, harmless), logit lens, "
        "cosine with the refusal direction, firing rates; JSON and a self-contained HTML page.",
    )
    add_model_args(cards)
    add_data_arg(cards)
    cards.add_argument("--latents", required=True, help="latent set (latents.json)")
    cards.add_argument("--saes", help="SAE set folder (default: the one the latent set names)")
    cards.add_argument(
        "--k", type=positive, help="cards for the top K latents (default: the set's)"
    )
    cards.add_argument("--harmful", help="harmful prompts (default: harmful_val)")
    cards.add_argument("--harmless", help="harmless prompts (default: harmless_val)")
    command.defer(cards, _card_flags)
    cards.add_argument("--out", required=True, help="folder for cards.json and cards.html")

    compare = command(
        "compare",
        cmd_compare,
        "Refusal rates (95% bootstrap intervals) of base, direction ablation and latent sets on "
        "benchmark datasets, each with its KL on harmless prompts; optional refusal induction.",
    )
    add_model_args(compare)
    add_data_arg(compare)
    compare.add_argument("latents", nargs="*", help="latent sets (latents.json) to compare")
    compare.add_argument("--direction", metavar="RUN", help="also ablate this refusal direction")
    compare.add_argument("--saes", help="SAE set folder (default: the one each set names)")
    command.defer(compare, _compare_flags)
    compare.add_argument("--out", required=True, help="run folder (reused when rerun)")

    steer = command(
        "steer",
        cmd_steer,
        "Generate with SAE latents scaled or set (a latent set from find-latents) and measure "
        "the refusal rate.",
    )
    add_model_args(steer)
    add_data_arg(steer)
    steer.add_argument("--latents", required=True, help="latent set (latents.json)")
    steer.add_argument("--saes", help="SAE set folder (default: the one the latent set names)")
    steer.add_argument("--dataset", required=True, help="dataset name or local file")
    steer.add_argument("--column", default=None, help="text column of a local CSV/JSON file")
    command.defer(steer, _steer_flags)
    steer.add_argument("--out", default=None, help="run folder for completions (resumable)")
    steer.add_argument("--json", action="store_true", help="print one JSON object")
