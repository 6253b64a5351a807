"""`refusal-lens analyze RUN`: every analysis of the registry (`analyses.registry`) on a
benchmark (or `run`) folder, in the order of the method, each into RUN/analyses/NAME and
resumable on its own:

1. categories: per-category sets -> the common (refusal) and harm latent sets;
2. circuits: harm latents upstream -> common refusal latents downstream;
3. jailbreaks (readable suffixes, then GPTFuzz templates) on the common and harm sets;
4. probes on the common set;
5. minimal: the benchmark's own refusal set (ours, its searched scale) pruned.

Where an analysis needs the categories' sets and they are missing (the step was not asked for
or found no common latent), the benchmark's ours set stands in for the refusal latents and
the summary says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_settings
from ..direction import Direction
from ..errors import UserError
from ..executors import Executor
from ..latents import LatentSet
from ..models import ChatFormatter, LoadedModel
from ..saes import SAESet
from .inputs import AnalysisInputs
from .registry import ANALYSES, AnalysisEntry


@dataclass(frozen=True)
class RunInputs:
    """What a benchmark folder holds that the analyses read."""

    model: str
    saes: str
    direction: str
    ours: str

    @classmethod
    def of(cls, run: str | Path) -> RunInputs:
        found = benchmark_inputs(run)
        if "saes" not in found or not Path(found["latents"]).is_file():
            raise UserError(
                f"{run} has no SAE set or ours latent set; run the benchmark with method ours"
            )
        return cls(found["model"], found["saes"], found["direction"], found["latents"])


def benchmark_inputs(run: str | Path) -> dict[str, str]:
    """The model, SAE set (when it has one), direction and `ours` latent set path of a
    benchmark (or `run`) folder, from its benchmark.json."""
    folder = Path(run)
    path = folder / "benchmark.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a finished benchmark run (no benchmark.json)")
    try:
        summary = json.loads(path.read_text())
        model = str(summary["model"]["name"])
        saes = summary.get("saes") and str(summary["saes"]["path"])
        recorded = summary.get("direction") and str(summary["direction"]["source"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path} is not a benchmark summary ({exc!r}); rerun the benchmark"
        ) from exc
    # the run's own direction folder wins: a recorded relative path breaks when the run
    # folder moves or the command runs elsewhere
    own = folder / "direction"
    direction = str(own) if (own / "direction.json").is_file() else recorded
    if not direction:
        raise UserError(f"{path} records no direction and {own} has none; pass --direction")
    found = {
        "model": model,
        "direction": direction,
        "latents": str(folder / "latents" / "heldout" / "ours" / "latents.json"),
    }
    if saes:
        found["saes"] = saes
    return found


def analysis_settings(
    entry: AnalysisEntry,
    *,
    quick: bool,
    overrides: list[str],
    config: str | None = None,
) -> Any:
    """An analysis' settings: its defaults, the quick preset when `quick`, a TOML file's
    [NAME] table, ``REFUSAL_LENS_NAME_*`` variables, then `overrides` (NAME=VALUE)."""
    module = entry.load()
    return load_settings(
        module.SETTINGS,
        file=config,
        table=entry.name,
        env_prefix=f"REFUSAL_LENS_{entry.name.upper()}_",
        overrides=overrides,
        defaults=module.QUICK if quick else None,
    )


def analyze_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    run: str | Path,
    *,
    only: tuple[str, ...] | None = None,  # default: every analysis
    quick: bool = False,
    data_dir: str | Path | None,
    device: str = "auto",
    cache_dir: str | None = None,
    echo: Callable[[str], None] = print,
    executor: Executor | None = None,
) -> dict[str, Any]:
    only = tuple(n for n, e in ANALYSES.items() if e.in_suite) if only is None else only
    for name in only:
        if name not in ANALYSES:
            raise UserError(f"unknown analysis {name!r}; choose from {', '.join(ANALYSES)}")
    found = RunInputs.of(run)
    folder = Path(run) / "analyses"
    ours = LatentSet.load(found.ours)
    inputs = AnalysisInputs(
        lm=lm,
        formatter=formatter,
        saes=SAESet.load(found.saes),
        saes_path=found.saes,
        direction=Direction.load(found.direction),
        direction_path=found.direction,
        latents=ours,
        ours=ours,
        data_dir=data_dir,
        device=device,
        cache_dir=cache_dir,
        echo=echo,
        executor=executor,
    )
    done: dict[str, Any] = {}
    for entry in ANALYSES.values():
        if entry.name != "categories":  # later analyses read the categories' sets
            inputs = inputs.with_categories(folder)
            done.setdefault(
                "refusal latents",
                "common (categories)" if inputs.latents is not ours else "ours (benchmark)",
            )
        if entry.name not in only:
            continue
        if entry.harm == "needed" and inputs.harm is None:
            done[entry.name] = "skipped: no harm latents (run the categories analysis)"
            continue
        for overrides in entry.analyze_overrides(quick):
            settings = analysis_settings(entry, quick=quick, overrides=overrides)
            name = entry.output_name(settings)
            variant = name.removeprefix(f"{entry.name}-")
            echo(f"== {entry.name}" + ("" if name == entry.name else f" ({variant})"))
            try:
                entry.load().run(inputs, settings, folder / name)
            except UserError as error:
                if not entry.may_fail:
                    raise
                echo(f"{entry.name}: {error}")  # e.g. no common latent: later steps use ours
                done[entry.name] = f"not finished: {error}"
                break
        else:
            done[entry.name] = "done"
    return done
