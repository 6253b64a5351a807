"""The paper's benchmark, done properly, behind one function (and `refusal-lens benchmark`).

For each method (base, direction ablation, ours, cossim, actdiff, ap, random) it measures the
refusal and jailbreak rates on the harmful benchmarks with every configured judge, and, for
the global interventions, the side effects (harmless KL, cross-entropy on the base model's own
rollouts and on generic text, over-refusal on XSTest's safe prompts), capabilities (lm-eval)
and refusal induction, each with a 95% bootstrap interval and a paired test against base.
Protocols: `heldout` (latent sets selected on train prompts, evaluated on the benchmarks) and
`transductive` (the paper's: per-prompt sets selected on the benchmark prompts themselves).

Everything computed goes into `RUN/results.sqlite` keyed by (model, SAE set, intervention,
generation settings, judge, prompt), so a killed benchmark resumes where it stopped and a rerun
with one more method computes only that method. The tables go to `RUN/benchmark.json` and
`RUN/benchmark.md`; `refusal-lens report RUN` draws them.

The package reads like the method: `config` (settings and their checks), `inputs` (direction,
SAE set, latent sets), `arms` (the conditions), `stages` (the measurements), `tables`, and
`job` (the stages in order). The store-backed work it shares with the analyses is
`refusal_lens.evaluation.work`; its Markdown is `refusal_lens.report.benchmark`.
"""

from .config import (
    LATENT_METHODS,
    METHODS,
    QUICK,
    TRANSDUCTIVE_METHODS,
    BenchmarkConfig,
    usable_judges,
    validate_inputs,
    without_data_dir,
)
from .job import benchmark_job
from .tables import POOLED, harmful_samples, harmful_table, pooled_rows

__all__ = [
    "LATENT_METHODS",
    "METHODS",
    "POOLED",
    "QUICK",
    "TRANSDUCTIVE_METHODS",
    "BenchmarkConfig",
    "benchmark_job",
    "harmful_samples",
    "harmful_table",
    "pooled_rows",
    "usable_judges",
    "validate_inputs",
    "without_data_dir",
]
