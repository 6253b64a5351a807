"""Commands of the refusal latents: find, validate, compare, cards, steer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from .common import load_lm


def cmd_find_latents(args: argparse.Namespace) -> int:
    from ..attribution import AttributionSettings
    from ..features import SearchSettings, SelectionSettings
    from ..pipeline import LatentsChoice, latents_job

    lm, formatter = load_lm(args)
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
    from ..attribution import AttributionSettings, validate_attribution
    from ..direction import Direction
    from ..features import FeatureSet
    from ..runs import write_json
    from ..saes import SAESet

    features = FeatureSet.load(args.latents)
    if not features.per_prompt:
        raise UserError(
            f"the {features.method} feature set has no attributions; validate a set made with "
            "--method ours or ap"
        )
    lm, formatter = load_lm(args)
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
    from ..cards import CardSettings, build_cards, write_cards
    from ..data import resolve_data_dir
    from ..direction import Direction
    from ..features import FeatureSet
    from ..pipeline import split_prompts
    from ..saes import SAESet

    features = FeatureSet.load(args.latents)
    lm, formatter = load_lm(args)
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
    from ..pipeline import CompareSettings, compare_job

    if not args.latents and not args.direction:
        raise UserError("nothing to compare: give feature sets (latents.json) or --direction RUN")
    lm, formatter = load_lm(args)
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

    from ..interventions import EditLatents

    if position is None:
        return edit
    if position < 0 and isinstance(edit, EditLatents):
        return replace(edit, last_prompt_tokens=-position)
    if position < 0:
        raise UserError("--from-position with a negative P cannot be combined with --per-prompt")
    return replace(edit, from_position=position)


def cmd_steer(args: argparse.Namespace) -> int:
    from ..data import load_prompts
    from ..evaluation.refusal import measure_refusal
    from ..features import FeatureSet
    from ..runs import RunDir
    from ..saes import SAESet

    features = FeatureSet.load(args.latents)
    prompts = load_prompts(
        args.dataset, data_dir=args.data_dir, column=args.column, limit=args.limit
    )
    features.check_held_out(prompts)
    lm, formatter = load_lm(args)
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
        from ..evaluation.side_effects import base_completions, completion_kl

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
