"""The `defend` study's summary as markdown: the defences' table, each sweep, the operating
points and the matched comparison against the CAST-style gate."""

from __future__ import annotations

from typing import Any

from ..evaluation.statistics import interval_cell


def _strength(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _vs(entry: dict[str, Any] | None) -> str:
    return "" if not entry else f" ({entry['mean']:+.2f}, p={entry['p_value']:.3f})"


def defend_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Defence: refusal strengthened where harm is present",
        "",
        "Pools: " + ", ".join(f"{k} {v}" for k, v in summary["pools"].items()) + ".",
        "",
        (
            "Gated defences' single-turn answers are composed: where the gate fires, the "
            "unconditional defence's answer; elsewhere, the undefended model's (two-turn "
            "attacks and capabilities are generated)."
            if summary.get("settings", {}).get("gated_answers") == "composed"
            else "Every defence's answers are generated."
        ),
        "",
        "Two-turn attacks: a harmless first turn answered by "
        + (
            "the model without a defence (the same answer for every defence)"
            if summary.get("settings", {}).get("first_turn") == "undefended"
            else "each defence itself"
        )
        + ", then a test attack.",
        "",
        "| defence | strength | attack success | two-turn | XSTest safe unanswered | benign "
        "unanswered | harmless KL |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["defences"]:
        lines.append(
            f"| {row['defence']} | {_strength(row['strength'])} | "
            f"{interval_cell(row.get('attacks'))}{_vs(row.get('attacks_vs_none'))} | "
            f"{interval_cell(row.get('two_turn'))} | "
            f"{interval_cell(row.get('xstest_safe'))}{_vs(row.get('xstest_safe_vs_none'))} | "
            f"{interval_cell(row.get('jbb_benign'))} | {interval_cell(row.get('harmless_kl'))} |"
        )
    lines += [
        "",
        "Pareto front (attack success vs XSTest over-refusal): "
        + ", ".join(summary["pareto"])
        + ".",
        "",
    ]
    for label, swept in (summary.get("sweep") or {}).items():
        same = swept.get("agreement")
        benign = (same or {}).get("jbb_benign")
        lines += [
            f"{label} at each false-trigger target (composed; "
            + (
                "at the study's threshold the composition matches the generated arm on "
                f"{same['attacks']['same']}/{same['attacks']['n']} attacks, "
                f"{same['xstest_safe']['same']}/{same['xstest_safe']['n']} safe prompts"
                + (f" and {benign['same']}/{benign['n']} benign ones" if benign else "")
                if same
                else "its single-turn answers at the study's threshold are composed too"
            )
            + "):",
            "",
            "| false trigger (val) | threshold | attack success | XSTest safe unanswered | "
            "benign unanswered | kept share |",
            "|---|---|---|---|---|---|",
        ]
        for point in swept["points"]:
            kept = point["kept_share"]
            lines.append(
                f"| {point['false_trigger']:.2f} | {point['threshold']:.4g} | "
                f"{interval_cell(point['attacks'])} | {interval_cell(point['xstest_safe'])} | "
                f"{interval_cell(point.get('jbb_benign'))} | "
                f"{'-' if kept is None else f'{kept:.2f}'} |"
            )
        lines.append("")
    for label, choice in (summary.get("operating_points") or {}).items():
        if choice is None or "test" not in choice:
            lines.append(f"{label}: no false-trigger target up to 0.50 keeps the target share.")
            continue
        test = choice["test"]
        lines.append(
            f"{label}, operating point chosen on validation: false trigger "
            f"{choice['false_trigger']:.2f} (keeps {choice['kept_val']:.2f} of the validation "
            f"blocks); test (composed): attack success {interval_cell(test['attacks'])}, XSTest "
            f"safe unanswered {interval_cell(test['xstest_safe'])}, benign unanswered "
            f"{interval_cell(test.get('jbb_benign'))}, kept share "
            f"{'-' if test['kept_share'] is None else format(test['kept_share'], '.2f')}."
        )
    lines.append("")
    for label, rows in (summary.get("matched") or {}).items():
        lines += [
            f"{label} against the CAST-style gate at equal attack success (each at the lowest "
            "false-trigger target reaching it; safe prompts unanswered, paired):",
            "",
            "| attack success | false trigger (latent, CAST) | XSTest safe unanswered "
            "(latent, CAST) | difference | benign unanswered (latent, CAST) | difference |",
            "|---|---|---|---|---|---|",
        ]
        lines += [matched_cells(row) for row in rows]
        lines.append("")
    for label, rows in (summary.get("matched_cost") or {}).items():
        lines += [
            f"{label} against the CAST-style gate at equal false triggers (each gate's own "
            "threshold at the same rate on harmless validation prompts; test attacks let "
            "through, paired, p also Holm-adjusted over the targets):",
            "",
            "| false trigger (val) | attack success (latent, CAST) | difference | p (Holm) | "
            "XSTest safe unanswered (latent, CAST) | difference | benign unanswered (latent, "
            "CAST) |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [cost_cells(row) for row in rows]
        lines.append("")
    return "\n".join(lines)


def cost_cells(row: dict[str, Any]) -> str:
    """One markdown row of the comparison at equal false triggers."""
    diff, safe, benign = row["difference"], row["xstest_safe"], row.get("jbb_benign")
    (sa, sb), (ua, ub) = diff["means"], safe["means"]
    return (
        f"| {row['false_trigger']:.2f} | {sa:.3f}, {sb:.3f} | {interval_cell(diff, 3)} | "
        f"{diff['p_value']:.3f} ({diff['p_holm']:.3f}) | {ua:.2f}, {ub:.2f} | "
        f"{interval_cell(safe)} (p={safe['p_value']:.3f}) | "
        + ("-" if not benign else f"{benign['means'][0]:.2f}, {benign['means'][1]:.2f}")
        + " |"
    )


def matched_cells(row: dict[str, Any]) -> str:
    """One markdown row of the matched comparison."""
    (ta, tb), (ua, ub), diff = row["targets"], row["xstest_safe"], row["difference"]
    benign = row.get("jbb_benign")
    tail = " - | - |"
    if benign:
        (ba, bb) = benign["means"]
        tail = f" {ba:.2f}, {bb:.2f} | {interval_cell(benign)} (p={benign['p_value']:.3f}) |"
    return (
        f"| {row['successes'] / row['attacks']:.2f} ({row['successes']}/{row['attacks']}) | "
        f"{ta:.2f}, {tb:.2f} | {ua:.2f}, {ub:.2f} | {interval_cell(diff)}"
        f" (p={diff['p_value']:.3f}) |" + tail
    )
