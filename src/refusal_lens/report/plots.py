"""The report's figures (matplotlib, PNG bytes): one function per figure, each reading the
plain data of `benchmark.json` (or a search grid) and nothing else."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _errors(entries: Sequence[dict[str, Any]]) -> list[list[float]]:
    low = [max(0.0, e["mean"] - e["ci95"][0]) for e in entries]
    high = [max(0.0, e["ci95"][1] - e["mean"]) for e in entries]
    return [low, high]


def grouped_bars(
    groups: Sequence[str],
    series: dict[str, list[dict[str, Any] | None]],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> bytes:
    """Bars per group (x) and series (colour), with 95% interval whiskers."""
    figure, axes = plt.subplots(
        figsize=(max(6.0, 1.2 * len(groups) * max(1, len(series)) / 3), 3.6)
    )
    width = 0.8 / max(1, len(series))
    for s, (name, entries) in enumerate(series.items()):
        xs = [g + (s - (len(series) - 1) / 2) * width for g in range(len(groups))]
        present = [
            (x, e)
            for x, e in zip(xs, entries, strict=True)
            if e is not None and e.get("mean") is not None
        ]
        if not present:
            continue
        axes.bar(
            [x for x, _ in present],
            [e["mean"] for _, e in present],
            width,
            yerr=_errors([e for _, e in present]),
            capsize=2,
            label=name,
            color=COLORS[s % len(COLORS)],
        )
    axes.set_xticks(range(len(groups)), groups, rotation=15, ha="right")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if ylim:
        axes.set_ylim(*ylim)
    axes.legend(
        fontsize=7,
        ncols=min(4, max(1, len(series))),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.28),
        frameon=False,
    )
    return _png(figure)


def line_with_band(
    xs: Sequence[float],
    entries: Sequence[dict[str, Any]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    references: dict[str, dict[str, Any]] | None = None,
    logx: bool = False,
) -> bytes:
    figure, axes = plt.subplots(figsize=(5.5, 3.4))
    axes.plot(xs, [e["mean"] for e in entries], marker="o", color=COLORS[0], label="latents")
    axes.fill_between(
        xs, [e["ci95"][0] for e in entries], [e["ci95"][1] for e in entries], alpha=0.2
    )
    for i, (name, entry) in enumerate((references or {}).items(), start=1):
        axes.axhline(entry["mean"], linestyle="--", color=COLORS[i % len(COLORS)], label=name)
    if logx:
        axes.set_xscale("log", base=2)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=7)
    return _png(figure)


def search_grid(search: dict[str, Any]) -> bytes:
    """Refusal rate and harmless KL over c, one line per K*, from a latent set's search."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    ks = sorted({row["k"] for row in search["grid"]})
    for i, k in enumerate(ks):
        rows = sorted((r for r in search["grid"] if r["k"] == k), key=lambda r: r["value"])
        cs = [r["value"] for r in rows]
        left.plot(
            cs,
            [r["refusal_rate"]["mean"] for r in rows],
            marker="o",
            color=COLORS[i],
            label=f"K*={k}",
        )
        right.plot(
            cs, [r["kl"]["mean"] for r in rows], marker="o", color=COLORS[i], label=f"K*={k}"
        )
    chosen = search.get("chosen")
    if chosen:
        left.scatter(
            [chosen["value"]],
            [chosen["refusal_rate"]["mean"]],
            s=120,
            facecolors="none",
            edgecolors="k",
        )
        right.scatter(
            [chosen["value"]], [chosen["kl"]["mean"]], s=120, facecolors="none", edgecolors="k"
        )
    right.axhline(search["settings"]["kl_limit"], linestyle=":", color="grey", label="KL limit")
    left.set(xlabel="scale c", ylabel="refusal rate (validation)", title="refusal vs c and K*")
    right.set(xlabel="scale c", ylabel="harmless KL", title="side effect vs c and K*")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    return _png(figure)


