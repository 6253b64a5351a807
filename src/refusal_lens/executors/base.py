"""The executor interface: `map` runs one task over many items and hands each result, as it
comes, to a callback in this process (the one writer of the results store)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

OnResult = Callable[[int, Any], None]  # (index of the item, its result)
Finished = Callable[[int, Any, str, float], None]  # (index, result, worker, its seconds)


@dataclass
class WorkerStats:
    """What one worker did: items, their units (prompts, pairs) and its busy seconds."""

    items: int = 0
    units: int = 0
    seconds: float = 0.0
    retried: int = 0  # items it lost (it died) that went to another worker

    def add(self, units: int, seconds: float) -> None:
        self.items += 1
        self.units += units
        self.seconds += seconds

    def to_dict(self) -> dict[str, Any]:
        rate = self.units / self.seconds if self.seconds > 0 else None
        return {
            "items": self.items,
            "units": self.units,
            "busy_seconds": round(self.seconds, 2),
            "units_per_second": None if rate is None else round(rate, 3),
            "retried_elsewhere": self.retried,
        }


class Executor(ABC):
    """Runs work items (see `replica.TASKS`). `name` is the registry's; `stats` is per task
    kind and worker."""

    name: str

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, WorkerStats]] = {}

    def map(
        self,
        task: str,
        shared: dict[str, Any],
        items: Sequence[dict[str, Any]],
        on_result: OnResult,
        *,
        desc: str,
        units: Sequence[int] | None = None,
        pool: str = "model",
        bar: bool = True,
    ) -> None:
        """Run `task` on every item (with `shared`, the arguments all items share) and call
        `on_result(index, result)` in this process as each finishes, in any order, once per
        item. `units`: each item's size for the progress bar and the stats (default 1).
        `pool`: `model` (the replicas of the evaluated model) or `judge` (the judges' own
        replicas, where there are any). `bar`: False where the caller shows its own progress."""
        sizes = list(units) if units is not None else [1] * len(items)
        with tqdm(total=sum(sizes), desc=desc, unit="item", disable=not (items and bar)) as shown:

            def finished(index: int, result: Any, worker: str, seconds: float) -> None:
                self.worker(task, worker).add(sizes[index], seconds)
                on_result(index, result)
                shown.update(sizes[index])

            self._run(task, shared, items, finished, pool)

    @abstractmethod
    def _run(
        self,
        task: str,
        shared: dict[str, Any],
        items: Sequence[dict[str, Any]],
        finished: Finished,
        pool: str,
    ) -> None:
        """Compute every item and call `finished(index, result, worker, seconds)` for each."""

    @property
    def parallelism(self) -> int:
        """How many items run at once (the model pool's workers)."""
        return 1

    def share_judges(self, judges: dict[str, Any]) -> None:  # noqa: B027  (workers make theirs)
        """The driver's judges, for an executor that runs items on the driver's objects."""

    def close(self) -> None:  # noqa: B027  (nothing to release by default)
        """Release the workers."""

    def worker(self, task: str, worker: str) -> WorkerStats:
        return self.stats.setdefault(task, {}).setdefault(worker, WorkerStats())

    def summary(self) -> dict[str, Any]:
        """Per task kind and worker, what was done (for the run's manifest)."""
        return {
            "executor": self.name,
            "workers": {
                task: {worker: s.to_dict() for worker, s in by_worker.items()}
                for task, by_worker in self.stats.items()
            },
        }

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
