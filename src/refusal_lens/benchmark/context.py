"""What every stage of the benchmark shares: the store-backed work context (model, store,
judges, generation settings) plus the benchmark's settings, run folder and data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..evaluation.work import Work
from ..runs import RunDir
from .config import BenchmarkConfig


@dataclass
class Context(Work):
    config: BenchmarkConfig
    run: RunDir
    data_dir: str | Path | None
    screen_generation: str  # id of the short refusal-only generations (XSTest, induction)
    cache_dir: str | None = None  # the user cache (models, quick SAEs, found directions)
