"""Capabilities under an intervention, with lm-evaluation-harness as the engine.

lm-eval's `HFLM` wraps our already-loaded model (`EditedHFLM`: each of its forwards and
generations runs under the interventions, bound to that batch as our own forwards are: each
row's padding, and each row's context length where the forward also holds a continuation, so a
prompt-scope gate decides on the question and never on an answer choice), and the tasks are
lm-eval task configs written into the run folder that read the local files of the data directory
(`dataset_path: json|csv` with `data_files`), so nothing is fetched from a hub. Prompt formats,
few-shot exemplars and metrics are lm-eval's own (ARC-Challenge, OpenBookQA, MMLU, GSM8K 8-shot
chain of thought, TruthfulQA MC1).

Items are evaluated in chunks through lm-eval's `samples=` argument and every item's metrics
go into the results store as its chunk finishes: an interrupted run resumes at the next item,
and a rerun with another intervention computes only that intervention.

Where the local data differs from the hub version lm-eval expects, the config adapts it and
says so: OpenBookQA's local copy nests the stem and choices under `question`; TruthfulQA is the
CSV release (best answer + incorrect answers), turned into MC1 items whose first choice is the
best answer (the hub's curated `mc1_targets` are not in the data directory). GSM8K scores are
lm-eval's exact match plus a numeric match (`18.0` == `18`, `1,000` == `1000`).

`direct_multiple_choice` scores the same multiple-choice items without lm-eval (our own
teacher forcing); `refusal-lens capabilities --check` compares the two item by item.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data import resolve_data_dir
from ..data.loaders import DATA_DIR_FIX
from ..errors import UserError
from ..executors.base import Executor
from ..interventions import (
    EditLatents,
    Gated,
    Intervention,
    PerPromptLatents,
    apply,
    bind,
    needs_twin,
)
from ..models import LoadedModel
from ..runs import stable_hash
from .statistics import Estimate, bootstrap_mean, paired_difference
from .store import Condition, ResultStore

log = logging.getLogger(__name__)

TASKS = ("arc_challenge", "openbookqa", "mmlu", "gsm8k", "truthfulqa_mc1")
MC_METRICS = [
    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
]
TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


@dataclass(frozen=True)
class CapabilitySettings:
    tasks: tuple[str, ...] = ("arc_challenge", "gsm8k")
    limit: int | None = 100  # first N items of each task (of each MMLU subject)
    mmlu_subjects: tuple[str, ...] = ()  # () = every subject in the data directory
    batch_size: int = 8
    chunk: int = 50  # items per lm-eval call (and per store transaction)
    chat_template: bool = False  # lm-eval's default: plain text prompts
    gsm8k_max_tokens: int = 256
    gsm8k_limit: int | None = 20  # generation is the slow part: GSM8K has its own item count

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise UserError(
                f"unknown capability task {unknown[0]!r}; choose from {', '.join(TASKS)}"
            )
        for name in ("batch_size", "chunk", "gsm8k_max_tokens"):
            if getattr(self, name) <= 0:
                raise UserError(f"capabilities.{name} must be positive, got {getattr(self, name)}")


@dataclass
class TaskSpec:
    """One lm-eval task: its config and how many items its test split has."""

    name: str  # lm-eval task name
    family: str  # arc_challenge, mmlu, ...
    config: dict[str, Any]
    n_items: int
    metrics: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- task configs


def _jsonl_rows(path: Path) -> int:
    with path.open() as handle:
        return sum(1 for line in handle if line.strip())


def _need(path: Path, task: str) -> Path:
    if not path.exists():
        raise UserError(f"{task} data not found at {path}; {DATA_DIR_FIX}")
    return path


def _arc(root: Path) -> TaskSpec:
    path = _need(root / "capability" / "arc_challenge" / "test.jsonl", "ARC-Challenge")
    config = {
        "task": "rl_arc_challenge",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{choices.label.index(answerKey)}}",
        "doc_to_choice": "{{choices.text}}",
        "metric_list": MC_METRICS,
    }
    return TaskSpec(
        "rl_arc_challenge", "arc_challenge", config, _jsonl_rows(path), ["acc", "acc_norm"]
    )


def _openbookqa(root: Path) -> TaskSpec:
    path = _need(root / "capability" / "openbookqa" / "openbookqa.jsonl", "OpenBookQA")
    config = {
        "task": "rl_openbookqa",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "{{question.stem}}",
        "doc_to_target": (
            "{{(question.choices | map(attribute='label') | list).index(answerKey.lstrip())}}"
        ),
        "doc_to_choice": "{{question.choices | map(attribute='text') | list}}",
        "metric_list": MC_METRICS,
    }
    return TaskSpec("rl_openbookqa", "openbookqa", config, _jsonl_rows(path), ["acc", "acc_norm"])


def mmlu_subjects(root: Path) -> list[str]:
    folder = _need(root / "capability" / "mmlu" / "test", "MMLU")
    return sorted(p.name.removesuffix("_test.csv") for p in folder.glob("*_test.csv"))


def _mmlu(root: Path, subject: str) -> TaskSpec:
    test = _need(root / "capability" / "mmlu" / "test" / f"{subject}_test.csv", f"MMLU {subject}")
    dev = root / "capability" / "mmlu" / "dev" / f"{subject}_dev.csv"
    files = {"test": str(test), **({"dev": str(dev)} if dev.exists() else {})}
    with test.open(newline="") as handle:
        n_items = sum(1 for _ in csv.DictReader(handle))
    config = {
        "task": f"rl_mmlu_{subject}",
        "dataset_path": "csv",
        "dataset_kwargs": {"data_files": files},
        "output_type": "multiple_choice",
        "test_split": "test",
        "description": f"The following are multiple choice questions (with answers) about "
        f"{subject.replace('_', ' ')}.\n\n",
        "doc_to_text": "{{question.strip()}}\nA. {{choice0}}\nB. {{choice1}}\nC. {{choice2}}\n"
        "D. {{choice3}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "{{answer | int}}",
        "metric_list": MC_METRICS[:1],
    }
    if dev.exists():
        config["fewshot_split"] = "dev"
        config["fewshot_config"] = {"sampler": "first_n"}
    return TaskSpec(f"rl_mmlu_{subject}", "mmlu", config, n_items, ["acc"])


def _gsm8k(root: Path, max_tokens: int) -> TaskSpec:
    path = _need(root / "capability" / "gsm8k" / "test.jsonl", "GSM8K")
    import yaml  # lm-eval's dependency

    builtin = resources.files("lm_eval") / "tasks" / "gsm8k" / "gsm8k-cot.yaml"
    config = yaml.safe_load(builtin.read_text())
    config.pop("tag", None)
    config.update(
        {
            "task": "rl_gsm8k_cot",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test",
        }
    )
    config.pop("dataset_name", None)
    config["generation_kwargs"] = {**config["generation_kwargs"], "max_gen_toks": max_tokens}
    metrics = [
        f"{metric},{f['name']}"
        for f in config["filter_list"]
        for metric in ("exact_match", "numeric_match")
    ]
    return TaskSpec("rl_gsm8k_cot", "gsm8k", config, _jsonl_rows(path), metrics)


def _truthfulqa(root: Path, workdir: Path) -> TaskSpec:
    source = _need(root / "capability" / "truthfulqa" / "TruthfulQA.csv", "TruthfulQA")
    derived = workdir / "truthfulqa_mc1.jsonl"
    with source.open(newline="") as handle, derived.open("w") as out:
        n_items = 0
        for row in csv.DictReader(handle):
            wrong = [a.strip() for a in row["Incorrect Answers"].split(";") if a.strip()]
            choices = [row["Best Answer"].strip(), *wrong]
            record = {
                "question": row["Question"],
                "mc1_targets": {"choices": choices, "labels": [1] + [0] * len(wrong)},
            }
            out.write(json.dumps(record) + "\n")
            n_items += 1
    config = {
        "task": "rl_truthfulqa_mc1",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(derived)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": TRUTHFULQA_PRIMER + "\n\nQ: {{question}}\nA:",
        "doc_to_target": 0,
        "doc_to_choice": "{{mc1_targets.choices}}",
        "metric_list": MC_METRICS[:1],
    }
    return TaskSpec("rl_truthfulqa_mc1", "truthfulqa_mc1", config, n_items, ["acc"])


def task_specs(
    settings: CapabilitySettings, data_dir: str | Path | None, workdir: Path
) -> list[TaskSpec]:
    root = resolve_data_dir(data_dir)
    if root is None:
        raise UserError(f"capability tasks read the data directory; {DATA_DIR_FIX}")
    workdir.mkdir(parents=True, exist_ok=True)
    specs: list[TaskSpec] = []
    for task in settings.tasks:
        if task not in TASKS:
            raise UserError(f"unknown capability task {task!r}; choose from {', '.join(TASKS)}")
        if task == "arc_challenge":
            specs.append(_arc(root))
        elif task == "openbookqa":
            specs.append(_openbookqa(root))
        elif task == "gsm8k":
            specs.append(_gsm8k(root, settings.gsm8k_max_tokens))
        elif task == "truthfulqa_mc1":
            specs.append(_truthfulqa(root, workdir))
        else:
            subjects = list(settings.mmlu_subjects) or mmlu_subjects(root)
            known = set(mmlu_subjects(root))
            for subject in subjects:
                if subject not in known:
                    raise UserError(f"unknown MMLU subject {subject!r}; e.g. {sorted(known)[:3]}")
                specs.append(_mmlu(root, subject))
    return specs


def write_task_configs(specs: Sequence[TaskSpec], folder: Path) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        (folder / f"{spec.name}.yaml").write_text(yaml.safe_dump(spec.config, sort_keys=False))
    return folder


# --------------------------------------------------------------------------- scoring


def numeric_equal(predicted: str, target: str) -> bool:
    """`18.0` == `18`, `$1,000.` == `1000`; anything that is not a number compares as text."""

    def number(text: str) -> Decimal | None:
        cleaned = re.sub(r"[,$\s]", "", str(text)).rstrip(".")
        try:
            return Decimal(cleaned)
        except InvalidOperation:
            return None

    a, b = number(predicted), number(target)
    if a is None or b is None:
        return str(predicted).strip() == str(target).strip()
    return a == b


def sample_metrics(
    spec: TaskSpec, samples: list[dict[str, Any]]
) -> list[tuple[str, str, float, dict]]:
    """(item, metric, value, detail) rows from lm-eval's logged samples of one task."""
    rows = []
    for sample in samples:
        item = str(sample["doc_id"])
        if spec.family == "gsm8k":
            name = sample["filter"]
            answer = sample["filtered_resps"][0]
            target = str(sample["target"])
            detail = {"answer": answer, "target": target}
            rows.append((item, f"exact_match,{name}", float(sample["exact_match"]), detail))
            rows.append(
                (item, f"numeric_match,{name}", float(numeric_equal(answer, target)), detail)
            )
        else:
            detail = {
                "target": sample["target"],
                "loglikelihoods": [float(r[0]) for r in sample["filtered_resps"]],
            }
            for metric in spec.metrics:
                rows.append((item, metric, float(sample[metric]), detail))
    return rows


