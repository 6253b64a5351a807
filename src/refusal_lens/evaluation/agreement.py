"""How far to trust a judge: its verdicts against human labels (XSTest, GPTFuzz).

Each judge's verdict is read as "complied" (for a refusal-only judge: not refused, which is
what its jailbreak rate means) and compared with the human label: accuracy and Cohen's kappa,
each with a 95% bootstrap interval, plus the confusion counts. Verdicts are saved per
(judge, set) in the run folder, chunk by chunk as they are computed, so a killed run resumes
at the next chunk and a rerun with one more judge only computes that judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data.labelled import LabelledResponse, load_labelled
from ..executors.base import Executor
from ..judges import Judge, Verdict
from ..runs import RunDir, stable_hash
from .statistics import bootstrap_kappa, bootstrap_mean


def judge_on_labelled(
    judge: Judge,
    rows: Sequence[LabelledResponse],
    *,
    batch_size: int = 16,
    run: RunDir | None = None,
    key: str = "",
    executor: Executor | None = None,
    spec: str | None = None,
) -> list[bool | None]:
    """The judge's verdicts on `rows`; with `run`, each chunk is appended to
    `judges/chunks.jsonl` under `key` as it is judged, and a rerun skips judged chunks (an LLM
    judge on a CPU takes minutes per chunk). `executor` (with the judge's `spec`, which its
    workers build the judge from): the chunks are its work items."""
    done = {
        record["start"]: record["predictions"]
        for record in (run.read_jsonl("judges/chunks.jsonl", key) if run else ())
        if record.get("size") == batch_size
    }
    starts = [start for start in range(0, len(rows), batch_size) if start not in done]

    def keep(n: int, said: list[bool | None]) -> None:
        if run:
            record = {"start": starts[n], "size": batch_size, "predictions": said}
            run.append_jsonl("judges/chunks.jsonl", key, [record])
        done[starts[n]] = said

    chunks = [rows[start : start + batch_size] for start in starts]
    if executor is None or spec is None:
        for n, chunk in enumerate(tqdm(chunks, desc=judge.name, unit="batch")):
            verdicts = judge.verdicts([r.prompt for r in chunk], [r.response for r in chunk])
            keep(n, [v.complied_or_not_refused() for v in verdicts])
    else:
        evaluated = getattr(getattr(judge, "inner", judge), "lm", None) is not None
        executor.share_judges({spec: judge})
        executor.map(
            "verdicts",
            {"judge": spec, "evaluated_model": evaluated, "interventions": []},
            [
                {"requests": [r.prompt for r in chunk], "completions": [r.response for r in chunk]}
                for chunk in chunks
            ],
            lambda n, verdicts: keep(n, [Verdict(**v).complied_or_not_refused() for v in verdicts]),
            desc=judge.name,
            units=[len(chunk) for chunk in chunks],
            pool="model" if evaluated else "judge",
        )
    return [said for start in sorted(done) for said in done[start]][: len(rows)]


def agreement_row(
    judge: dict[str, Any], dataset: str, labels: Sequence[bool], predictions: Sequence[bool | None]
) -> dict[str, Any]:
    pairs = [(y, p) for y, p in zip(labels, predictions, strict=True) if p is not None]
    gold = [y for y, _ in pairs]
    said = [bool(p) for _, p in pairs]
    accuracy = bootstrap_mean([float(y == p) for y, p in pairs])
    kappa = bootstrap_kappa(gold, said)
    return {
        "judge": judge,
        "dataset": dataset,
        "n": len(pairs),
        "unjudged": len(labels) - len(pairs),
        "accuracy": accuracy.mean,
        "accuracy_ci95": [accuracy.low, accuracy.high],
        "kappa": kappa.mean,
        "kappa_ci95": [kappa.low, kappa.high],
        "confusion": {
            "complied_said_complied": sum(y and p for y, p in zip(gold, said, strict=True)),
            "complied_said_not": sum(y and not p for y, p in zip(gold, said, strict=True)),
            "not_said_complied": sum(p and not y for y, p in zip(gold, said, strict=True)),
            "not_said_not": sum(not y and not p for y, p in zip(gold, said, strict=True)),
        },
        "gold_complied_rate": sum(gold) / len(gold) if gold else None,
    }


def judge_agreement(
    judges: dict[str, Judge],
    datasets: Sequence[str],
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    executor: Executor | None = None,
) -> list[dict[str, Any]]:
    """Agreement of every judge with the human labels of every set; writes
    OUT/agreement.json and OUT/agreement.md. `executor`: where the judges' chunks run."""
    run = RunDir(out)
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        labelled = load_labelled(dataset, data_dir, limit=limit, seed=seed)
        labels = [r.complied for r in labelled]
        for spec, judge in judges.items():
            described = judge.describe()
            if not judge.reads_completions:
                rows.append(
                    {
                        "judge": described,
                        "dataset": dataset,
                        "skipped": "scores the evaluated model's own next token, not a given "
                        "completion",
                    }
                )
                continue
            key = stable_hash(
                {"judge": described, "items": [(r.prompt, r.response) for r in labelled]}
            )
            safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in spec)
            stage = f"judges/{dataset}.{safe}.json"
            saved = run.load_stage(stage, key)
            if saved is None:
                predictions = judge_on_labelled(
                    judge, labelled, run=run, key=key, executor=executor, spec=spec
                )
                saved = {"predictions": predictions}
                run.save_stage(stage, key, saved)
            rows.append(agreement_row(described, dataset, labels, saved["predictions"]))
            run.save_stage("agreement.json", "all", {"rows": rows})
    run.save_stage("agreement.json", "all", {"rows": rows})
    (run.path / "agreement.md").write_text(agreement_markdown(rows))
    return rows


