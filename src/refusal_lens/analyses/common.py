"""What every analysis shares: a results store in its run folder (completions and verdicts of
the unsteered model are keyed as in the benchmark, so an analysis run inside a benchmark's
folder reuses them) and reading the model's own behaviour on prompts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..benchmark import (
    Arm,
    BenchmarkConfig,
    Context,
    base_arm,
    generation_id,
    stored_completions_of_sets,
    stored_verdicts,
)
from ..data import PromptSet
from ..errors import UserError
from ..evaluation.store import ResultStore
from ..judges import JudgeContext, make_judge
from ..models import ChatFormatter, LoadedModel
from ..runs import RunDir


@contextmanager
def analysis_context(
    lm: LoadedModel,
    formatter: ChatFormatter,
    run: RunDir,
    *,
    judge: str,
    max_new_tokens: int,
    batch_size: int,
    data_dir: str | Path | None,
    device: str = "auto",
    cache_dir: str | None = None,
    echo: Callable[[str], None] = print,
) -> Iterator[Context]:
    config = BenchmarkConfig(
        model=lm.name,
        judges=(judge,),
        max_new_tokens=max_new_tokens,
        screen_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    with ResultStore(run.path / "results.sqlite") as store:
        judges = {
            judge: make_judge(
                judge, JudgeContext(lm=lm, formatter=formatter, device=device, cache_dir=cache_dir)
            )
        }
        generation = generation_id(store, lm, formatter, max_new_tokens)
        yield Context(
            lm,
            formatter,
            store,
            config,
            run,
            data_dir,
            judges,
            generation,
            generation,
            echo,
            cache_dir=cache_dir,
        )


def refusals(ctx: Context, sets: Sequence[PromptSet], arm: Arm | None = None) -> list[np.ndarray]:
    """Whether the model (under `arm`, default unsteered) refuses each prompt of each set, read
    by the context's judge from stored completions (generated once, in shared batches)."""
    arm = arm or base_arm(ctx)
    spec = ctx.config.judges[0]
    every = stored_completions_of_sets(ctx, arm, sets)
    out = []
    for prompts, completions in zip(sets, every, strict=True):
        name, verdicts = stored_verdicts(ctx, arm, spec, prompts.texts(), completions)
        refused = [v.refused if v.refused is not None else _not(v.complied) for v in verdicts]
        if any(r is None for r in refused):
            raise UserError(
                f"judge {name} gave no verdict on {sum(r is None for r in refused)} prompts of "
                f"{prompts.name}; use a judge that always answers (e.g. substring)"
            )
        out.append(np.array(refused, dtype=bool))
    return out


def _not(value: bool | None) -> bool | None:
    return None if value is None else not value