def edge_graph(edges: Sequence[dict[str, Any]], *, title: str) -> bytes:
    """Upstream nodes (left, by layer) to downstream latents (right): line width is the size of
    the effect, red where zeroing the upstream node lowers the downstream latent."""
    ups = sorted({(e["upstream"]["layer"], str(e["upstream"]["latent"])) for e in edges})
    downs = sorted({(e["downstream"]["layer"], str(e["downstream"]["latent"])) for e in edges})
    figure, axes = plt.subplots(figsize=(7.0, max(3.0, 0.32 * max(len(ups), len(downs)))))

    def place(nodes: list[tuple[int, str]]) -> dict[tuple[int, str], float]:
        return {node: (i + 0.5) / len(nodes) for i, node in enumerate(nodes)}

    y_up, y_down = place(ups), place(downs)
    largest = max((abs(e["effect"]) for e in edges), default=1.0) or 1.0
    for e in edges:
        u = (e["upstream"]["layer"], str(e["upstream"]["latent"]))
        d = (e["downstream"]["layer"], str(e["downstream"]["latent"]))
        axes.plot(
            [0, 1],
            [y_up[u], y_down[d]],
            color=COLORS[3] if e["effect"] < 0 else COLORS[0],
            linewidth=0.5 + 4.0 * abs(e["effect"]) / largest,
            alpha=0.7,
        )
    for nodes, x, align in ((y_up, 0, "right"), (y_down, 1, "left")):
        for (layer, latent), y in nodes.items():
            axes.scatter([x], [y], color="k", s=12, zorder=3)
            offset = -0.03 if align == "right" else 0.03
            axes.text(x + offset, y, f"L{layer}:{latent}", ha=align, va="center", fontsize=7)
    axes.set_xlim(-0.45, 1.45)
    axes.set_ylim(0, 1)
    axes.axis("off")
    axes.set_title(title, fontsize=10)
    return _png(figure)


def robustness_cost(
    points: dict[str, tuple[dict[str, Any], dict[str, Any]]],
    front: Sequence[str],
    curves: dict[str, Sequence[tuple[float, float]]] | None = None,
) -> bytes:
    """Each defence a point: cost (x, e.g. over-refusal) against attack success (y), both with
    95% intervals; the Pareto front (no other point lower on both) joined and ringed; `curves`:
    a gated defence across thresholds, a thin line of (x, y) per label."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    color = {label: COLORS[i % len(COLORS)] for i, label in enumerate(points)}
    for i, (label, line) in enumerate((curves or {}).items()):
        if line:
            axes.plot(
                *zip(*line, strict=True),
                marker=".",
                linestyle=":",
                linewidth=1.0,
                alpha=0.8,
                color=color.get(label, COLORS[(i + len(points)) % len(COLORS)]),
                label=f"{label}, every threshold",
            )
    for label, (x, y) in points.items():
        cx, cy = clean_entry(x), clean_entry(y)
        axes.errorbar(
            [cx["mean"]],
            [cy["mean"]],
            xerr=_errors([cx]),
            yerr=_errors([cy]),
            fmt="o",
            capsize=2,
            color=color[label],
            label=label,
        )
    ordered = sorted((points[label][0]["mean"], points[label][1]["mean"]) for label in front)
    if ordered:
        axes.plot(*zip(*ordered, strict=True), linestyle="--", color="grey", linewidth=1)
        axes.scatter(
            *zip(*ordered, strict=True),
            s=160,
            facecolors="none",
            edgecolors="k",
            label="Pareto front",
        )
    axes.set_xlabel("XSTest safe prompts unanswered (test)")
    axes.set_ylabel("jailbreak success (test attacks)")
    axes.set_title("robustness against cost")
    highest = max((clean_entry(y)["ci95"][1] for _, y in points.values()), default=1.0)
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, min(1.02, max(0.3, highest + 0.05)))
    axes.legend(fontsize=6.5, loc="upper left")
    return _png(figure)


def clean_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry whose interval may be missing, with a zero-width one instead."""
    low, high = entry.get("ci95") or (None, None)
    mean = entry["mean"]
    return {"mean": mean, "ci95": [mean if low is None else low, mean if high is None else high]}
