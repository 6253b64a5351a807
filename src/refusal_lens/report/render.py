"""`refusal-lens report RUN`: a self-contained HTML page (figures embedded as PNG) and the same
content in Markdown, from what a benchmark run folder holds.

Sections: the method-by-dataset table in the layout of the paper's table with the paper's
numbers beside ours, figures of the same, sample answers with every judge's verdict (what
the rates count), per-category bars, capabilities, side effects,
refusal induction over v, refusal and KL over K* and c (the search), latent cards, the
analyses found in RUN/analyses (linear probes), judge agreement, and the run's manifest.
Everything shown is read from the run folder: the report computes no result of its own.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import schema
from ..errors import UserError
from . import plots
from .analyses import analyses_sections
from .page import Page

# Yeo et al. 2025: HarmBench-classifier jailbreak rate on HarmBench / JBB / AdvBench,
# transductive protocol (per-prompt sets selected on the evaluation prompts).
PAPER_DATASETS = ("harmbench_test", "jailbreakbench", "advbench")
PAPER_TABLE: dict[str, dict[str, tuple[float, float, float]]] = {
    "Gemma-2-2B-IT": {
        "base": (0.00, 0.01, 0.00),
        "cossim": (0.10, 0.13, 0.04),
        "actdiff": (0.12, 0.26, 0.44),
        "ap": (0.27, 0.26, 0.29),
        "ours": (0.72, 0.57, 0.82),
        "direction": (0.86, 0.83, 0.86),
    },
    "Llama-3.1-8B-IT": {
        "base": (0.12, 0.02, 0.04),
        "cossim": (0.87, 0.87, 0.82),
        "actdiff": (0.45, 0.67, 0.77),
        "ap": (0.71, 0.63, 0.63),
        "ours": (0.82, 0.83, 0.74),
        "direction": (0.93, 0.91, 0.98),
    },
}
METHOD_NAMES = {
    "base": "Base",
    "cossim": "CosSim",
    "actdiff": "ActDiff",
    "ap": "AP",
    "ours": "CosSim+LA-IG (ours)",
    "direction": "AS (direction ablation)",
    "random": "Random (control)",
}
METHOD_ORDER = ("base", "cossim", "actdiff", "ap", "ours", "direction", "random")


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}
.card{border:1px solid #ccc;border-radius:6px;padding:.5em 1em;margin:1em 0}
.ctx{font-family:monospace;white-space:pre-wrap;margin:.2em 0;font-size:12px}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
"""


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _judge(row: dict[str, Any]) -> str:
    """Tables are grouped by judge spec: two `harmbench` judges with other models differ."""
    return str(row.get("judge_spec") or row["judge"])


def judge_order(summary: dict[str, Any]) -> list[str]:
    """Judges of the harmful tables, those that read whether the answer complied first (the
    headline), refusal-only judges after."""
    return sorted(
        dict.fromkeys(_judge(r) for r in summary["harmful"]),
        key=lambda j: j.split(":")[0] in ("substring", "first-token"),
    )


def _cell(entry: dict[str, Any] | None, digits: int = 2) -> str:
    if not entry or entry.get("mean") is None:
        return "-"
    low, high = entry["ci95"]
    text = f"{entry['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    if entry.get("degenerate"):
        text += f" ({entry['degenerate']} degenerate)"
    return text


def _harmful(summary: dict[str, Any], protocol: str, judge: str) -> dict[str, dict[str, Any]]:
    """method (first row of it) -> dataset -> jailbreak-rate entry."""
    out: dict[str, dict[str, Any]] = {}
    for row in summary["harmful"]:
        if _judge(row) != judge or row["protocol"] not in (protocol, "-"):
            continue
        if "jailbreak_rate" in row:
            out.setdefault(row["condition"], {})[row["dataset"]] = row["jailbreak_rate"] | {
                "method": row["method"],
                "degenerate": row.get("degenerate", 0),
            }
    return out


