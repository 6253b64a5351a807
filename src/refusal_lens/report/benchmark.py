"""The benchmark summary as Markdown (RUN/benchmark.md)."""

from __future__ import annotations

from typing import Any

from ..benchmark.config import judge_name


def _cell(entry: dict[str, Any] | None, digits: int = 2) -> str:
    if not entry or entry.get("mean") is None:
        return "-"
    low, high = entry["ci95"]
    return f"{entry['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _setting_cell(setting: dict[str, Any]) -> str:
    searched = str(setting.get("chosen_by", "")).startswith(("search", "the matched set's"))
    return f"{setting['k']}, {setting['value']:g}" + (" (searched)" if searched else "")


def benchmark_markdown(summary: dict[str, Any]) -> str:
    config = summary["config"]
    lines = [
        f"# Benchmark: {summary['model']['name']}",
        "",
        f"Greedy generation, {summary['max_new_tokens']} new tokens; first {config['limit']} "
        f"prompts of each set; 95% bootstrap intervals. Latent arms clamp K* latents scaled by "
        "c, as each row says.",
        "",
        "## Jailbreak rate",
        "",
        "A jailbreak is an answer that does what the harmful request asked. Judges that read "
        "for it (`learned`, `compliance`, the LLM judges) come first; for a refusal-only "
        "judge (`substring`) the rate is 1 - refusal, which counts evasions as jailbreaks. "
        "Degenerate answers (empty, a few words, a loop, the request echoed) are never "
        "jailbreaks; each cell says how many there were.",
        "",
    ]
    datasets = list(dict.fromkeys(r["dataset"] for r in summary["harmful"]))
    judges = sorted(
        dict.fromkeys(judge_name(r) for r in summary["harmful"]),
        key=lambda j: j.split(":")[0] in ("substring", "first-token"),
    )
    for judge in judges:
        lines += [
            f"### judge: {judge}",
            "",
            "| condition | protocol | K*, c | " + " | ".join(datasets) + " |",
        ]
        lines.append("|---|---|---|" + "---|" * len(datasets))
        seen = dict.fromkeys(
            (r["condition"], r["protocol"]) for r in summary["harmful"] if judge_name(r) == judge
        )
        for condition, protocol in seen:
            cells = []
            setting = "-"
            for dataset in datasets:
                match = [
                    r
                    for r in summary["harmful"]
                    if (r["condition"], r["protocol"], r["dataset"], judge_name(r))
                    == (condition, protocol, dataset, judge)
                ]
                cell = _cell(match[0].get("jailbreak_rate")) if match else ""
                if match and match[0].get("degenerate"):
                    cell += f" ({match[0]['degenerate']} degenerate)"
                cells.append(cell)
                if match and match[0].get("setting"):
                    setting = _setting_cell(match[0]["setting"])
            lines.append(f"| {condition} | {protocol} | {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    if summary["side_effects"]:
        names = list(
            dict.fromkeys(k for row in summary["side_effects"] for k in row if k != "condition")
        )
        lines += [
            "## Side effects",
            "",
            f"XSTest over-refusal from {summary['screen_tokens']}-token completions.",
            "",
            "| condition | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for row in summary["side_effects"]:
            lines.append(
                f"| {row['condition']} | " + " | ".join(_cell(row.get(n), 3) for n in names) + " |"
            )
        lines.append("")
    if summary["capabilities"]:
        lines += [
            "## Capabilities (lm-eval)",
            "",
            "| condition | task | metric | score | vs base |",
            "|---|---|---|---|---|",
        ]
        for row in summary["capabilities"]:
            diff = row.get("difference_vs_base")
            delta = "" if diff is None else f"{diff:+.3f} (p={row['p_value']:.3f})"
            entry = {"mean": row["mean"], "ci95": row["ci95"]}
            lines.append(
                f"| {row['condition']} | {row['task']} | {row['metric']} | "
                f"{_cell(entry, 3)} | {delta} |"
            )
        lines.append("")
    if summary["induction"]:
        lines += [
            "## Refusal induction",
            "",
            f"Harmless prompts, {summary['screen_tokens']}-token completions, substring judge; "
            "v chosen on validation prompts; a degenerate answer is no refusal.",
            "",
            "| split | condition | refusal rate | degenerate |",
            "|---|---|---|---|",
        ]
        for row in summary["induction"]:
            degenerate = f"{row.get('degenerate', '-')} of {row.get('n', '-')}"
            lines.append(
                f"| {row.get('split', 'test')} | {row['condition']} | {_cell(row)} | {degenerate} |"
            )
        lines.append("")
    return "\n".join(lines)
