"""`benchmark_job`: the stages in order, over one shared context, into the run folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import settings_dict
from ..data import resolve_data_dir
from ..evaluation.capabilities import CapabilityRunner
from ..evaluation.store import ResultStore, shared_store
from ..evaluation.work import generation_id
from ..executors import Executor, LocalExecutor, Replica
from ..judges import (
    JudgeContext,
    make_judge,
)
from ..models import ChatFormatter, LoadedModel
from ..report.benchmark import benchmark_markdown
from ..runs import RunDir, write_json
from ..saes.presets import check_default_sae_set
from .arms import build_arms
from .config import (
    LATENT_METHODS,
    BenchmarkConfig,
    check_capabilities_available,
    measures_capabilities,
    validate_inputs,
)
from .context import Context
from .inputs import direction_source, find_direction, sae_set_for
from .stages import agreement_stage, cards_stage, harmful_stage, induction_stage, side_effect_stage
from .tables import harmful_samples, harmful_table, pooled_rows, side_effect_table


def benchmark_job(
    lm: LoadedModel,
    formatter: ChatFormatter,
    config: BenchmarkConfig,
    out: str | Path,
    *,
    data_dir: str | Path | None,
    device: str = "auto",
    cache_dir: str | None = None,
    echo: Callable[[str], None] = print,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """The benchmark of `config` into `out`; `executor` runs its generation, judging and
    teacher-forced work items (default: here, on `lm`)."""
    started = time.perf_counter()
    executor = executor or LocalExecutor(Replica(lm=lm, formatter=formatter))
    validate_inputs(config, data_dir)
    run = RunDir(out)
    run.write_manifest("benchmark", settings_dict(config), lm.identity(), config.seed)
    timings: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        echo(f"[{name}] ...")
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 1)
        echo(f"[{name}] done in {timings[name]:.0f} s")
        return result

    shared = shared_store(cache_dir) if config.share_results else None
    with ResultStore(run.path / "results.sqlite", shared=shared) as store:
        judge_context = JudgeContext(
            lm=lm,
            formatter=formatter,
            device=device,
            cache_dir=cache_dir,
            data_dir=None if data_dir is None else str(data_dir),
            batch_size=8,
        )
        # a learned judge trains here on first use (then it is cached)
        judges = stage(
            "judges", lambda: {spec: make_judge(spec, judge_context) for spec in config.judges}
        )
        if config.capabilities.tasks and resolve_data_dir(data_dir) is not None:
            check_capabilities_available(config.capabilities, data_dir, run.path)
        if config.saes is None and any(m in LATENT_METHODS for m in config.methods):
            check_default_sae_set(lm, data_dir)
        generation, screen_generation = (
            generation_id(store, lm, formatter, tokens)
            for tokens in (config.max_new_tokens, config.screen_tokens)
        )
        ctx = Context(
            lm=lm,
            formatter=formatter,
            store=store,
            judges=judges,
            judge_specs=config.judges,
            generation=generation,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            log=echo,
            executor=executor,
            config=config,
            run=run,
            data_dir=data_dir,
            screen_generation=screen_generation,
            cache_dir=cache_dir,
        )

        direction = stage("direction", lambda: find_direction(ctx, config.seed))
        needs_saes = any(m in LATENT_METHODS for m in config.methods)
        saes = stage("saes", lambda: sae_set_for(ctx)) if needs_saes else None
        arms, ours = stage("latents", lambda: build_arms(ctx, direction, saes))
        base = arms[0]
        harmful_rows: list[dict[str, Any]] = []
        for arm in arms:
            harmful_rows += stage(
                f"harmful · {arm.label} ({arm.protocol}, {', '.join(arm.datasets)})",
                lambda a=arm: harmful_stage(ctx, a),
            )
        side: dict[str, dict[str, list[float]]] = {}
        for arm in [a for a in arms if a.global_]:
            side[arm.label] = stage(
                f"side effects · {arm.label}", lambda a=arm: side_effect_stage(ctx, a, base)
            )
        capabilities: list[dict[str, Any]] = []
        if config.capabilities.tasks and resolve_data_dir(data_dir) is not None:
            runner = CapabilityRunner(
                lm, store, config.capabilities, data_dir, run.path / "capabilities"
            )
            for arm in [a for a in arms if a.global_ and measures_capabilities(config, a)]:
                stage(
                    f"capabilities · {arm.label}",
                    lambda a=arm: runner.evaluate(
                        a.condition, a.interventions, executor=ctx.executor
                    ),
                )
                capabilities += [r.to_dict() for r in runner.results(arm.condition, base.condition)]
        induction = (
            stage("induction", lambda: induction_stage(ctx, ours, saes, direction))
            if ours is not None and saes is not None and config.induce_values
            else []
        )
        if config.cards and ours is not None and saes is not None:
            stage("latent cards", lambda: cards_stage(ctx, ours, saes, direction))
        if config.agreement_limit and config.agreement_sets and resolve_data_dir(data_dir):
            stage("judge agreement", lambda: agreement_stage(ctx))
        summary = {
            "model": lm.identity(),
            "config": settings_dict(config),
            "direction": {"layer": direction.layer, "source": direction_source(ctx)},
            "saes": None
            if saes is None
            else {"path": str(saes.path), "fingerprint": saes.fingerprint()},
            "max_new_tokens": config.max_new_tokens,
            "screen_tokens": config.screen_tokens,
            "harmful": harmful_table(harmful_rows + pooled_rows(harmful_rows)),
            "samples": harmful_samples(harmful_rows, seed=config.seed),
            "side_effects": side_effect_table(side),
            "capabilities": capabilities,
            "induction": induction,
            "store_counts": store.counts(),
            "stage_seconds": timings,
            "executor": executor.summary(),
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
    run.note_in_manifest("executor", summary["executor"])
    write_json(run.file("benchmark.json"), summary)
    (run.path / "benchmark.md").write_text(benchmark_markdown(summary))
    return summary
