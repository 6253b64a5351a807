"""Commands of the analyses (method.md section 6): probes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from .common import load_lm
from .parser import DEFAULT_MODEL_NAME


def _from_benchmark(run: str | None) -> dict[str, str]:
    """The SAE set, direction and `ours` feature set of a benchmark (or `run`) folder."""
    if run is None:
        return {}
    folder = Path(run)
    summary_path = folder / "benchmark.json"
    if not summary_path.is_file():
        raise UserError(f"{folder} is not a finished benchmark run (no benchmark.json)")
    summary = json.loads(summary_path.read_text())
    found = {
        "latents": str(folder / "latents" / "heldout" / "ours" / "latents.json"),
        "direction": summary["direction"]["source"],
        "model": summary["model"]["name"],
    }
    if summary.get("saes"):
        found["saes"] = summary["saes"]["path"]
    return found


def cmd_probes(args: argparse.Namespace) -> int:
    from ..analyses.probes import QUICK_PROBES, ProbeSettings, probes_job
    from ..config import load_settings
    from ..direction import Direction
    from ..features import FeatureSet
    from ..saes import SAESet

    found = _from_benchmark(args.run)
    overrides = list(args.set)
    if args.source:
        overrides.append(f"sources={','.join(args.source)}")
    settings = load_settings(
        ProbeSettings,
        file=args.config,
        table="probes",
        env_prefix="REFUSAL_LENS_PROBES_",
        overrides=overrides,
        defaults=QUICK_PROBES if args.quick else None,
    )
    paths = {
        name: getattr(args, name) or found.get(name) for name in ("saes", "latents", "direction")
    }
    for name, path in paths.items():
        if path is None:
            raise UserError(f"pass --{name} (or --run, a benchmark folder that has one)")
    if args.run and args.model == DEFAULT_MODEL_NAME:
        args.model = found["model"]
    out = args.out or (str(Path(args.run) / "analyses" / "probes") if args.run else None)
    if out is None:
        raise UserError("pass --out (or --run, whose analyses/probes folder is then used)")
    lm, formatter = load_lm(args)
    summary = probes_job(
        lm,
        formatter,
        SAESet.load(paths["saes"]),
        FeatureSet.load(paths["latents"]),
        Direction.load(paths["direction"]),
        settings,
        out,
        data_dir=args.data_dir,
        device=args.device,
        cache_dir=args.cache_dir,
    )
    print((Path(out) / "probes.md").read_text(), end="")
    print(f"wall time {summary['wall_seconds']:.0f} s; results: {Path(out) / 'probes.json'}")
    return 0


def probes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", default=None, help="benchmark / run folder: its SAE set, direction and ours set"
    )
    parser.add_argument("--saes", default=None, help="SAE set folder")
    parser.add_argument("--latents", default=None, help="feature set (latents.json) to probe")
    parser.add_argument("--direction", metavar="RUN", default=None, help="refusal direction run")
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        help="adversarial prompts: gptfuzz, suffixes or a .csv/.json/.jsonl file with a prompt "
        "column (repeatable; default gptfuzz and suffixes)",
    )
    parser.add_argument("--config", default=None, help="TOML file (a [probes] table)")
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one setting, e.g. --set n_train=256 (file < $REFUSAL_LENS_PROBES_NAME "
        "< --set)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: RUN/analyses/probes)")
