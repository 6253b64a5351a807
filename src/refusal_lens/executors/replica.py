"""A worker's side of the executor: a `Replica` holds one copy of the model (and the judges and
interventions it is asked for), and `TASKS` are what it can compute. A task takes the replica,
the arguments every item of one call shares and one item, all plain JSON data, and returns
plain JSON data: what travels between processes is text, never a pickled object.

A new kind of work item is one function here, registered with `@task(name)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UserError

Task = Callable[["Replica", dict[str, Any], dict[str, Any]], Any]
TASKS: dict[str, Task] = {}


def task(name: str) -> Callable[[Task], Task]:
    """Register a task under `name` (what `Executor.map` is asked to run)."""

    def register(fn: Task) -> Task:
        TASKS[name] = fn
        return fn

    return register


@dataclass(frozen=True)
class ReplicaSpec:
    """What a worker needs to load the driver's model exactly: the same weights, dtype and
    chat template. `device` is the worker's own (`cuda` on a GPU worker)."""

    model: str
    weights_sha256: str
    dtype: str
    device: str
    system: str | None
    cache_dir: str | None
    data_dir: str | None
    threads: int | None = None
    cwd: str | None = None  # the driver's: relative paths in items (SAE sets) resolve there

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReplicaSpec:
        return cls(**json.loads(text))