def agreement_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| judge | dataset | n | accuracy [95% CI] | Cohen's kappa [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        name = row["judge"]["name"]
        for key in ("model", "weights"):  # which model or trained judge, when it has one
            if key in row["judge"]:
                name += f" ({row['judge'][key]})"
        if "skipped" in row:
            lines.append(f"| {name} | {row['dataset']} | - | not applicable: {row['skipped']} | |")
            continue
        acc, kap = row["accuracy_ci95"], row["kappa_ci95"]
        lines.append(
            f"| {name} | {row['dataset']} | {row['n']} | {row['accuracy']:.3f} "
            f"[{acc[0]:.3f}, {acc[1]:.3f}] | {row['kappa']:.3f} [{kap[0]:.3f}, {kap[1]:.3f}] |"
        )
    return "\n".join(lines) + "\n"


def judge_file(
    judges: dict[str, Judge],
    path: str | Path,
    out: str | Path,
    *,
    batch_size: int = 16,
    group_by: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Every judge's verdicts on a file of (prompt, response) pairs: OUT/verdicts.jsonl (one
    record per pair and judge, written chunk by chunk, so a rerun resumes), and per judge the
    rate of compliance (with its interval), of refusal and the degenerate count; with a label
    column, agreement with the labels too (OUT/judged.json, OUT/judged.md). With `group_by`
    columns, one row per judge and group as well."""
    from ..data.labelled import read_pairs

    pairs = read_pairs(path, group_by=group_by)
    run = RunDir(out)
    labels = [p.label for p in pairs]
    rows: list[dict[str, Any]] = []
    for spec, judge in judges.items():
        described = judge.describe()
        if not judge.reads_completions:
            raise ValueError(f"{spec} scores the evaluated model's next token, not a completion")
        key = stable_hash({"judge": described, "items": [(p.prompt, p.response) for p in pairs]})
        done = {r["i"]: r for r in run.read_jsonl("verdicts.jsonl", key)}
        for start in tqdm(range(0, len(pairs), batch_size), desc=judge.name, unit="batch"):
            chunk = [i for i in range(start, min(start + batch_size, len(pairs))) if i not in done]
            if not chunk:
                continue
            said = judge.verdicts(
                [pairs[i].prompt for i in chunk], [pairs[i].response for i in chunk]
            )
            records = [
                {
                    "i": i,
                    "judge": spec,
                    "complied": v.complied_or_not_refused(),
                    "refused": v.refused,
                    "degenerate": v.detail.get("degenerate"),
                    "score": v.score,
                }
                for i, v in zip(chunk, said, strict=True)
            ]
            run.append_jsonl("verdicts.jsonl", key, records)
            done.update({r["i"]: r for r in records})
        verdicts = [done[i] for i in range(len(pairs))]
        groups = [""] + (sorted({p.group for p in pairs}) if group_by else [])
        for group in groups:
            chosen = [i for i, p in enumerate(pairs) if not group or p.group == group]
            rows.append(
                _judged_row(
                    spec,
                    described,
                    [verdicts[i] for i in chosen],
                    [labels[i] for i in chosen],
                    str(path),
                )
                | {"group": group}
            )
        run.save_stage("judged.json", "all", {"file": str(path), "rows": rows})
    (run.path / "judged.md").write_text(judged_markdown(rows))
    return rows


def _judged_row(
    spec: str,
    described: dict[str, Any],
    verdicts: list[dict[str, Any]],
    labels: list[bool | None],
    source: str,
) -> dict[str, Any]:
    complied = [v["complied"] for v in verdicts if v["complied"] is not None]
    refused = [v["refused"] for v in verdicts if v["refused"] is not None]
    rate = bootstrap_mean([float(c) for c in complied]) if complied else None
    row: dict[str, Any] = {
        "judge": described,
        "spec": spec,
        "n": len(verdicts),
        "complied": rate.mean if rate else None,
        "complied_ci95": [rate.low, rate.high] if rate else None,
        "refused": sum(refused) / len(refused) if refused else None,
        "degenerate": sum(1 for v in verdicts if v["degenerate"]),
    }
    if labels and all(label is not None for label in labels):
        gold = [bool(label) for label in labels]
        row["agreement"] = agreement_row(described, source, gold, [v["complied"] for v in verdicts])
    return row


def judged_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| judge | group | n | complied [95% CI] | refused | degenerate | accuracy vs labels "
        "| kappa |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rate = "-"
        if row["complied"] is not None:
            low, high = row["complied_ci95"]
            rate = f"{row['complied']:.2f} [{low:.2f}, {high:.2f}]"
        refused = "-" if row["refused"] is None else f"{row['refused']:.2f}"
        agree, kappa = "-", "-"
        if "agreement" in row:
            a = row["agreement"]
            (al, ah), (kl, kh) = a["accuracy_ci95"], a["kappa_ci95"]
            agree = f"{a['accuracy']:.3f} [{al:.3f}, {ah:.3f}]"
            kappa = f"{a['kappa']:.3f} [{kl:.3f}, {kh:.3f}]"
        lines.append(
            f"| {row['spec']} | {row.get('group') or 'all'} | {row['n']} | {rate} | {refused} | "
            f"{row['degenerate']} | {agree} | {kappa} |"
        )
    return "\n".join(lines) + "\n"
