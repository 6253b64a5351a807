"""`refusal-lens analyze RUN`: every analysis on a benchmark (or `run`) folder, in the order
of the method, each into RUN/analyses/NAME and resumable on its own:

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
from ..features import FeatureSet
from ..models import ChatFormatter, LoadedModel
from ..saes import SAESet
from .categories import QUICK_CATEGORIES, CategorySettings, categories_job
from .circuits import QUICK_CIRCUITS, CircuitSettings, circuits_job
from .jailbreaks import QUICK_JAILBREAKS, JailbreakSettings, jailbreaks_job
from .minimal import QUICK_MINIMAL, MinimalSettings, minimal_job
from .probes import QUICK_PROBES, ProbeSettings, probes_job

ANALYSES = ("categories", "circuits", "jailbreaks", "probes", "minimal")


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
                f"{run} has no SAE set or ours feature set; run the benchmark with method ours"
            )
        return cls(found["model"], found["saes"], found["direction"], found["latents"])


def benchmark_inputs(run: str | Path) -> dict[str, str]:
    """The model, SAE set (when it has one), direction and `ours` feature set path of a
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


def _settings(cls: type, quick: bool, preset: dict[str, Any], overrides: list[str]) -> Any:
    return load_settings(cls, overrides=overrides, defaults=preset if quick else None)


def analyze_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    run: str | Path,
    *,
    only: tuple[str, ...] = ANALYSES,
    quick: bool = False,
    data_dir: str | Path | None,
    device: str = "auto",
    cache_dir: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    for name in only:
        if name not in ANALYSES:
            raise UserError(f"unknown analysis {name!r}; choose from {', '.join(ANALYSES)}")
    inputs = RunInputs.of(run)
    folder = Path(run) / "analyses"
    saes = SAESet.load(inputs.saes)
    direction = Direction.load(inputs.direction)
    ours = FeatureSet.load(inputs.ours)
    common = {"data_dir": data_dir, "echo": echo}
    shared = {**common, "device": device, "cache_dir": cache_dir}
    done: dict[str, Any] = {}
    if "categories" in only:
        echo("== categories")
        settings = _settings(CategorySettings, quick, QUICK_CATEGORIES, [])
        try:
            categories_job(
                lm,
                formatter,
                saes,
                inputs.saes,
                ours,
                direction,
                inputs.direction,
                settings,
                folder / "categories",
                **shared,
            )
            done["categories"] = "done"
        except UserError as error:  # e.g. no common latent: the later steps fall back to ours
            echo(f"categories: {error}")
            done["categories"] = f"not finished: {error}"
    refusal_path = folder / "categories" / "common" / "latents.json"
    harm_path = folder / "categories" / "harm" / "latents.json"
    refusal = FeatureSet.load(refusal_path) if refusal_path.is_file() else ours
    harm = FeatureSet.load(harm_path) if harm_path.is_file() else None
    done["refusal latents"] = "common (categories)" if refusal is not ours else "ours (benchmark)"
    if "circuits" in only:
        if harm is None:
            done["circuits"] = "skipped: no harm latents (run the categories analysis)"
        else:
            echo("== circuits")
            settings = _settings(CircuitSettings, quick, QUICK_CIRCUITS, [])
            circuits_job(
                lm,
                formatter,
                saes,
                refusal,
                harm,
                settings,
                folder / "circuits",
                direction=direction,
                **common,
            )
            done["circuits"] = "done"
    if "jailbreaks" in only:
        for source in ("suffixes",) if quick else ("suffixes", "gptfuzz"):
            echo(f"== jailbreaks ({source})")
            settings = _settings(JailbreakSettings, quick, QUICK_JAILBREAKS, [f"source={source}"])
            jailbreaks_job(
                lm,
                formatter,
                saes,
                refusal,
                direction,
                settings,
                folder / f"jailbreaks-{source}",
                harm=harm,
                **shared,
            )
        done["jailbreaks"] = "done"
    if "probes" in only:
        echo("== probes")
        settings = _settings(ProbeSettings, quick, QUICK_PROBES, [])
        probes_job(lm, formatter, saes, refusal, direction, settings, folder / "probes", **shared)
        done["probes"] = "done"
    if "minimal" in only:
        echo("== minimal")
        settings = _settings(MinimalSettings, quick, QUICK_MINIMAL, [])
        minimal_job(lm, formatter, saes, ours, settings, folder / "minimal", **shared)
        done["minimal"] = "done"
    return done
