"""The local executor: every item in this process, on the driver's own model, in order (what
refusal-lens did before executors existed, item for item)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .base import Executor, Finished
from .replica import Replica


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, replica: Replica) -> None:
        super().__init__()
        self.replica = replica

    def share_judges(self, judges: dict[str, Any]) -> None:
        self.replica.judges = judges

    def _run(
        self,
        task: str,
        shared: dict[str, Any],
        items: Sequence[dict[str, Any]],
        finished: Finished,
        pool: str,
    ) -> None:
        for index, item in enumerate(items):
            start = time.perf_counter()
            result = self.replica.run(task, shared, item)
            finished(index, result, "local", time.perf_counter() - start)
