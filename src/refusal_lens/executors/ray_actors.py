"""The Ray executor: a pool of actors, each holding one model replica (and its judges), fed
one item at a time as each frees up; results come back to the driver, which writes them.

Fault tolerance is Ray's: an actor whose process dies is restarted by Ray (`max_restarts`),
and the item it held is handed to the next free actor, another one when there is one. An item
is reported once, whatever happens to the workers; the store's keys make a rerun after a
killed driver compute only what is missing.

What travels between processes is JSON text (the item, its result) and the names of
registered tasks; model weights and SAEs are read by each worker from the same files as the
driver's (a shared filesystem on a cluster), checked by their hashes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import UserError
from .base import Executor, Finished
from .replica import Replica, ReplicaSpec
from .settings import RAY_INSTALL, ExecutorSettings


class ReplicaActor:
    """The actor class (made remote when the executor starts)."""

    def __init__(self, spec_json: str) -> None:
        self.replica = Replica(ReplicaSpec.from_json(spec_json))

    def run(self, name: str, shared: str, item: str) -> str:
        return self.replica.run_json(name, shared, item)

    def pid(self) -> int:
        return os.getpid()


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(
            f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}"
        ) from None
    return ray


def check_address(address: str | None) -> None:
    """A cluster address that cannot be reached is a one-line error before any work starts."""
    if address is None or address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--executor ray={address}: give the cluster as HOST:PORT (or ray=auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as error:
        raise UserError(
            f"cannot reach the Ray cluster at {address} ({error.strerror or error}); start it "
            "with `ray start --head` there, or use --executor ray to start a local one"
        ) from None


MAX_TRIES = 3  # an item whose worker dies this many times stops the run (a crash, not bad luck)
_STARTED = {"cluster": False}  # whether `start_ray` started the local cluster now running


def start_ray(settings: ExecutorSettings) -> Any:
    """Join the cluster of `settings` (or start a local one sized for the pools)."""
    ray = import_ray()
    address = settings.address
    check_address(address)
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        gpus = max(settings.worker_gpus, 0) * settings.workers
        kwargs["num_cpus"] = settings.workers * settings.worker_threads + settings.judge_workers
        kwargs["num_gpus"] = int(gpus + settings.judge_gpus * settings.judge_workers + 0.999)
    try:
        ray.init(address=address, **kwargs)
        _STARTED["cluster"] = address is None
    except ConnectionError as error:
        raise UserError(
            f"no Ray cluster to join at {address} ({error}); start one with `ray start --head`, "
            "or use --executor ray to start a local one"
        ) from None
    return ray


@dataclass
class _Pool:
    actors: list[Any]
    names: list[str]


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, settings: ExecutorSettings, spec: ReplicaSpec) -> None:
        super().__init__()
        self.settings, self.spec = settings, spec
        self.pools: dict[str, _Pool] = {}
        self.ray = start_ray(self.settings)
        gpus = self.settings.worker_gpus
        if gpus < 0:  # auto: one GPU per replica where the cluster has any
            gpus = 1.0 if self.ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        self.pools["model"] = self._pool(
            "model", self.settings.workers, gpus, self.settings.worker_threads
        )
        if self.settings.judge_workers:
            self.pools["judge"] = self._pool(
                "judge", self.settings.judge_workers, self.settings.judge_gpus, 1
            )

    def _pool(self, role: str, n: int, gpus: float, threads: int) -> _Pool:
        # several GPUs per replica: its layers spread over them (accelerate's device map)
        device = "balanced" if gpus > 1 else "cuda" if gpus > 0 else "cpu"
        spec = replace(self.spec, device=device, threads=threads)
        remote = self.ray.remote(ReplicaActor).options(
            num_cpus=threads, num_gpus=gpus, max_restarts=-1, max_task_retries=0
        )
        actors = [remote.remote(spec.to_json()) for _ in range(n)]
        return _Pool(actors, [f"{role}-{i}" for i in range(n)])

    @property
    def parallelism(self) -> int:
        return len(self.pools["model"].actors)

    def pids(self, pool: str = "model") -> list[int]:
        """The process of each actor of a pool (tests kill one)."""
        return self.ray.get([actor.pid.remote() for actor in self.pools[pool].actors])

    def _run(
        self,
        task: str,
        shared: dict[str, Any],
        items: Sequence[dict[str, Any]],
        finished: Finished,
        pool: str,
    ) -> None:
        from ray.exceptions import (
            ActorDiedError,
            ActorUnavailableError,
            RayActorError,
            RayTaskError,
        )

        chosen = self.pools.get(pool) or self.pools["model"]
        shared_json = _dumps(shared)
        queue = deque(range(len(items)))
        idle = deque(range(len(chosen.actors)))
        running: dict[Any, tuple[int, int]] = {}  # future -> (item, actor): one at a time each
        tries: dict[int, int] = {}
        lost = (ActorDiedError, ActorUnavailableError, RayActorError)
        while queue or running:
            while queue and idle:
                index, actor = queue.popleft(), idle.popleft()
                item = _dumps(items[index])
                running[chosen.actors[actor].run.remote(task, shared_json, item)] = (index, actor)
            ready, _ = self.ray.wait(list(running), num_returns=1)
            for future in ready:
                index, actor = running.pop(future)
                idle.append(actor)
                try:
                    reply = json.loads(self.ray.get(future))
                except RayTaskError as error:
                    raise _task_error(error) from None
                except lost as error:
                    self.worker(task, chosen.names[actor]).retried += 1
                    tries[index] = tries.get(index, 0) + 1
                    if tries[index] > MAX_TRIES:
                        raise UserError(
                            f"a {task} item was lost {tries[index]} times with its worker "
                            f"({type(error).__name__}); see the workers' logs under "
                            "/tmp/ray/session_latest/logs"
                        ) from None
                    queue.appendleft(index)  # to the next free actor; Ray restarts this one
                    time.sleep(0.1)
                    continue
                finished(index, reply["result"], chosen.names[actor], reply["seconds"])

    def close(self) -> None:
        for pool in self.pools.values():
            for actor in pool.actors:
                self.ray.kill(actor)
        self.pools.clear()
        if _STARTED["cluster"]:  # a local cluster this process started: stop it with the work
            self.ray.shutdown()
            _STARTED["cluster"] = False


def _dumps(data: Any) -> str:
    try:
        return json.dumps(data)
    except TypeError as error:
        raise UserError(
            f"a work item is not plain data ({error}); it cannot leave this process"
        ) from None


def _task_error(error: Exception) -> Exception:
    """A worker's own error (a `UserError` among them) as this process would have raised it."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, UserError):
        return UserError(str(cause))
    return cause if isinstance(cause, Exception) else error
