"""How a long command spreads its work: the executor and the size of its worker pools
(the `--executor`, `--workers`, ... flags of every long command are made from these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError

RAY_INSTALL = "pip install 'refusal-lens[ray]'"


@dataclass(frozen=True)
class ExecutorSettings:
    """The executor and its pools. Items are computed where the executor puts them; results
    always come back to this process, which alone writes the run's results store."""

    executor: str = field(
        default="local",
        metadata={
            "help": "where work items run: local (this process), ray (a local Ray cluster "
            "started for the command), ray=auto (a running cluster) or ray=HOST:PORT",
            "metavar": "NAME[=ADDRESS]",
        },
    )
    workers: int = field(
        default=1, metadata={"help": "model replicas (Ray actors), each with its own copy"}
    )
    worker_gpus: float = field(
        default=-1.0,
        metadata={
            "help": "GPUs per replica (-1: one where the cluster has GPUs, else none; a "
            "fraction packs several replicas on one GPU; 2 or more spread each replica's "
            "layers over its GPUs, with each SAE on its layer's GPU)",
            "signed": True,
            "default": "auto",
        },
    )
    worker_threads: int = field(
        default=1, metadata={"help": "CPU threads of each replica (CPU-only clusters)"}
    )
    judge_workers: int = field(
        default=0,
        metadata={
            "help": "replicas of the judges with a model of their own (0: they run on the "
            "model replicas)",
            "signed": True,
        },
    )
    judge_gpus: float = field(
        default=0.0, metadata={"help": "GPUs per judge replica", "signed": True}
    )

    def __post_init__(self) -> None:
        self.name  # noqa: B018  (checks the spelling)
        if self.judge_workers < 0 or self.judge_gpus < 0:
            raise UserError("--judge-workers and --judge-gpus must be 0 or more")
        if self.worker_gpus < 0 and self.worker_gpus != -1:
            raise UserError("--worker-gpus must be 0 or more (or -1: auto)")
        for flag, gpus in (("--worker-gpus", self.worker_gpus), ("--judge-gpus", self.judge_gpus)):
            if gpus > 1 and gpus != int(gpus):
                raise UserError(
                    f"{flag} {gpus:g}: a replica on several GPUs takes whole GPUs (2, 4, ...); "
                    "a fraction packs replicas on one GPU"
                )

    @property
    def name(self) -> str:
        """The executor's registered name (`local`, `ray`)."""
        return parse_executor(self.executor)[0]

    @property
    def address(self) -> str | None:
        """The Ray cluster to join (None: start a local one)."""
        return parse_executor(self.executor)[1]


def parse_executor(text: str) -> tuple[str, str | None]:
    """`local` | `ray` | `ray=ADDRESS` -> (name, address or None)."""
    name, sep, address = text.strip().partition("=")
    name = name.strip()
    if name == "local" and not sep:
        return name, None
    if name == "ray" and (not sep or address.strip()):
        return name, address.strip() or None
    raise UserError(
        f"--executor {text!r} is not local, ray or ray=ADDRESS (ray=auto joins a running "
        "cluster, ray=HOST:PORT one at that address)"
    )
