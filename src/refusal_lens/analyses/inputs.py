"""What every analysis reads, built once and passed to each: the model, the SAE set, the
refusal direction, the latent sets and where data, devices and caches are."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..direction import Direction
    from ..executors import Executor
    from ..latents import LatentSet
    from ..models import ChatFormatter, LoadedModel
    from ..saes import SAESet


@dataclass(frozen=True)
class AnalysisInputs:
    lm: LoadedModel
    formatter: ChatFormatter
    saes: SAESet
    saes_path: str
    direction: Direction
    direction_path: str
    latents: LatentSet  # the refusal latents the analyses study
    ours: LatentSet  # the benchmark's own set (categories starts from it; minimal prunes it)
    harm: LatentSet | None = None  # the harm latents of `categories`, where there are some
    data_dir: str | Path | None = None
    device: str = "auto"
    cache_dir: str | None = None
    echo: Callable[[str], None] = print
    executor: Executor | None = None  # where work items run (None: here, on `lm`)

    def runtime(self) -> dict[str, Any]:
        """Where a job reads data, runs and caches, and how it reports: the keyword arguments
        every analysis job takes (`job(..., **inputs.runtime())`)."""
        return {
            "data_dir": self.data_dir,
            "device": self.device,
            "cache_dir": self.cache_dir,
            "executor": self.executor,
            "echo": self.echo,
        }

    def with_categories(self, analyses: Path) -> AnalysisInputs:
        """The refusal and harm latents of a finished `categories` analysis in `analyses`
        (its common set replaces the refusal latents), or these inputs unchanged."""
        from ..latents import LatentSet

        common = analyses / "categories" / "common" / "latents.json"
        harm = analyses / "categories" / "harm" / "latents.json"
        return replace(
            self,
            latents=LatentSet.load(common) if common.is_file() else self.latents,
            harm=LatentSet.load(harm) if harm.is_file() else self.harm,
        )
