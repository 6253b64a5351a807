"""What every analysis shares: a results store in its run folder (completions and verdicts of
the unsteered model are keyed as in the benchmark, so an analysis run inside a benchmark's
folder reuses them) and reading the model's own behaviour on prompts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..config import settings_dict
from ..data import PromptSet
from ..direction import Direction
from ..errors import UserError
from ..evaluation.store import ResultStore, StoredVerdict, shared_store
from ..evaluation.work import (
    Arm,
    Work,
    base_arm,
    generation_id,
    stored_completions_of_sets,
    stored_verdicts,
)
from ..executors import Executor, LocalExecutor, Replica
from ..judges import JudgeContext, make_judge
from ..latents import LatentSet
from ..models import ChatFormatter, LoadedModel
from ..runs import RunDir
from ..saes import SAESet


def start_analysis(
    name: str,
    settings: Any,
    lm: LoadedModel,
    saes: SAESet,
    out: str | Path,
    *,
    latent_sets: Sequence[LatentSet | None] = (),
    direction: Direction | None = None,
) -> RunDir:
    """An analysis' run folder with its manifest, once the SAE set, direction and latent sets
    are checked against the model (each SAE moves to its layer's device)."""
    run = RunDir(out)
    run.write_manifest(name, settings_dict(settings), lm.identity(), settings.seed)
    saes.check_model(lm)
    saes.place(lm.model)
    if direction is not None:
        direction.check_model(lm)
    for latent_set in latent_sets:
        if latent_set is not None:
            latent_set.check_model(lm)
            latent_set.check_saes(saes)
    return run


@contextmanager
def analysis_context(
    lm: LoadedModel,
    formatter: ChatFormatter,
    run: RunDir,
    *,
    judges: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    device: str = "auto",
    cache_dir: str | None = None,
    echo: Callable[[str], None] = print,
    executor: Executor | None = None,
) -> Iterator[Work]:
    # read through the user cache's store: an analysis rerun into a new folder recomputes nothing
    with ResultStore(run.path / "results.sqlite", shared=shared_store(cache_dir)) as store:
        shared = JudgeContext(lm=lm, formatter=formatter, device=device, cache_dir=cache_dir)
        yield Work(
            lm=lm,
            formatter=formatter,
            store=store,
            judges={spec: make_judge(spec, shared) for spec in judges},
            judge_specs=tuple(judges),
            generation=generation_id(store, lm, formatter, max_new_tokens),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            log=echo,
            executor=executor or LocalExecutor(Replica(lm=lm, formatter=formatter)),
        )


def judged(
    ctx: Work,
    sets: Sequence[PromptSet],
    arm: Arm | None = None,
    requests: Sequence[Sequence[str]] | None = None,
    judges: Sequence[str] | None = None,
) -> list[list[dict[str, StoredVerdict]]]:
    """Every judge's verdict (the context's, or `judges`) on the model's completion (under
    `arm`, default unsteered) of each prompt of each set; completions are generated once, in
    shared batches, and stored. `requests` (per set, per prompt) is what the judges are told
    was asked (default: the prompt itself)."""
    arm = arm or base_arm(ctx)
    every = stored_completions_of_sets(ctx, arm, sets)
    asked = requests or [None] * len(sets)
    out = []
    for prompts, completions, request in zip(sets, every, asked, strict=True):
        by_judge = {
            spec: stored_verdicts(ctx, arm, spec, prompts.texts(), completions, requests=request)[1]
            for spec in (ctx.judge_specs if judges is None else judges)
        }
        out.append([{spec: by_judge[spec][i] for spec in by_judge} for i in range(len(prompts))])
    return out


def refusals(ctx: Work, sets: Sequence[PromptSet], arm: Arm | None = None) -> list[np.ndarray]:
    """Whether the model refuses each prompt, by the context's first judge."""
    spec = ctx.judge_specs[0]
    out = []
    for prompts, verdicts in zip(sets, judged(ctx, sets, arm), strict=True):
        refused = [_refused(v[spec]) for v in verdicts]
        _check_answered(refused, spec, prompts)
        out.append(np.array(refused, dtype=bool))
    return out


def jailbroken(
    ctx: Work,
    sets: Sequence[PromptSet],
    arm: Arm | None = None,
    requests: Sequence[Sequence[str]] | None = None,
) -> list[np.ndarray]:
    """Whether the model complies with each prompt by every judge of the context: not refused
    by a refusal judge, complied by a compliance judge (so fluent off-topic text is no
    jailbreak when the compliance judge is among them)."""
    out = []
    for prompts, verdicts in zip(sets, judged(ctx, sets, arm, requests), strict=True):
        rows = []
        for verdict in verdicts:
            said = [
                v.complied if v.complied is not None else _not(v.refused) for v in verdict.values()
            ]
            _check_answered(said, "/".join(verdict), prompts)
            rows.append(all(said))
        out.append(np.array(rows, dtype=bool))
    return out


def _refused(verdict: StoredVerdict) -> bool | None:
    return verdict.refused if verdict.refused is not None else _not(verdict.complied)


def _check_answered(values: Sequence[bool | None], judge: str, prompts: PromptSet) -> None:
    missing = sum(value is None for value in values)
    if missing:
        raise UserError(
            f"judge {judge} gave no verdict on {missing} prompts of {prompts.name}; use a "
            "judge that always answers (e.g. substring)"
        )


def _not(value: bool | None) -> bool | None:
    return None if value is None else not value


def latent_set_scale(latent_set: LatentSet) -> float:
    """The scale a latent set was chosen with; a clear error for a set chosen with a value."""
    mode = latent_set.intervention.get("mode", "scale")
    if mode != "scale":
        raise UserError(
            f"the refusal latents were chosen with mode {mode!r}; this analysis clamps by a "
            "scale: give one with --set scale=-3"
        )
    return float(latent_set.intervention["value"])