def paper_table(page: Page, summary: dict[str, Any]) -> None:
    judges = judge_order(summary)
    protocols = list(
        dict.fromkeys(r["protocol"] for r in summary["harmful"] if r["protocol"] != "-")
    )
    datasets = [d for d in PAPER_DATASETS if any(r["dataset"] == d for r in summary["harmful"])]
    datasets += [
        d for d in dict.fromkeys(r["dataset"] for r in summary["harmful"]) if d not in datasets
    ]
    for protocol in protocols or ["heldout"]:
        for judge in judges:
            rows_by = _harmful(summary, protocol, judge)
            header = ["method", *(f"ours: {d}" for d in datasets)]
            header += [f"paper {model} (HB / JBB / AdvB)" for model in PAPER_TABLE]
            rows = []
            for condition, cells in sorted(
                rows_by.items(),
                key=lambda kv: (
                    METHOD_ORDER.index(next(iter(kv[1].values()))["method"])
                    if next(iter(kv[1].values()))["method"] in METHOD_ORDER
                    else 99
                ),
            ):
                method = next(iter(cells.values()))["method"]
                paper = [
                    " / ".join(f"{x:.2f}" for x in table[method]) if method in table else "-"
                    for table in PAPER_TABLE.values()
                ]
                rows.append(
                    [
                        f"{METHOD_NAMES.get(method, method)} [{condition}]",
                        *(_cell(cells.get(d)) for d in datasets),
                        *paper,
                    ]
                )
            page.paragraph(
                f"Jailbreak rate, protocol {protocol}, judge {judge} (a refusal-only judge's "
                "jailbreak rate is 1 - its refusal rate); the paper's numbers use the HarmBench "
                "Llama-2-13B classifier and the transductive protocol."
            )
            page.table(header, rows)


def harmful_figures(page: Page, summary: dict[str, Any]) -> None:
    judges = judge_order(summary)
    datasets = list(dict.fromkeys(r["dataset"] for r in summary["harmful"]))
    for judge in judges:
        rows = [r for r in summary["harmful"] if _judge(r) == judge and "jailbreak_rate" in r]
        labels = list(dict.fromkeys(f"{r['condition']} ({r['protocol']})" for r in rows))
        series = {
            label: [
                next(
                    (
                        r["jailbreak_rate"]
                        for r in rows
                        if f"{r['condition']} ({r['protocol']})" == label and r["dataset"] == d
                    ),
                    None,
                )
                for d in datasets
            ]
            for label in labels
        }
        png = plots.grouped_bars(
            datasets, series, title=f"jailbreak rate ({judge} judge)", ylabel="jailbreak rate"
        )
        page.figure(
            f"jailbreak_{_file_name(judge)}.png", png, f"Jailbreak rate by condition, {judge} judge"
        )


def category_figure(page: Page, summary: dict[str, Any]) -> None:
    rows = [r for r in summary["harmful"] if r.get("by_category")]
    if not rows:
        return
    judge = _judge(rows[0])
    dataset = rows[0]["dataset"]
    chosen = [r for r in rows if _judge(r) == judge and r["dataset"] == dataset]
    categories = sorted({c for r in chosen for c in r["by_category"]})
    series = {
        f"{r['condition']} ({r['protocol']})": [r["by_category"].get(c) for c in categories]
        for r in chosen
    }
    png = plots.grouped_bars(
        categories, series, title=f"jailbreak rate by category: {dataset}", ylabel="jailbreak rate"
    )
    page.figure("categories.png", png, f"Jailbreak rate per category of {dataset} ({judge} judge)")


