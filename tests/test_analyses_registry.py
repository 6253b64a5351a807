"""The analyses registry: `analyze` runs its entries in order, over one shared input object."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from refusal_lens.analyses import registry, suite
from refusal_lens.analyses.registry import ANALYSES, AnalysisEntry, Flag
from refusal_lens.cli.parser import build_parser
from refusal_lens.errors import UserError


@dataclass(frozen=True)
class _Settings:
    size: int = 10
    source: str = "a"
    seed: int = 0


def _module(name: str, calls: list[tuple[str, Any, Path]], fail: bool = False) -> str:
    module = types.ModuleType(f"fake_analysis_{name}")
    module.SETTINGS = _Settings  # type: ignore[attr-defined]
    module.QUICK = {"size": 2}  # type: ignore[attr-defined]

    def run(inputs: Any, settings: _Settings, out: Path) -> dict[str, Any]:
        calls.append((name, settings, out))
        if fail:
            raise UserError("no common latent")
        return {"wall_seconds": 0.0}

    module.run = run  # type: ignore[attr-defined]
    if name == "variants":
        module.output_name = lambda s: f"variants-{s.source}"  # type: ignore[attr-defined]
        module.analyze_overrides = lambda quick: [["source=a"], ["source=b"]]  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    return module.__name__


def test_analyze_runs_the_registry_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, Any, Path]] = []
    entries = {
        "categories": AnalysisEntry(
            "categories", "h", _module("categories", calls, fail=True), "x:y", "e", may_fail=True
        ),
        "needs-harm": AnalysisEntry(
            "needs-harm", "h", _module("h", calls), "x:y", "e", harm="needed"
        ),
        "variants": AnalysisEntry("variants", "h", _module("variants", calls), "x:y", "e"),
        "last": AnalysisEntry("last", "h", _module("last", calls), "x:y", "e"),
    }
    monkeypatch.setattr(suite, "ANALYSES", entries)
    monkeypatch.setattr(registry, "ANALYSES", entries)
    found = suite.RunInputs("tiny", "saes", "direction", "ours.json")
    monkeypatch.setattr(suite.RunInputs, "of", classmethod(lambda cls, run: found))
    for loader in ("SAESet", "Direction", "LatentSet"):
        monkeypatch.setattr(suite, loader, types.SimpleNamespace(load=lambda path: object()))
    done = suite.analyze_job(
        object(),
        object(),
        tmp_path,
        quick=True,
        data_dir=None,
        echo=lambda _: None,  # type: ignore[arg-type]
    )
    assert [name for name, _, _ in calls] == ["categories", "variants", "variants", "last"]
    assert [out.name for _, _, out in calls] == ["categories", "variants-a", "variants-b", "last"]
    assert all(settings.size == 2 for _, settings, _ in calls)  # the quick preset
    assert done == {
        "categories": "not finished: no common latent",
        "refusal latents": "ours (benchmark)",
        "needs-harm": "skipped: no harm latents (run the categories analysis)",
        "variants": "done",
        "last": "done",
    }
    with pytest.raises(UserError, match="unknown analysis 'nope'"):
        suite.analyze_job(object(), object(), tmp_path, only=("nope",), data_dir=None)  # type: ignore[arg-type]


def test_every_entry_is_a_command_with_its_flags() -> None:
    parser = build_parser()
    for entry in ANALYSES.values():
        module = entry.load()
        assert callable(module.run) and isinstance(module.QUICK, dict)
        fields = module.SETTINGS.__dataclass_fields__
        args = parser.parse_args([entry.name, "--run", "R"])
        assert args.command == entry.name and args.set == [] and args.quick is False
        for flag in entry.flags:
            assert flag.setting in fields, f"{entry.name} {flag.flag} sets no setting"
        module_name, function = entry.section.split(":")
        assert callable(getattr(__import__(module_name, fromlist=[function]), function))


def test_flag_becomes_a_settings_override() -> None:
    from refusal_lens.cli.analyses import _flag_overrides

    entry = AnalysisEntry(
        "x", "h", "m", "a:b", "e", flags=(Flag("--source", "sources", "h", repeat=True),)
    )
    args = build_parser().parse_args(["probes", "--source", "gptfuzz", "--source", "f.jsonl"])
    assert _flag_overrides(args, entry) == ["sources=gptfuzz,f.jsonl"]
