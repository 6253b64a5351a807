"""Report sections of the analyses found in RUN/analyses/: each reads the JSON its command
wrote and nothing else (Yeo et al. 2025's analyses; the paper's figures beside ours)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..analyses.flags import constant_note, constant_rows
from ..evaluation.statistics import interval_cell
from . import plots
from .page import Page

# the paper's figures (Yeo et al. 2025, Gemma-2-2B-IT)
PAPER_PROBES = {"refusal latents": 0.87, "random latents": 0.50, "dense residual": 0.51}
PAPER_CLAMP_DROP = 0.45
PAPER_JAILBREAK = (
    "suffixes: -72% refusal activity on success, 'fictional' in 39 of 85; "
    "WildJailbreak: -73% (success) vs -18% (failure), harm latents -49% vs -30%"
)


def _with_p(entry: dict[str, Any] | None) -> str:
    return "-" if entry is None else f"{interval_cell(entry)} (p={entry['p_value']:.3f})"


def _rank_cell(entry: dict[str, Any]) -> str:
    if not entry.get("n"):
        return "-"
    return f"{entry['rank_mean']:.1f} [{entry['score_mean']:.3g}]"


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def categories_section(page: Page, run: Path) -> None:
    summary = _load(run / "analyses" / "categories" / "categories.json")
    if summary is None:
        return
    settings = summary["settings"]
    page.heading("Category-specific and common latents")
    layers = sorted({row[0] for row in summary["common"]})
    page.paragraph(
        f"A global latent set (ours, top {settings['k']}) per category of {settings['dataset']}, "
        f"selected on that category's train prompts. {len(summary['common'])} latents are in the "
        f"sets of at least {settings['common_fraction']:.0%} of the "
        f"{len(summary['categories'])} categories (common, layers {layers}); the paper finds 7 "
        "such latents in layers 11-17 of Gemma-2-2B-IT and 10 in layers 8-13 of "
        "Llama-3.1-8B-IT. Each kind is clamped (scale "
        f"{summary['scale']:g}) with the other pinned to its clean values; refusal rate on the "
        "category's test prompts and its ratio to base."
    )
    page.table(
        ["category", "condition", "refusal [95% CI]", "normalised"],
        [
            [
                r["category"],
                r["condition"],
                interval_cell(r["refusal"]),
                "-" if r["normalised"] is None else f"{r['normalised']:.2f}",
            ]
            for r in summary["rows"]
        ],
    )
    categories = list(summary["categories"])
    conditions = list(dict.fromkeys(r["condition"] for r in summary["rows"]))
    series = {
        condition: [
            next(
                (
                    plots.clean_entry(r["refusal"])
                    for r in summary["rows"]
                    if r["condition"] == condition and r["category"] == c
                ),
                None,
            )
            for c in categories
        ]
        for condition in conditions
    }
    png = plots.grouped_bars(categories, series, title="Refusal by category", ylabel="refusal")
    page.figure("analysis_categories.png", png, "Refusal per category and condition, 95% CI")
    comparison = summary.get("common_vs_specific") or []
    if comparison:
        page.paragraph(
            "Common vs specific, paired over the same test prompts: refusal under the common "
            "clamp minus refusal under the specific clamp (below zero: the common latents remove "
            "more refusal). The specific latents as selected are the leftovers of each "
            "category's ranking, so they rank below the common ones; the rank-matched ones are, "
            "for each common latent, the non-common latent nearest to it in that category's "
            "attribution ranking."
        )
        page.table(
            ["specific latents", "n", "common", "specific", "common minus specific (p)"],
            [
                [
                    r["matched"],
                    str(r["n"]),
                    interval_cell(r["common_refusal"]),
                    interval_cell(r["specific_refusal"]),
                    _with_p(r["common_minus_specific"]),
                ]
                for r in comparison
            ],
        )
    ranks = summary.get("rank_matching") or {}
    if ranks:
        page.paragraph(
            "Mean rank (1 = best) [mean attribution score] in each category's own ranking."
        )
        page.table(
            ["category", "common", "specific", "specific, rank-matched"],
            [
                [
                    c,
                    _rank_cell(r["common"]),
                    _rank_cell(r["specific"]),
                    _rank_cell(r["rank_matched"]),
                ]
                for c, r in ranks.items()
            ],
        )
    if summary["transfer"]:
        page.paragraph("Transfer: one category's specific latents on another category's prompts.")
        page.table(
            ["latents of", "prompts of", "refusal [95% CI]", "normalised"],
            [
                [
                    r["latents_of"],
                    r["prompts_of"],
                    interval_cell(r["refusal"]),
                    "-" if r["normalised"] is None else f"{r['normalised']:.2f}",
                ]
                for r in summary["transfer"]
            ],
        )


def circuits_section(page: Page, run: Path) -> None:
    summary = _load(run / "analyses" / "circuits" / "circuits.json")
    if summary is None:
        return
    v = summary["validation"]
    page.heading("Upstream harm latents -> downstream refusal latents")
    pearson = "-" if v["pearson"] is None else f"{v['pearson']:.3f}"
    page.paragraph(
        f"Edges by attribution patching over {summary['n_prompts']} held-out prompts (SAE "
        "errors are nodes too): the change of a downstream refusal latent's activity on the last "
        f"{summary['positions']} template tokens when an upstream latent is zeroed. Checked "
        f"against real patching on {v['n_prompts']} prompts ({v['n_edges']} edges): Pearson "
        f"{pearson}, Spearman {v['spearman']:.3f}. Clamp test: the upstream set clamped from "
        "its most salient content position on; the paper reports a "
        f"{PAPER_CLAMP_DROP:.0%} drop of the downstream refusal latents."
    )
    page.table(
        [
            "upstream set",
            "mean cosine with the direction",
            "drop of downstream activity [95% CI]",
            "harm minus this (p)",
        ],
        [
            [
                r["upstream"],
                "-" if r.get("cosine_mean") is None else f"{r['cosine_mean']:.3f}",
                interval_cell(r["drop"]),
                _with_p(r["difference_to_harm"]),
            ]
            for r in summary["clamp"]
        ],
    )
    control = summary.get("control")
    if control:
        page.paragraph(
            f"Random control: {control['matched_on']}. The harm latents come through the "
            "cosine prefilter, so a control outside it would differ from them in how much of "
            "the refusal direction it carries, and the clamp test could not tell a circuit "
            "from the direction being carried forward."
        )
    else:
        page.paragraph(
            "Random control matched on layer and activation frequency only (a run from before "
            "the cosine-matched control): it does not separate a circuit from the refusal "
            "direction carried forward."
        )
    if summary["edges"]:
        png = plots.edge_graph(summary["edges"], title="Strongest edges (red: upstream drives it)")
        page.figure("circuits.png", png, "Upstream -> downstream edges, width = effect size")


def jailbreaks_sections(page: Page, run: Path) -> None:
    for path in sorted((run / "analyses").glob("jailbreaks-*/jailbreaks.json")):
        summary = json.loads(path.read_text())
        settings = summary["settings"]
        page.heading(f"Jailbreaks at the latent level ({settings['source']})")
        page.paragraph(
            f"{summary['n_refused_goals']} of {summary['n_goals']} plain requests refused; "
            f"{summary['n_attacks']} attacks on them, success rate "
            f"{interval_cell(summary['success_rate'])} (judges: {', '.join(settings['judges'])}). "
            "Suppression = 1 - attacked / plain refusal-latent activity on the last "
            f"{summary['positions']} template tokens. Paper: {PAPER_JAILBREAK}."
        )
        page.table(
            ["latents", "suppression, successful", "suppression, failed", "difference (p)"],
            [
                [
                    r["latents"],
                    interval_cell(r["successful"]),
                    interval_cell(r["failed"]),
                    _with_p(r["difference"]),
                ]
                for r in summary["suppression"]
            ],
        )
        paired = summary.get("versus_random") or []
        if paired:
            page.paragraph(
                "Studied minus random latents on the same attacks (paired): mean over attacks "
                "of suppression(studied) - suppression(random), requests resampled; above zero: "
                "the attacks suppress the studied latents more than matched random ones."
            )
            page.table(
                ["latents", "control", "all attacks (p)", "successful (p)", "failed (p)"],
                [
                    [r["latents"], r["control"]]
                    + [_with_p(r[kind]) for kind in ("all", "successful", "failed")]
                    for r in paired
                ],
            )
        words = summary.get("words") or {}
        if words:
            top = ", ".join(f"{w} ({n})" for w, n in words["top_words"][:10])
            page.paragraph(
                f"Word of a successful suffix whose removal restores the most refusal activity, "
                f"over {words['n_successful']} successes: {top}."
            )


def probes_section(page: Page, run: Path) -> None:
    summary = _load(run / "analyses" / "probes" / "probes.json")
    if summary is None:
        return
    settings = summary["settings"]
    page.heading("Linear probes in and out of distribution")
    page.paragraph(
        f"Logistic regression on last-token features, fitted on {settings['n_train']} plain "
        "harmful and harmless train prompts per class; the regularisation (and the dense "
        "residual's layer) chosen on validation prompts only (by log-loss); tested on held-out "
        "plain prompts "
        "and on adversarial prompts. Target 'harmful': is the request harmful. Target "
        f"'refusal': does the model refuse (judge: {settings['judge']}, "
        f"{settings['screen_tokens']} new tokens); its 'paper' subset is Yeo et al.'s test "
        "(refused plain requests vs adversarial prompts that make the model comply), where the "
        "paper reports accuracy "
        + ", ".join(f"{k} {v:.2f}" for k, v in PAPER_PROBES.items())
        + " (Gemma-2-2B-IT; the dense figure came from a probe read on the wrong layer)."
    )
    page.paragraph(
        "Beside each accuracy: the majority-class rate of that test set (what a constant "
        "classifier scores) and the balanced accuracy (0.50 for a constant classifier). A probe "
        "whose predictions on a test set are all one class is marked CONSTANT: its accuracy is "
        "a class rate, not a signal."
    )
    flagged = constant_rows(summary["rows"])
    if flagged:
        page.paragraph(
            f"Warning: {len(flagged)} probe(s) predict one class on a whole test set: "
            + "; ".join(flagged)
            + "."
        )
    for target in dict.fromkeys(row["target"] for row in summary["rows"]):
        rows = [r for r in summary["rows"] if r["target"] == target]
        page.table(
            [
                "target",
                "features",
                "test",
                "subset",
                "n",
                "accuracy [95% CI]",
                "majority rate",
                "balanced accuracy [95% CI]",
                "AUROC",
                "chosen",
                "note",
            ],
            [
                [
                    target,
                    r["features"],
                    r["test"],
                    r["subset"],
                    str(r["n"]),
                    interval_cell(r["accuracy"]),
                    "-" if r.get("majority_rate") is None else f"{r['majority_rate']:.2f}",
                    interval_cell(r.get("balanced_accuracy")),
                    interval_cell(r["auroc"]),
                    f"{r['view']}, C={r['c']:g}",
                    constant_note(r),
                ]
                for r in rows
            ],
        )
        tests = list(dict.fromkeys(f"{r['test']} ({r['subset']})" for r in rows))
        series: dict[str, list[dict[str, Any] | None]] = {}
        for r in rows:
            series.setdefault(r["features"], [None] * len(tests))
            index = tests.index(f"{r['test']} ({r['subset']})")
            series[r["features"]][index] = plots.clean_entry(r["accuracy"])
        png = plots.grouped_bars(
            tests, series, title=f"Probe accuracy, target {target}", ylabel="accuracy"
        )
        page.figure(f"probes_{target}.png", png, f"Probe accuracy (target {target}), 95% CI")
    for target, why in summary.get("skipped", {}).items():
        page.paragraph(f"Target {target} skipped: {why}.")


def minimal_section(page: Page, run: Path) -> None:
    summary = _load(run / "analyses" / "minimal" / "minimal.json")
    if summary is None:
        return
    full, minimal = summary["full"], summary["minimal"]
    page.heading("Minimal latent set and interactions")
    page.paragraph(
        f"Greedy pruning of the {len(full['latents'])}-latent set (effect on the refusal score "
        f"{full['effect']:.3f}, on {summary['n_prompts']} refused validation prompts) to "
        f"{len(minimal['latents'])} latents that keep "
        f"{summary['settings']['keep']:.0%} of it (effect {minimal['effect']:.3f}): "
        + ", ".join(f"L{a}:{b}" for a, b in minimal["latents"])
        + ". "
        + " ".join(
            f"{name} ({len(c['latents'])} latents): effect {c['effect']:.3f}."
            for name, c in summary["controls"].items()
        )
    )
    if summary["test"]:
        page.table(
            ["set", "size", "dataset", "refusal [95% CI]"],
            [
                [r["set"], str(r["size"]), r["dataset"], interval_cell(r["refusal"])]
                for r in summary["test"]
            ],
        )
    ranked = sorted(summary["interactions"], key=lambda row: row["interaction"])[:8]
    if ranked:
        page.paragraph("Most redundant pairs: joint effect below the sum of each alone.")
        page.table(
            ["a", "b", "joint", "a alone", "b alone", "interaction"],
            [
                [
                    f"L{r['a'][0]}:{r['a'][1]}",
                    f"L{r['b'][0]}:{r['b'][1]}",
                    f"{r['joint']:.3f}",
                    f"{r['a_alone']:.3f}",
                    f"{r['b_alone']:.3f}",
                    f"{r['interaction']:+.3f}",
                ]
                for r in ranked
            ],
        )


def analyses_sections(page: Page, run: Path) -> None:
    """Every analysis the run folder holds, in the order of the method (the registry's)."""
    from ..analyses.registry import ANALYSES

    for entry in ANALYSES.values():
        entry.write_section(page, run)


def defend_section(page: Page, run: Path) -> None:
    summary = _load(run / "analyses" / "defend" / "defend.json")
    if summary is None:
        return
    settings = summary["settings"]
    page.heading("Defence: refusal strengthened where harm is present")
    strengths = summary["strengths"]
    page.paragraph(
        "Held-out pools: "
        + ", ".join(f"{k} {v}" for k, v in summary["pools"].items())
        + ". Strengths chosen on validation attacks (the weakest that blocks "
        f"{settings['target_block']:.0%} of those that succeed without a defence): refusal "
        f"latents {settings['latent_mode']} {strengths['latents']['strength']:g} (blocks "
        f"{strengths['latents']['blocked']:.2f} of {strengths['latents']['n_succeeding']}), "
        f"direction x{strengths['direction']['strength']:g} (blocks "
        f"{strengths['direction']['blocked']:.2f}). Gate thresholds keep "
        f"{settings['false_trigger']:.0%} of harmless and XSTest safe validation prompts firing; "
        + (
            "a fired gate edits its whole prompt and answer. "
            if settings.get("gate_scope", "token") == "prompt"
            else "a fired gate edits from the token it fires on. "
        )
        + f"Success: every judge ({', '.join(settings['judges'])}) says the answer does the "
        "request; a safe or benign prompt is unanswered when an answer judge ("
        + ", ".join(settings.get("answer_judges", []))
        + ") says refused or not complied, or the answer is degenerate (empty, looping, the "
        "request echoed). "
        "Differences are paired with no defence on the same prompts (p: bootstrap)."
    )
    rows = summary["defences"]
    page.table(
        [
            "defence",
            "strength",
            "attack success (vs none)",
            "two-turn (vs none)",
            "XSTest safe unanswered (vs none)",
            "benign unanswered (vs none)",
            "harmless KL",
        ],
        [
            [
                r["defence"],
                "-" if r["strength"] is None else f"{r['strength']:g}",
                interval_cell(r.get("attacks")) + _vs_none(r.get("attacks_vs_none")),
                interval_cell(r.get("two_turn")) + _vs_none(r.get("two_turn_vs_none")),
                interval_cell(r.get("xstest_safe")) + _vs_none(r.get("xstest_safe_vs_none")),
                interval_cell(r.get("jbb_benign")) + _vs_none(r.get("jbb_benign_vs_none")),
                interval_cell(r.get("harmless_kl"), 3),
            ]
            for r in rows
        ],
    )
    degenerate = [
        f"{r['defence']} {r.get('xstest_safe_degenerate', 0)} + {r.get('jbb_benign_degenerate', 0)}"
        for r in rows
    ]
    page.paragraph(
        "Degenerate answers among them (XSTest safe + benign): " + ", ".join(degenerate) + "."
    )
    points = {
        r["defence"]: (r["xstest_safe"], r["attacks"])
        for r in rows
        if r.get("xstest_safe") and r.get("attacks")
    }
    swept = summary.get("sweep") or {}
    curves = {
        label: [(p["xstest_safe"]["mean"], p["attacks"]["mean"]) for p in s["points"]]
        for label, s in swept.items()
    }
    if points:
        page.figure(
            "defend_pareto.png",
            plots.robustness_cost(points, summary["pareto"], curves),
            "Jailbreak success against over-refusal, one point per defence (95% intervals); "
            "ringed: the Pareto front"
            + (
                "; lines: each gated defence at every false-trigger target (composed)"
                if curves
                else ""
            ),
        )
    page.paragraph("Pareto front: " + ", ".join(summary["pareto"]) + ".")
    kept = {k: v for k, v in summary["kept_share"].items() if v}
    if kept:
        page.paragraph(
            "Share of the unconditional defence's drop in attack success its gated version "
            "keeps: " + "; ".join(f"{k} {interval_cell(v)}" for k, v in kept.items()) + "."
        )
    for label, entry in swept.items():
        same = entry.get("agreement")
        check = (
            "; at the study's threshold the composition matches the generated arm on "
            f"{same['attacks']['same']} of {same['attacks']['n']} attacks and "
            f"{same['xstest_safe']['same']} of {same['xstest_safe']['n']} XSTest safe prompts"
            if same
            else "; the study's own gated arms are composed the same way"
        )
        page.paragraph(
            f"{label} at every false-trigger target, composed from the answers already judged "
            "(a prompt-scope gate answers as the unconditional defence where it fires and as "
            f"the model without a defence elsewhere{check})."
        )
        page.table(
            [
                "false trigger (val)",
                "threshold",
                "attack success",
                "XSTest safe unanswered",
                "benign unanswered",
                "gate fires on attacks",
                "kept share",
            ],
            [
                [
                    f"{p['false_trigger']:.2f}",
                    f"{p['threshold']:.4g}",
                    interval_cell(p["attacks"]),
                    interval_cell(p["xstest_safe"]),
                    interval_cell(p.get("jbb_benign")),
                    "-" if p["fired_attacks"] is None else f"{p['fired_attacks']:.2f}",
                    "-" if p["kept_share"] is None else f"{p['kept_share']:.2f}",
                ]
                for p in entry["points"]
            ],
        )
    chosen = {k: v for k, v in (summary.get("operating_points") or {}).items() if v}
    if chosen:
        page.paragraph(
            "Operating points chosen on validation prompts: the lowest false-trigger target at "
            f"which a gate keeps {settings.get('target_kept', 0.8):.0%} of the unconditional "
            "defence's blocks of validation attacks; test numbers composed at that target."
        )
        page.table(
            [
                "defence",
                "false trigger",
                "kept (val)",
                "attack success",
                "XSTest unanswered",
                "benign unanswered",
                "kept share (test)",
            ],
            [
                [
                    label,
                    f"{c['false_trigger']:.2f}",
                    f"{c['kept_val']:.2f}",
                    interval_cell(c["test"]["attacks"]),
                    interval_cell(c["test"]["xstest_safe"]),
                    interval_cell(c["test"].get("jbb_benign")),
                    "-" if c["test"]["kept_share"] is None else f"{c['test']['kept_share']:.2f}",
                ]
                for label, c in chosen.items()
                if "test" in c
            ],
        )
    for label, matched in (summary.get("matched") or {}).items():
        page.paragraph(
            f"{label} against the CAST-style gate at equal attack success: for every number of "
            "test attacks both let through at some false-trigger target, each gate at the "
            "lowest target that does, and the XSTest safe prompts and benign behaviours each "
            "leaves unanswered, paired (latent minus CAST)."
        )
        page.table(
            [
                "attack success",
                "false trigger (latent, CAST)",
                "XSTest unanswered (latent, CAST)",
                "difference (p)",
                "benign unanswered (latent, CAST)",
                "difference (p)",
            ],
            [
                [
                    f"{m['successes'] / m['attacks']:.2f} ({m['successes']}/{m['attacks']})",
                    f"{m['targets'][0]:.2f}, {m['targets'][1]:.2f}",
                    f"{m['xstest_safe'][0]:.2f}, {m['xstest_safe'][1]:.2f}",
                    interval_cell(m["difference"]) + f" (p={m['difference']['p_value']:.3f})",
                    *_benign_cells(m.get("jbb_benign")),
                ]
                for m in matched
            ],
        )
    for label, costs in (summary.get("matched_cost") or {}).items():
        page.paragraph(
            f"{label} against the CAST-style gate at equal false triggers: at each target, each "
            "gate's own threshold at that rate on harmless validation prompts, and the test "
            "attacks each lets through, paired (latent minus CAST; p also Holm-adjusted over "
            "the targets), with the safe prompts each leaves unanswered at those thresholds."
        )
        page.table(
            [
                "false trigger (val)",
                "attack success (latent, CAST)",
                "difference",
                "p (Holm)",
                "XSTest unanswered (latent, CAST)",
                "difference (p)",
                "benign unanswered (latent, CAST)",
                "difference (p)",
            ],
            [
                [
                    f"{c['false_trigger']:.2f}",
                    f"{c['difference']['means'][0]:.3f}, {c['difference']['means'][1]:.3f}",
                    interval_cell(c["difference"], 3),
                    f"{c['difference']['p_value']:.3f} ({c['difference']['p_holm']:.3f})",
                    f"{c['xstest_safe']['means'][0]:.2f}, {c['xstest_safe']['means'][1]:.2f}",
                    interval_cell(c["xstest_safe"]) + f" (p={c['xstest_safe']['p_value']:.3f})",
                    *_benign_cells(c.get("jbb_benign")),
                ]
                for c in costs
            ],
        )
    by_source = sorted({s for r in rows for s in r.get("attacks_by_source", {})})
    capability_rows = [
        [r["defence"], c["task"], c["metric"], interval_cell(c), _capability_diff(c)]
        for r in rows
        for c in r.get("capabilities", [])
    ]
    if by_source:
        page.table(
            ["defence", *by_source],
            [
                [r["defence"], *(interval_cell(r["attacks_by_source"].get(s)) for s in by_source)]
                for r in rows
            ],
        )
    if capability_rows:
        page.paragraph("Capabilities through lm-eval with the defence active (vs none: paired).")
        page.table(["defence", "task", "metric", "score", "vs none (p)"], capability_rows)
    triggers = [r for r in rows if r.get("trigger")]
    if triggers:
        page.paragraph(
            "Gates: false triggers on harmless, XSTest safe and benign prompts, misses on plain "
            "requests and attacks (validation: where the threshold was set; test: held out)."
        )
        page.table(
            [
                "defence",
                "threshold",
                "false trigger (val)",
                "miss (val)",
                "false trigger (test)",
                "miss (test)",
            ],
            [
                [
                    r["defence"],
                    f"{r['trigger']['threshold']:.4g}",
                    interval_cell(r["trigger"]["validation"]["false_trigger"]),
                    interval_cell(r["trigger"]["validation"]["miss"]),
                    interval_cell(r["trigger"]["test"]["false_trigger"]),
                    interval_cell(r["trigger"]["test"]["miss"]),
                ]
                for r in triggers
            ],
        )
    examples = summary.get("examples") or {}
    sample_rows = []
    for defence, kinds in examples.items():
        for row in kinds.get("attacks", []):
            sample_rows.append(_sample_row(defence, "attack", row, row["success"]))
        for row in kinds.get("safe", []):
            sample_rows.append(_sample_row(defence, "XSTest safe", row, row["refused"]))
    if sample_rows:
        page.paragraph(
            "Where defences fail: attacks that get through (first) and safe prompts refused "
            "(first), with every judge's verdict and the gate's prompt score."
        )
        page.table(
            ["defence", "kind", "prompt", "answer", "counted", "verdicts", "gate score"],
            sample_rows,
        )


def _vs_none(entry: dict[str, Any] | None) -> str:
    return "" if not entry else f" ({entry['mean']:+.2f}, p={entry['p_value']:.3f})"


def _benign_cells(benign: dict[str, Any] | None) -> list[str]:
    """The matched comparison's benign columns: both means, and the paired difference."""
    if not benign:
        return ["-", "-"]
    a, b = benign["means"]
    return [f"{a:.2f}, {b:.2f}", interval_cell(benign) + f" (p={benign['p_value']:.3f})"]


def _capability_diff(entry: dict[str, Any]) -> str:
    if entry.get("difference_vs_base") is None:
        return "-"
    low, high = entry["difference_ci95"]
    return (
        f"{entry['difference_vs_base']:+.3f} [{low:+.3f}, {high:+.3f}] (p={entry['p_value']:.3f})"
    )


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sample_row(defence: str, kind: str, row: dict[str, Any], counted: bool) -> list[str]:
    from ..models import turns

    shown = turns(row["prompt"])
    prompt = (
        shown[0]
        if len(shown) == 1
        else " / ".join(f"[turn {i + 1}] {t}" for i, t in enumerate(shown))
    )
    verdicts = ", ".join(
        f"{judge}: "
        + (
            "degenerate"
            if v.get("degenerate")
            else "refused"
            if v["refused"]
            else "complied"
            if v["complied"]
            else "not complied"
            if v["complied"] is False
            else "answered"
        )
        for judge, v in row["verdicts"].items()
    )
    score = row.get("gate_score")
    what = (
        ("jailbroken" if counted else "blocked")
        if kind == "attack"
        else ("unanswered" if counted else "answered")
    )
    return [
        defence,
        kind,
        _short(prompt),
        _short(row["answer"]),
        what,
        verdicts,
        "-" if score is None else f"{score:.3g}",
    ]