def capability_section(page: Page, summary: dict[str, Any]) -> None:
    rows = summary.get("capabilities") or []
    if not rows:
        return
    page.heading("Capabilities (lm-eval, same items for every condition)")
    table = []
    for row in rows:
        diff = row.get("difference_vs_base")
        delta = "" if diff is None else f"{diff:+.3f} (p={row['p_value']:.3f})"
        table.append([row["condition"], row["task"], row["metric"], _cell(row, 3), delta])
    page.table(["condition", "task", "metric", "score [95% CI]", "vs base"], table)
    primary = {}
    for row in rows:
        primary.setdefault((row["task"], row["condition"]), row)
    tasks = list(dict.fromkeys(t for t, _ in primary))
    conditions = list(dict.fromkeys(c for _, c in primary))
    series = {c: [primary.get((t, c)) for t in tasks] for c in conditions}
    page.figure(
        "capabilities.png",
        plots.grouped_bars(tasks, series, title="capabilities", ylabel="score"),
        "Capability scores (first metric of each task) with 95% intervals",
    )


def side_effect_section(page: Page, summary: dict[str, Any]) -> None:
    rows = summary.get("side_effects") or []
    if not rows:
        return
    page.heading("Side effects")
    names = list(dict.fromkeys(k for row in rows for k in row if k != "condition"))
    page.paragraph(
        "harmless_kl: KL(base || intervened) per token over the base model's own harmless "
        "rollouts; rollout_ce / generic_ce: cross-entropy (nats per token) of those rollouts and "
        "of held-out generic text; xstest_over_refusal: refusal rate on XSTest's safe prompts "
        f"({_screen_tokens(summary)}-token completions, substring judge)."
    )
    page.table(
        ["condition", *names],
        [[r["condition"], *(_cell(r.get(n), 3) for n in names)] for r in rows],
    )


def _screen_tokens(summary: dict[str, Any]) -> str:
    # runs written before screen_tokens existed generated these at the full length
    return str(summary.get("screen_tokens", summary["max_new_tokens"]))


def induction_section(page: Page, summary: dict[str, Any]) -> None:
    rows = summary.get("induction") or []
    test = [r for r in rows if r.get("split", "test") == "test"]
    curve = [r for r in rows if r.get("split") == "validation" and r.get("value") is not None]
    if not test:
        return
    page.heading("Refusal induction (latents set to v on harmless prompts)")
    page.paragraph(
        f"{_screen_tokens(summary)}-token completions, substring judge; v chosen on harmless "
        "validation prompts held out from the test prompts; a degenerate answer (a loop, an "
        "empty string) counts as no refusal, and each row says how many there were."
    )
    page.table(
        ["condition", "refusal rate [95% CI]", "degenerate"],
        [
            [r["condition"], _cell(r), f"{r.get('degenerate', '-')} of {r.get('n', '-')}"]
            for r in test
        ],
    )
    if not curve:
        return
    references = {r["condition"]: r for r in test if r.get("value") is None}
    page.figure(
        "induction.png",
        plots.line_with_band(
            [r["value"] for r in curve],
            curve,
            title="refusal induction (validation)",
            xlabel="value v of the selected latents",
            ylabel="refusal rate",
            references=references,
            logx=all(r["value"] > 0 for r in curve),
        ),
        "Refusal rate on harmless validation prompts over v (dashed: base and direction "
        "addition on the test prompts)",
    )


def search_section(page: Page, run: Path) -> None:
    path = run / "latents" / "heldout" / "ours" / "search.json"
    if not path.exists():
        return
    search = json.loads(path.read_text())
    page.heading("Choosing K* and c (validation prompts)")
    chosen = search.get("chosen") or {}
    page.paragraph(
        f"Chosen: K* = {chosen.get('k')}, c = {chosen.get('value')} (lowest refusal rate whose "
        f"harmless KL stays under {search['settings']['kl_limit']})."
    )
    page.figure("search.png", plots.search_grid(search), "Refusal rate and KL over c and K*")


def cards_section(page: Page, run: Path) -> None:
    path = run / "cards" / "cards.json"
    if not path.exists():
        return
    from ..cards import card_fragments

    cards = json.loads(path.read_text())["cards"]
    page.heading(f"Latent cards ({len(cards)} latents of the global set)")
    lines = [
        f"- layer {c['layer']} latent {c['latent']}: "
        f"cosine {c['cosine_with_refusal_direction']:.3f}, "
        f"fires on {c['fires_on']['harmful_prompts']:.0%} harmful / "
        f"{c['fires_on']['harmless_prompts']:.0%} harmless prompts"
        for c in cards
    ]
    page.raw_html(card_fragments(cards), "\n".join(lines))


