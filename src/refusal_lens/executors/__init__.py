"""Executors: where the work items of a long command run.

A long command (benchmark, run, analyze, judge-agreement) asks its executor to `map` one
registered task (`replica.TASKS`: a batch of generations, a chunk of verdicts, a shard of a
measurement) over the items the results store lacks, and writes each result as it comes back,
in this process. `local` runs them here on the loaded model, as refusal-lens always did; `ray`
runs them on a pool of Ray actors that each hold a model replica, on this machine or a
cluster.

Adding an executor is one module with a factory and an entry in `EXECUTORS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from .base import Executor, WorkerStats
from .local import LocalExecutor
from .replica import TASKS, Replica, ReplicaSpec, task
from .settings import RAY_INSTALL, ExecutorSettings, parse_executor

__all__ = [
    "EXECUTORS",
    "RAY_INSTALL",
    "TASKS",
    "Executor",
    "ExecutorSettings",
    "LocalExecutor",
    "Replica",
    "ReplicaSpec",
    "WorkerStats",
    "check_executor",
    "make_executor",
    "parse_executor",
    "replica_spec",
    "task",
]


def _local(settings: ExecutorSettings, lm: Any, formatter: Any, spec: ReplicaSpec) -> Executor:
    return LocalExecutor(Replica(lm=lm, formatter=formatter))


def _ray(settings: ExecutorSettings, lm: Any, formatter: Any, spec: ReplicaSpec) -> Executor:
    from .ray_actors import RayExecutor

    return RayExecutor(settings, spec)


# name -> factory(settings, driver's model, its formatter, the replicas' spec)
EXECUTORS: dict[str, Callable[[ExecutorSettings, Any, Any, ReplicaSpec], Executor]] = {
    "local": _local,
    "ray": _ray,
}


def check_executor(settings: ExecutorSettings) -> None:
    """Before any long work: the executor exists, its engine is installed and its cluster can
    be reached (a Ray cluster is joined, or started, here)."""
    if settings.name not in EXECUTORS:
        raise UserError(f"unknown executor {settings.name!r}; known: {', '.join(EXECUTORS)}")
    if settings.name == "ray":
        from .ray_actors import start_ray

        start_ray(settings)


def replica_spec(
    lm: Any, formatter: Any, *, cache_dir: str | None, data_dir: str | None
) -> ReplicaSpec:
    """What a worker needs to load the driver's model exactly as the driver did."""
    from ..settings import cache_dir as user_cache

    identity = lm.identity()
    source = str(lm.source)
    # a folder or file the driver named relatively: the same file, from wherever a worker runs
    local = source.split(":", 1)[1] if source.startswith(("folder:", "gguf:")) else None
    return ReplicaSpec(
        model=local or lm.name,
        weights_sha256=lm.weights_sha256,
        dtype=identity["dtype"],
        device=identity["device"],
        system=formatter.system,
        cache_dir=str(user_cache(cache_dir)),
        data_dir=None if data_dir is None else str(Path(data_dir).resolve()),
        cwd=os.getcwd(),
    )


def make_executor(
    settings: ExecutorSettings,
    lm: Any,
    formatter: Any,
    *,
    cache_dir: str | None = None,
    data_dir: str | None = None,
) -> Executor:
    """The executor of `settings` for the loaded model (the local one runs on it itself)."""
    spec = replica_spec(lm, formatter, cache_dir=cache_dir, data_dir=data_dir)
    return EXECUTORS[settings.name](settings, lm, formatter, spec)
