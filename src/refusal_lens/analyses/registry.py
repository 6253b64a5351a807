"""The analyses, in the order of the method: one entry each, read by `analyze`, by the command
line (one command per entry) and by the report (one section per entry).

An entry is light (names, help, flags) so the command line builds without importing torch;
its `module` holds the rest:

- ``SETTINGS``: the settings dataclass, ``QUICK``: its quick preset (a dict of overrides);
- ``run(inputs, settings, out) -> dict``: the job, over the shared `AnalysisInputs`;
- optionally ``output_name(settings) -> str`` (default: the entry's name) and
  ``analyze_overrides(quick) -> list[list[str]]`` (several runs in one `analyze`).

Adding an analysis is one new module plus one entry here (with its report section).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal


@dataclass(frozen=True)
class Flag:
    """A command-line flag of one analysis that sets one of its settings (``--set NAME=V``)."""

    flag: str
    setting: str
    help: str
    repeat: bool = False  # repeatable; the values are joined with commas


@dataclass(frozen=True)
class AnalysisEntry:
    name: str
    help: str
    module: str  # see the module docstring
    section: str  # "module:function" that writes its report section: f(page, run_folder)
    examples: str
    flags: tuple[Flag, ...] = ()
    # whether it reads the harm latents (of `categories`): not, optionally, or only with them
    harm: Literal["no", "optional", "needed"] = "no"
    # a one-line failure (UserError) is recorded and the later analyses go on without its output
    may_fail: bool = False
    # whether `analyze` runs it without being named in --only (a study with a cost of its own)
    in_suite: bool = True

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def output_name(self, settings: Any) -> str:
        module = self.load()
        name = getattr(module, "output_name", None)
        return str(name(settings)) if name is not None else self.name

    def analyze_overrides(self, quick: bool) -> list[list[str]]:
        runs = getattr(self.load(), "analyze_overrides", None)
        return runs(quick) if runs is not None else [[]]

    def write_section(self, page: Any, run: Any) -> None:
        module, function = self.section.split(":")
        getattr(importlib.import_module(module), function)(page, run)


_REPORT = "refusal_lens.report.analyses"

ANALYSES: dict[str, AnalysisEntry] = {
    entry.name: entry
    for entry in (
        AnalysisEntry(
            name="categories",
            help="Category-specific vs common latents: a latent set per harm category (selected on "
            "its train prompts), common = in (nearly) every category's set, specific = the "
            "rest; each kind clamped with the other pinned (retain), random matched control, "
            "transfer between categories; writes the common and harm sets as latent sets.",
            module="refusal_lens.analyses.categories",
            section=f"{_REPORT}:categories_section",
            examples="""
    refusal-lens categories --run runs/quickstart --quick --data-dir DATA
    refusal-lens categories --run runs/bench --dataset harmbench_test --data-dir DATA \\
        --set common_fraction=0.8
""",
            flags=(
                Flag("--dataset", "dataset", "categorised harmful prompts (default: strongreject)"),
            ),
            may_fail=True,
        ),
        AnalysisEntry(
            name="circuits",
            help="Upstream harm latents -> downstream refusal latents: edges by attribution "
            "patching (SAE errors as nodes), checked against real patching; the clamp test "
            "(harm latents suppressed from their most salient position on) against a matched "
            "random set.",
            module="refusal_lens.analyses.circuits",
            section=f"{_REPORT}:circuits_section",
            examples="""
    refusal-lens circuits --run runs/quickstart --quick --data-dir DATA   # after categories
    refusal-lens circuits --saes SAES --latents runs/cat/common --harm-latents runs/cat/harm \\
        --direction runs/qwen05 --data-dir DATA --out runs/circuits
""",
            harm="needed",
        ),
        AnalysisEntry(
            name="jailbreaks",
            help="Jailbreaks at the latent level: plain requests the model refuses, put in "
            "attacks (readable suffixes, GPTFuzz templates, a file); how much successful vs "
            "failed attacks suppress the refusal latents (random latents as control), and the "
            "suffix word each suppression is attributed to.",
            module="refusal_lens.analyses.jailbreaks",
            section=f"{_REPORT}:jailbreaks_sections",
            examples="""
    refusal-lens jailbreaks --run runs/quickstart --quick --data-dir DATA
    refusal-lens jailbreaks --run runs/bench --source gptfuzz --data-dir DATA
    refusal-lens jailbreaks --saes SAES --latents runs/ours/latents.json \\
        --direction runs/qwen05 --source my_pairs.jsonl --out runs/jb
""",
            flags=(
                Flag(
                    "--source",
                    "source",
                    "suffixes (default), gptfuzz, or a .csv/.json/.jsonl file with prompt and "
                    "goal columns",
                ),
            ),
            harm="optional",
        ),
        AnalysisEntry(
            name="probes",
            help="Linear probes on last-token features (refusal latents, matched random latents, "
            "the dense residual at its best validation layer, the direction projection), "
            "fitted on plain prompts and tested in distribution and on adversarial prompts; "
            "targets: is the request harmful, will the model refuse.",
            module="refusal_lens.analyses.probes",
            section=f"{_REPORT}:probes_section",
            examples="""
    refusal-lens probes --run runs/quickstart --quick --data-dir DATA
    refusal-lens probes --saes SAES --latents runs/ours/latents.json --direction runs/qwen05 \\
        --data-dir DATA --source gptfuzz --source my_attacks.jsonl --out runs/probes
""",
            flags=(
                Flag(
                    "--source",
                    "sources",
                    "adversarial prompts: gptfuzz, suffixes or a .csv/.json/.jsonl file with a "
                    "prompt column (repeatable; default gptfuzz and suffixes)",
                    repeat=True,
                ),
            ),
        ),
        AnalysisEntry(
            name="minimal",
            help="Minimal latent set (greedy pruning that keeps a share of the set's effect on the "
            "refusal score) and pairwise interactions (redundant latents), with a matched "
            "random control and a held-out check by generation.",
            module="refusal_lens.analyses.minimal",
            section=f"{_REPORT}:minimal_section",
            examples="""
    refusal-lens minimal --run runs/quickstart --quick --data-dir DATA
    refusal-lens minimal --saes SAES --latents runs/ours/latents.json --data-dir DATA \\
        --set keep=0.8 --out runs/minimal
""",
        ),
        AnalysisEntry(
            name="defend",
            help="Defence: refusal latents (or the direction) strengthened everywhere, or only "
            "where harm latents, a probe on them or the direction's cosine fire; strengths and "
            "thresholds chosen on validation prompts; jailbreak success (single and two-turn), "
            "over-refusal, harmless KL, capabilities and the gates' false triggers and misses "
            "on test prompts, each against no defence.",
            module="refusal_lens.analyses.defend",
            section=f"{_REPORT}:defend_section",
            examples="""
    refusal-lens defend --run runs/quickstart --quick --data-dir DATA   # after categories
    refusal-lens defend --run runs/bench --source gptfuzz --source my_attacks.jsonl \\
        --data-dir DATA --set false_trigger=0.02
""",
            flags=(
                Flag(
                    "--source",
                    "sources",
                    "attacks: gptfuzz, suffixes or a .csv/.json/.jsonl file with prompt and goal "
                    "columns (repeatable; default gptfuzz and suffixes)",
                    repeat=True,
                ),
            ),
            harm="needed",
            in_suite=False,
        ),
    )
}