def agreement_section(page: Page, paths: Sequence[Path]) -> None:
    for path in paths:
        if not path.exists():
            continue
        fix = "pass the agreement.json that judge-agreement wrote (or rerun it)"
        data = schema.read_json(path, "judge agreement", fix)
        rows = schema.validate(data, AGREEMENT_SCHEMA, str(path), fix)["rows"]
        page.heading("Judge agreement with human labels")
        table = []
        for row in rows:
            name = row["judge"]["name"] + (
                f" ({row['judge']['model']})" if "model" in row["judge"] else ""
            )
            if "skipped" in row:
                table.append([name, row["dataset"], "-", "not applicable", ""])
                continue
            table.append(
                [
                    name,
                    row["dataset"],
                    str(row["n"]),
                    _cell({"mean": row["accuracy"], "ci95": row["accuracy_ci95"]}, 3),
                    _cell({"mean": row["kappa"], "ci95": row["kappa_ci95"]}, 3),
                ]
            )
        page.table(["judge", "labels", "n", "accuracy [95% CI]", "Cohen's kappa [95% CI]"], table)
        return


_RATE = schema.Maybe(schema.Number(finite=False))
_JUDGE = schema.Obj(required={"name": schema.Str()})
AGREEMENT_SCHEMA = schema.Obj(
    required={
        "rows": schema.ListOf(
            schema.Either(
                (
                    schema.Obj(
                        required={"judge": _JUDGE, "dataset": schema.Str(), "skipped": schema.Str()}
                    ),
                    schema.Obj(
                        required={
                            "judge": _JUDGE,
                            "dataset": schema.Str(),
                            "n": schema.Int(min=0),
                            "accuracy": _RATE,
                            "accuracy_ci95": schema.ListOf(_RATE, length=2),
                            "kappa": _RATE,
                            "kappa_ci95": schema.ListOf(_RATE, length=2),
                        }
                    ),
                )
            )
        )
    }
)
# benchmark.json: the fields the report reads first (the tables are checked as they render)
SUMMARY_SCHEMA = schema.Obj(
    required={
        "model": schema.Obj(required={"name": schema.Str(), "weights_sha256": schema.Str()}),
        "config": schema.Obj(
            required={"limit": schema.Maybe(schema.Int(min=1)), "k": schema.Int()}
        ),
        "direction": schema.Obj(required={"layer": schema.INDEX}),
        "max_new_tokens": schema.Int(min=1),
        "harmful": schema.ListOf(schema.Obj()),
    },
    optional={
        "saes": schema.Maybe(schema.Obj(optional={"path": schema.Maybe(schema.Str())})),
        "side_effects": schema.ListOf(schema.Obj()),
        "capabilities": schema.ListOf(schema.Obj()),
        "induction": schema.ListOf(schema.Obj()),
        "samples": schema.ListOf(
            schema.Obj(
                required={
                    "condition": schema.Str(),
                    "protocol": schema.Str(),
                    "dataset": schema.Str(),
                    "n": schema.Int(),
                    "disputed": schema.Int(),
                    "items": schema.ListOf(
                        schema.Obj(
                            required={
                                "prompt": schema.Str(),
                                "completion": schema.Str(),
                                "verdicts": schema.Obj(),
                            }
                        )
                    ),
                }
            )
        ),
    },
)


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def samples_section(page: Page, summary: dict[str, Any]) -> None:
    """Next to the rates, what they count: answers of every condition and benchmark with
    every judge's verdict (answers the judges disagree on first)."""
    samples = summary.get("samples") or []
    if not samples:
        return
    page.heading("What the rates count: sample answers and every judge's verdict")
    page.paragraph(
        "For each condition and benchmark, up to three answers (those the judges disagree on "
        "first, then a seeded random draw), with what each judge said. 'degenerate' answers "
        "(empty, a few words, a loop, the request echoed) are never counted as jailbreaks. "
        "All answers are in results.sqlite (`refusal-lens results RUN --table completions`)."
    )
    judges = list(
        dict.fromkeys(j for cell in samples for i in cell["items"] for j in i["verdicts"])
    )
    rows = []
    for cell in samples:
        for item in cell["items"]:
            rows.append(
                [
                    cell["condition"],
                    cell["dataset"],
                    _short(item["prompt"], 100),
                    _short(item["completion"], 320) or "(empty)",
                    *(str(item["verdicts"].get(j, "-")) for j in judges),
                ]
            )
    page.table(["condition", "dataset", "request", "answer", *judges], rows)
    disputed = [
        f"{c['condition']} / {c['dataset']}: {c['disputed']} of {c['n']}"
        for c in samples
        if c["disputed"]
    ]
    if disputed:
        page.paragraph("Answers on which the judges disagree: " + "; ".join(disputed) + ".")