class Replica:
    """One worker's model, judges and interventions, made on first use and kept.

    The local executor builds it over the driver's own objects (`lm`, `formatter`, `judges`),
    so that local work is exactly today's in-process work; a Ray actor builds it from a
    `ReplicaSpec` and loads the model only when a task needs it (a judge-only replica never
    does)."""

    def __init__(
        self,
        spec: ReplicaSpec | None = None,
        *,
        lm: Any = None,
        formatter: Any = None,
        judges: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self._lm, self._formatter = lm, formatter
        self.judges: dict[str, Any] = dict(judges or {})
        self._interventions: dict[str, list[Any]] = {}
        self._saes: dict[str, Any] = {}
        self._kept: dict[str, Any] = {}
        self.with_model = lm is not None
        if spec is not None and spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        if spec is not None and spec.cwd and os.path.isdir(spec.cwd):
            os.chdir(spec.cwd)

    @property
    def lm(self) -> Any:
        if self._lm is None:
            if self.spec is None:
                raise UserError("this replica has no model to load")
            from ..models import ChatFormatter, load_model

            lm = load_model(
                self.spec.model,
                dtype=self.spec.dtype,
                device=self.spec.device,
                cache=self.spec.cache_dir,
            )
            if lm.weights_sha256 != self.spec.weights_sha256:
                raise UserError(
                    f"a worker loaded {self.spec.model} with other weights "
                    f"({lm.weights_sha256[:12]} vs the driver's {self.spec.weights_sha256[:12]}); "
                    "give every node the same model files"
                )
            max_length = getattr(lm.model.config, "max_position_embeddings", None)
            self._lm = lm
            self._formatter = ChatFormatter(
                lm.tokenizer, system=self.spec.system, max_length=max_length
            )
        return self._lm

    @property
    def formatter(self) -> Any:
        self.lm  # noqa: B018  (loads the model and its formatter)
        return self._formatter

    def edits(self, shared: dict[str, Any]) -> Any:
        """The interventions of a call: read from their `to_dict()` once per replica, or,
        from the local executor, the driver's own objects as they are."""
        specs = shared.get("interventions") or []
        if not all(isinstance(item, dict) for item in specs):
            return specs
        key = hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()
        if key not in self._interventions:
            from ..interventions import from_dict

            self._interventions[key] = [from_dict(item) for item in specs]
        return self._interventions[key]

    def sae_set(self, folder: str, fingerprint: str) -> Any:
        """The SAE set in `folder`, read once per replica and checked against the driver's."""
        key = f"{folder}\x1f{fingerprint}"
        if key not in self._saes:
            from ..saes import SAESet

            saes = SAESet.load(folder)
            if saes.fingerprint() != fingerprint:
                raise UserError(
                    f"a worker read another SAE set at {folder} than the driver; give every "
                    "node the same files"
                )
            saes.place(self.lm.model)
            self._saes[key] = saes
        return self._saes[key]

    def kept(self, key: str, make: Callable[[], Any]) -> Any:
        """What `make` returns, made once per replica under `key` (state a task reuses)."""
        if key not in self._kept:
            self._kept[key] = make()
        return self._kept[key]

    def judge(self, spec: str, *, evaluated_model: bool) -> Any:
        """The judge of `spec`, made on first use (a learned judge is found in the user cache,
        where the driver trained it). `evaluated_model`: give it this replica's model."""
        if spec not in self.judges:
            from ..judges import JudgeContext, make_judge

            context = JudgeContext(
                lm=self.lm if evaluated_model else None,
                formatter=self.formatter if evaluated_model else None,
                device=self.spec.device if self.spec else "auto",
                cache_dir=self.spec.cache_dir if self.spec else None,
                data_dir=self.spec.data_dir if self.spec else None,
            )
            self.judges[spec] = make_judge(spec, context)
        return self.judges[spec]

    def run(self, name: str, shared: dict[str, Any], item: dict[str, Any]) -> Any:
        if name not in TASKS:
            raise UserError(f"unknown work item kind {name!r}; known: {', '.join(TASKS)}")
        return TASKS[name](self, shared, item)

    def run_json(self, name: str, shared: str, item: str) -> str:
        """`run` over JSON text (what a Ray actor is sent and returns), with the item's time."""
        start = time.perf_counter()
        result = self.run(name, json.loads(shared), json.loads(item))
        return json.dumps({"result": result, "seconds": time.perf_counter() - start})


@task("generate")
def _generate(replica: Replica, shared: dict[str, Any], item: dict[str, Any]) -> list[str]:
    """Greedy completions of one batch of prompts (the batch the local run would make)."""
    from ..generation import generate

    prompts = item["prompts"]
    return generate(
        replica.lm,
        replica.formatter,
        prompts,
        max_new_tokens=shared["max_new_tokens"],
        batch_size=len(prompts),
        interventions=replica.edits(shared),
        progress=False,
        desc=shared.get("desc", "generate"),
    )


@task("verdicts")
def _verdicts(replica: Replica, shared: dict[str, Any], item: dict[str, Any]) -> list[dict]:
    """One judge's verdicts on a chunk of (request, completion) pairs."""
    from ..evaluation.store import stored
    from ..judges import FirstTokenJudge

    judge = replica.judge(shared["judge"], evaluated_model=shared["evaluated_model"])
    if isinstance(judge, FirstTokenJudge):  # it reads the model under the arm's intervention
        judge = FirstTokenJudge(
            replica.lm,
            replica.formatter,
            judge.tokens,
            threshold=judge.threshold,
            interventions=replica.edits(shared),
            batch_size=judge.batch_size,
        )
    verdicts = judge.verdicts(item["requests"], item["completions"])
    return [asdict(stored(v)) for v in verdicts]


@task("kl_and_nll")
def _kl_and_nll(replica: Replica, shared: dict[str, Any], item: dict[str, Any]) -> list[list]:
    """Per prompt, the KL of the arm from the base model over the base rollout, and the
    rollout's NLL under the arm (one teacher-forced pass)."""
    from ..evaluation.side_effects import completion_kl_and_nll

    return [
        list(values)
        for values in completion_kl_and_nll(
            replica.lm, replica.formatter, item["texts"], item["rollouts"], replica.edits(shared)
        )
    ]


@task("completion_nll")
def _completion_nll(replica: Replica, shared: dict[str, Any], item: dict[str, Any]) -> list:
    from ..teacher_forcing import completion_nll

    return [
        completion_nll(
            replica.lm,
            replica.formatter,
            item["texts"],
            item["rollouts"],
            interventions=replica.edits(shared),
        )
    ]


@task("text_nll")
def _text_nll(replica: Replica, shared: dict[str, Any], item: dict[str, Any]) -> list:
    from ..teacher_forcing import text_nll

    return [text_nll(replica.lm, item["texts"], interventions=replica.edits(shared))]


@task("attribute")
def _attribute(replica: Replica, shared: dict[str, Any], item: dict[str, Any]) -> dict:
    """LA-IG attributions of one batch of prompts (`attribution.attribution_call`'s data)."""
    from ..attribution import attribute_item

    saes = replica.sae_set(shared["saes"], shared["fingerprint"])
    return attribute_item(replica.lm, replica.formatter, saes, shared, item["instructions"])


@task("collect")
def _collect(replica: Replica, shared: dict[str, Any], item: dict[str, Any]) -> dict:
    """Activations of a few batches of the SAE training mixture (`activations.collect_item`);
    the shared system-turn prefix's keys and values are computed once per replica."""
    from ..hooks import parse_hook_point
    from ..saes.activations import SharedPrefix, collect_item

    prefix = None
    if shared["prefix"] is not None:
        points = [parse_hook_point(name) for name in shared["points"]]
        key = json.dumps(["prefix", shared["points"], shared["prefix"]])
        prefix = replica.kept(key, lambda: SharedPrefix(replica.lm, points, shared["prefix"]))
    return collect_item(replica.lm, shared, item["batches"], prefix)


@task("train_saes")
def _train_saes(replica: Replica, shared: dict[str, Any], item: dict[str, Any]) -> dict:
    """One layer group's SAEs (`training.train_group_item`), on this replica's device."""
    from ..saes.training import train_group_item

    device = replica.spec.device if replica.spec is not None else replica.lm.device
    return train_group_item(shared, item, device)


@task("capabilities")
def _capabilities(replica: Replica, shared: dict[str, Any], item: dict[str, Any]) -> list:
    """Some items of one lm-eval task under the arm's interventions (`CapabilityRunner`,
    made once per replica and settings)."""
    from ..evaluation.capabilities import CapabilityRunner

    key = json.dumps(["capabilities", shared["settings"], shared["data_dir"]], sort_keys=True)
    runner = replica.kept(key, lambda: CapabilityRunner.for_worker(replica.lm, shared))
    rows = runner.chunk_rows(item["task"], item["items"], replica.edits(shared))
    return [list(row) for row in rows]
