"""The package has no import cycle, function-local imports included."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _metrics():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "code_metrics", REPO / "tools" / "code_metrics.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles() -> None:
    metrics = _metrics()
    assert metrics.cycles(metrics.import_graph(REPO / "src")) == []


def test_the_cycle_finder_finds_a_cycle_behind_a_local_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import x\n")
    (package / "b.py").write_text("x = 1\n\ndef f():\n    from . import a\n")
    (package / "c.py").write_text("from .a import x\n")
    metrics = _metrics()
    assert metrics.cycles(metrics.import_graph(tmp_path)) == [["pkg.a", "pkg.b"]]
