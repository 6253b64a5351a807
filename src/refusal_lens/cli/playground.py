"""The playground command: the browser app over a run folder's latent sets and direction."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .args import Command, add_data_arg, add_model_args, settings_flags, settings_from
from .common import load_lm


def cmd_playground(args: argparse.Namespace) -> int:
    from ..analyses.suite import benchmark_inputs
    from ..direction import Direction
    from ..judges import JudgeContext, check_judge_spec, make_judge
    from ..latents import LatentSet
    from ..playground import Playground
    from ..playground_app import PlaygroundSettings, build_app, example_prompts, judge_specs
    from ..saes import SAESet

    settings = settings_from(PlaygroundSettings, args)
    found = benchmark_inputs(args.run) if args.run else {}
    if args.run and args.model is None:
        args.model = found["model"]
    saes_path = args.saes or found.get("saes")
    extra = {Path(p).parent.name if Path(p).name == "latents.json" else Path(p).stem: p
             for p in args.latents or []}  # fmt: skip
    if not args.run and not extra and args.direction is None:
        raise UserError("pass a run folder (or --latents / --direction) to play with")
    sets = {name: LatentSet.load(path) for name, path in extra.items()}
    if sets and saes_path is None:
        saes_path = next(iter(sets.values())).saes.get("path")
    specs = judge_specs(settings, args.run)
    for spec in specs:
        check_judge_spec(spec)
    examples = example_prompts(args.data_dir, settings.examples)
    lm, formatter = load_lm(args)
    saes = SAESet.load(saes_path) if saes_path else None
    playground = (
        Playground.from_run(lm, formatter, args.run, saes, args.data_dir)
        if args.run
        else Playground(lm, formatter, saes, data_dir=args.data_dir)
    )
    playground.latent_sets.update(sets)
    if args.direction:
        playground.direction = Direction.load(args.direction)
    for latent_set in playground.latent_sets.values():
        latent_set.check_model(lm)
        if saes is not None:
            latent_set.check_saes(saes)
    context = JudgeContext(lm=lm, formatter=formatter, data_dir=args.data_dir)
    judges = {spec: make_judge(spec, context) for spec in specs}
    app = build_app(playground, examples=examples, judges=judges)
    print(
        f"playground of {lm.name}: {len(playground.latent_sets)} latent sets, "
        f"direction {'yes' if playground.direction else 'no'}; "
        f"http://{settings.host}:{settings.port}"
    )
    app.queue(default_concurrency_limit=1).launch(
        server_name=settings.host, server_port=settings.port, inbrowser=False, quiet=True
    )
    return 0


EXAMPLES = {
    "playground": """
        refusal-lens playground runs/quickstart --data-dir DATA
        refusal-lens playground --latents runs/latents/latents.json --direction runs/quickstart
    """,
}


def _playground_flags(parser: argparse.ArgumentParser) -> None:
    from ..playground_app import PlaygroundSettings

    settings_flags(parser, PlaygroundSettings)


def register(command: Command) -> None:
    """This group's subcommand (`parser.build_parser` calls it)."""
    play = command(
        "playground",
        cmd_playground,
        "A browser app on localhost: one conversation answered by the base model and under an "
        "intervention you dial in (latent sets with K*, c or v and per-latent switches; the "
        "refusal direction), streamed side by side, with latent highlights and a strength "
        "sweep.",
    )
    play.add_argument("run", nargs="?", help="benchmark / run folder (its latent sets, direction)")
    add_model_args(play)
    add_data_arg(play)
    play.add_argument("--saes", help="SAE set folder (default: the run's)")
    play.add_argument(
        "--latents", action="append", help="one more latent set (latents.json); repeatable"
    )
    play.add_argument("--direction", metavar="RUN", help="refusal direction (default: the run's)")
    command.defer(play, _playground_flags)