def read_summary(path: Path) -> dict[str, Any]:
    """A benchmark.json, checked for the fields the report reads."""
    fix = f"rerun `refusal-lens benchmark --out {path.parent}`"
    return schema.validate(
        schema.read_json(path, "benchmark summary", fix), SUMMARY_SCHEMA, str(path), fix
    )


def build_report(run: str | Path, *, agreement: str | Path | None = None) -> Page:
    folder = Path(run)
    summary_path = folder / "benchmark.json"
    if not summary_path.is_file():
        raise UserError(
            f"no benchmark.json in {folder}; run `refusal-lens benchmark --out {folder}` first"
        )
    summary = read_summary(summary_path)
    config = summary["config"]
    page = Page(f"refusal-lens report: {summary['model']['name']}")
    model = summary["model"]
    page.paragraph(
        f"Model {model['name']} (weights sha256 {model['weights_sha256'][:12]}), "
        f"direction layer {summary['direction']['layer']}, SAE set "
        f"{(summary.get('saes') or {}).get('path', '-')}. Greedy generation, "
        f"{summary['max_new_tokens']} new tokens, first {config['limit']} prompts of each set, "
        f"K* = {config['k']}; 95% bootstrap intervals; p-values are paired bootstrap tests "
        "against base on the same prompts."
    )
    page.heading("Harmful benchmarks: method by dataset (the paper's layout)")
    paper_table(page, summary)
    harmful_figures(page, summary)
    samples_section(page, summary)
    agreement_section(
        page, [Path(agreement)] if agreement else [folder / "judges" / "agreement.json"]
    )
    category_figure(page, summary)
    capability_section(page, summary)
    side_effect_section(page, summary)
    induction_section(page, summary)
    search_section(page, folder)
    cards_section(page, folder)
    analyses_sections(page, folder)
    page.heading("Run")
    manifest = folder / "manifest.json"
    details = {
        "stage_seconds": summary.get("stage_seconds"),
        "wall_seconds": summary.get("wall_seconds"),
        "store_counts": summary.get("store_counts"),
        "manifest": json.loads(manifest.read_text()) if manifest.exists() else None,
    }
    text = json.dumps(details, indent=2)
    page.raw_html(f"<pre>{html.escape(text)}</pre>", f"```json\n{text}\n```")
    return page


def write_report(run: str | Path, *, agreement: str | Path | None = None) -> tuple[Path, Path]:
    page = build_report(run, agreement=agreement)
    folder = Path(run) / "report"
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    for name, png in page.figures.items():
        (folder / "figures" / name).write_bytes(png)
    markdown = folder / "report.md"
    markdown.write_text("\n".join(page.md), encoding="utf-8")
    document = (
        "<!doctype html><html><head><meta charset='utf-8'><title>refusal-lens report</title>"
        f"<style>{STYLE}</style></head><body>" + "\n".join(page.html) + "</body></html>"
    )
    page_path = folder / "report.html"
    page_path.write_text(document, encoding="utf-8")
    return page_path, markdown
