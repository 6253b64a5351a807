"""The local executor: every item in this process, on the driver's own model, in order (what
refusal-lens did before executors existed, item for item)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from .base import Executor, OnResult
from .replica import Replica


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, replica: Replica) -> None:
        super().__init__()
        self.replica = replica

    def share_judges(self, judges: dict[str, Any]) -> None:
        self.replica.judges = judges

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
    ) -> None:
        sizes = list(units) if units is not None else [1] * len(items)
        stats = self.worker(task, "local")
        with tqdm(total=sum(sizes), desc=desc, unit="item", disable=len(items) == 0) as bar:
            for index, item in enumerate(items):
                start = time.perf_counter()
                result = self.replica.run(task, shared, item)
                stats.add(sizes[index], time.perf_counter() - start)
                on_result(index, result)
                bar.update(sizes[index])