def edited_hflm_class() -> type:
    """lm-eval's `HFLM`, with every forward and generation under `self.interventions` bound to
    its batch: a loglikelihood batch is right-padded context + continuation, so it is bound with
    each row's context length (found from the request it came from); a generation batch is
    left-padded, so it is bound with its attention mask."""
    from lm_eval.models.huggingface import HFLM

    class EditedHFLM(HFLM):  # type: ignore[misc, valid-type]
        interventions: tuple[Intervention, ...] = ()
        _contexts: dict[tuple[int, ...], int] = {}  # noqa: RUF012 (replaced per call)

        def _loglikelihood_tokens(self, requests: Any, *args: Any, **kwargs: Any) -> Any:
            room = self.max_length + 1
            contexts = {}
            for _, context, continuation in requests:
                whole = context + continuation
                # lm-eval cuts from the left past its maximum length, then drops the last token
                cut = max(0, len(whole) - room)
                contexts[tuple(whole[-room:][:-1])] = max(0, len(context) - cut)
            self._contexts = contexts
            try:
                return super()._loglikelihood_tokens(requests, *args, **kwargs)
            finally:
                self._contexts = {}

        def _context_length(self, row: list[int]) -> int:
            """A padded row's context length: the longest request its tokens start with
            (padding is 0, and 0 is also a token, so every length from the unpadded one up)."""
            end = len(row)
            while end > 0 and row[end - 1] == 0:
                end -= 1
            for length in range(end, len(row) + 1):
                found = self._contexts.get(tuple(row[:length]))
                if found is not None:
                    return found
            return end  # not a request's row (a batch-size probe): all of it

        def _model_call(self, inps: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if not self.interventions:
                return super()._model_call(inps, *args, **kwargs)
            lengths = [self._context_length(row) for row in inps.tolist()]
            rows = [""] * inps.shape[0]
            with apply(self.model, bind(self.interventions, rows, None, lengths)):
                return super()._model_call(inps, *args, **kwargs)

        def _model_generate(self, context: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self.interventions:
                return super()._model_generate(context, *args, **kwargs)
            mask = kwargs.get("attention_mask")
            rows = [""] * context.shape[0]
            with apply(self.model, bind(self.interventions, rows, mask)):
                return super()._model_generate(context, *args, **kwargs)

    return EditedHFLM


def _check_applicable(interventions: Sequence[Intervention]) -> None:
    """lm-eval batches its own forward passes (context + continuation, right-padded): only
    edits that apply the same way at every position can run inside it. A gated edit can (each
    batch is bound with its rows' padding and context lengths), when what it gates can."""
    if needs_twin(interventions):
        raise UserError("capabilities cannot be measured under a 'retain' latent edit yet")
    for item in interventions:
        if isinstance(item, Gated):
            _check_applicable([item.edit])
        elif isinstance(item, PerPromptLatents):
            raise UserError(
                "per-prompt latent sets exist only for their own prompts; use a global set"
            )
        if isinstance(item, EditLatents) and (
            item.positions != "all" or item.last_prompt_tokens or item.from_position is not None
        ):
            raise UserError(
                "capability tasks need latent edits at all positions (no prompt-only, "
                "from-position or last-tokens edits)"
            )


@dataclass
class CapabilityResult:
    task: str
    condition: str
    metric: str
    estimate: Estimate
    difference_vs_base: Estimate | None = None
    p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task": self.task,
            "condition": self.condition,
            "metric": self.metric,
            "mean": self.estimate.mean,
            "ci95": [self.estimate.low, self.estimate.high],
            "n": self.estimate.n,
        }
        if self.difference_vs_base is not None:
            out["difference_vs_base"] = self.difference_vs_base.mean
            out["difference_ci95"] = [self.difference_vs_base.low, self.difference_vs_base.high]
            out["p_value"] = self.p_value
        return out


class CapabilityRunner:
    """Runs lm-eval tasks on one loaded model under any number of conditions, through the
    results store."""

    @classmethod
    def for_worker(cls, lm: LoadedModel, shared: dict[str, Any]) -> CapabilityRunner:
        """A runner without a store, from a work item's shared settings (its task configs in
        a folder of its own)."""
        import tempfile

        data = dict(shared["settings"])
        data["tasks"] = tuple(data["tasks"])
        data["mmlu_subjects"] = tuple(data["mmlu_subjects"])
        workdir = Path(tempfile.mkdtemp(prefix="refusal-lens-capabilities-"))
        return cls(lm, None, CapabilitySettings(**data), shared["data_dir"], workdir)

    def __init__(
        self,
        lm: LoadedModel,
        store: ResultStore | None,
        settings: CapabilitySettings,
        data_dir: str | Path | None,
        workdir: Path,
    ) -> None:
        try:
            from lm_eval.tasks import TaskManager
        except ImportError:
            raise UserError(
                'capability tasks need lm-eval; pip install -e ".[capabilities]"'
            ) from None
        self.lm = lm
        self.store = store  # None on a worker: it computes chunks, the driver stores them
        self.settings = settings
        self.data_dir = None if data_dir is None else str(data_dir)
        self.specs = task_specs(settings, data_dir, workdir)
        self.manager = TaskManager(
            include_path=str(write_task_configs(self.specs, workdir / "lm_eval_tasks"))
        )
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        self.hflm = edited_hflm_class()(
            pretrained=lm.model,
            tokenizer=lm.tokenizer,
            batch_size=settings.batch_size,
            device=str(lm.device),
        )

    def items(self, spec: TaskSpec) -> list[int]:
        limit = self.settings.gsm8k_limit if spec.family == "gsm8k" else self.settings.limit
        return list(range(spec.n_items if limit is None else min(spec.n_items, limit)))

    def task_key(self, family: str) -> str:
        """The store's task name: the family plus a hash of what produced its numbers (the
        task configs, chat-template use, lm-eval's version), so changed settings recompute."""
        from importlib import metadata

        configs = [s.config for s in self.specs if s.family == family]
        settings = {
            "configs": configs,
            "chat_template": self.settings.chat_template,
            "lm_eval": metadata.version("lm-eval"),
        }
        return f"{family}@{stable_hash(settings)[:10]}"

    def evaluate(
        self,
        condition: Condition,
        interventions: Sequence[Intervention],
        on_progress: Callable[[str, int, int], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        """Compute and store every item still missing for this condition; `executor` (other
        than local): each chunk of a task is a work item, on a replica's own lm-eval model."""
        _check_applicable(interventions)
        if self.store is None:
            raise UserError("this capability runner has no results store to evaluate into")
        chunks = []
        for spec in self.specs:
            primary = spec.metrics[0]
            wanted = [self._item(spec, i) for i in self.items(spec)]
            done = self.store.measurements(condition, self.task_key(spec.family), primary, wanted)
            missing = [i for i in self.items(spec) if self._item(spec, i) not in done]
            chunks += [
                (spec, missing[i : i + self.settings.chunk])
                for i in range(0, len(missing), self.settings.chunk)
            ]

        def keep(n: int, rows: list[list[Any]]) -> None:
            spec, chunk = chunks[n]
            self.store.add_measurement_rows(  # type: ignore[union-attr]
                condition,
                self.task_key(spec.family),
                [(self._item(spec, int(i)), m, v, d) for i, m, v, d in rows],
            )
            if on_progress:
                on_progress(spec.name, len(chunk), sum(len(c) for _, c in chunks))

        if executor is None or executor.name == "local":
            for n, (spec, chunk) in enumerate(
                tqdm(chunks, desc=f"capabilities ({condition.label})", unit="chunk")
            ):
                keep(n, [list(row) for row in self.chunk_rows(spec.name, chunk, interventions)])
            return
        executor.map(
            "capabilities",
            {
                "settings": asdict(self.settings),
                "data_dir": self.data_dir,
                "interventions": [item.to_dict() for item in interventions],
            },
            [{"task": spec.name, "items": chunk} for spec, chunk in chunks],
            keep,
            desc=f"capabilities ({condition.label})",
            units=[len(chunk) for _, chunk in chunks],
        )

    def chunk_rows(
        self, task: str, chunk: Sequence[int], interventions: Sequence[Intervention]
    ) -> list[tuple[str, str, float, dict]]:
        """(item, metric, value, detail) of some items of one task, under `interventions`."""
        from lm_eval import simple_evaluate

        spec = next((s for s in self.specs if s.name == task), None)
        if spec is None:
            raise UserError(f"no capability task {task!r} in this run's settings")
        self.hflm.interventions = tuple(interventions)
        try:
            with torch.inference_mode():
                out = simple_evaluate(
                    model=self.hflm,
                    tasks=[spec.name],
                    task_manager=self.manager,
                    samples={spec.name: list(chunk)},
                    log_samples=True,
                    bootstrap_iters=0,
                    apply_chat_template=self.settings.chat_template,
                    verbosity="ERROR",
                )
        finally:
            self.hflm.interventions = ()
        if out is None:
            raise UserError(f"lm-eval returned nothing for {spec.name}")
        return sample_metrics(spec, out["samples"][spec.name])

    @staticmethod
    def _item(spec: TaskSpec, index: int | str) -> str:
        """Item ids are unique per family: MMLU items carry their subject."""
        return (
            f"{spec.name.removeprefix('rl_mmlu_')}/{index}" if spec.family == "mmlu" else str(index)
        )

    def results(
        self, condition: Condition, base: Condition | None = None
    ) -> list[CapabilityResult]:
        out = []
        for family in dict.fromkeys(spec.family for spec in self.specs):
            specs = [s for s in self.specs if s.family == family]
            metrics = specs[0].metrics
            wanted = [self._item(s, i) for s in specs for i in self.items(s)]
            for metric in metrics:
                values = self.store.measurements(condition, self.task_key(family), metric, wanted)
                if not all(item in values for item in wanted):
                    continue
                mine = [values[item] for item in wanted]
                result = CapabilityResult(family, condition.label, metric, bootstrap_mean(mine))
                if base is not None and base != condition:
                    reference = self.store.measurements(base, self.task_key(family), metric, wanted)
                    if all(item in reference for item in wanted):
                        diff, p_value = paired_difference(mine, [reference[i] for i in wanted])
                        result.difference_vs_base, result.p_value = diff, p_value
                out.append(result)
        return out


# --------------------------------------------------------------------------- cross-check


@torch.inference_mode()
def direct_multiple_choice(
    lm: LoadedModel,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    interventions: Sequence[Intervention] = (),
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """lm-eval's multiple-choice protocol without lm-eval: the log-likelihood of " choice"
    after the context (plain text, no chat template; the continuation's tokens are those of
    context + continuation after the context's own tokens, as lm-eval splits them); acc takes
    the argmax, acc_norm the argmax of log-likelihood per character of the choice."""
    requests = [
        (i, j, ctx, " " + choice)
        for i, (ctx, opts) in enumerate(zip(contexts, choices, strict=True))
        for j, choice in enumerate(opts)
    ]
    scores: dict[tuple[int, int], float] = {}
    pad = lm.tokenizer.pad_token_id or 0
    with apply(lm.model, interventions):
        for start in range(0, len(requests), batch_size):
            batch = requests[start : start + batch_size]
            rows, spans = [], []
            for _, _, ctx, cont in batch:
                context_ids = lm.tokenizer(ctx, add_special_tokens=False)["input_ids"]
                whole = lm.tokenizer(ctx + cont, add_special_tokens=False)["input_ids"]
                # lm-eval splits at the context's token boundary the same way
                cont_ids = whole[len(context_ids) :]
                rows.append(context_ids + cont_ids)
                spans.append((len(context_ids), len(cont_ids)))
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for k, row in enumerate(rows):
                ids[k, : len(row)] = torch.tensor(row)
                mask[k, : len(row)] = 1
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits
            logp = torch.log_softmax(logits.float(), -1).cpu()
            for k, (i, j, _, _) in enumerate(batch):
                n_ctx, n_cont = spans[k]
                positions = torch.arange(n_ctx - 1, n_ctx - 1 + n_cont)
                targets = ids[k, n_ctx : n_ctx + n_cont]
                scores[(i, j)] = float(logp[k, positions, targets].sum())
    out = []
    for i, opts in enumerate(choices):
        ll = [scores[(i, j)] for j in range(len(opts))]
        per_char = [s / len(o) for s, o in zip(ll, opts, strict=True)]
        out.append(
            {
                "loglikelihoods": ll,
                "pred": max(range(len(ll)), key=ll.__getitem__),
                "pred_norm": max(range(len(ll)), key=per_char.__getitem__),
            }
        )
    return out
