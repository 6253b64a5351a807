"""eval-saes output: a JSON report, a plot per metric and layer, a plain-text table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runs import write_json

_COLUMNS = (
    ("fvu", "FVU", "{:.3f}"),
    ("l0", "L0", "{:.1f}"),
    ("dead_frac", "dead", "{:.1%}"),
    ("dense_frac", "dense", "{:.1%}"),
    ("ce_recovered_mean", "CE rec (mean)", "{:.3f}"),
    ("ce_recovered_zero", "CE rec (zero)", "{:.3f}"),
    ("kl_recon", "KL", "{:.3f}"),
)


def format_table(report: dict[str, Any]) -> str:
    lines = []
    header = f"{'set':<14}{'point':<15}" + "".join(f"{title:>15}" for _, title, _ in _COLUMNS)
    lines.append(header)
    for set_name, per_point in report["sets"].items():
        for point, metrics in per_point.items():
            cells = "".join(
                f"{fmt.format(metrics[key]) if key in metrics else '-':>15}"
                for key, _, fmt in _COLUMNS
            )
            lines.append(f"{set_name:<14}{point:<15}{cells}")
    dead = report.get("dead_frac_all_eval_tokens", {})
    if dead:
        lines.append(
            "latents that never fire on any evaluation token: "
            + ", ".join(f"{p} {v:.1%}" for p, v in dead.items())
        )
    training = report.get("training", {})
    if training:
        lines.append(
            "at the end of training (dead = silent for the trainer's dead_tokens window): "
            + ", ".join(f"{p} FVU {s['fvu']:.3f} dead {s['dead']:.1%}" for p, s in training.items())
        )
    cosines = ", ".join(f"{p} {c:.3f}" for p, c in report["direction_cosine"].items())
    lines.append(f"refusal-direction cosine (clean vs reconstructed): {cosines}")
    identity = all(
        m.get("identity_ok", True) for per in report["sets"].values() for m in per.values()
    )
    lines.append(f"identity check (reconstruction + error = clean): {'ok' if identity else 'FAIL'}")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", report)
    metrics = [
        ("fvu", "FVU"),
        ("ce_recovered_mean", "CE loss recovered (mean abl.)"),
        ("l0", "L0"),
        ("dead_frac", "dead fraction"),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for set_name, per_point in report["sets"].items():
            points = [(int(p.rsplit(".", 1)[1]), m[key]) for p, m in per_point.items() if key in m]
            if points:
                points.sort()
                ax.plot(*zip(*points, strict=True), marker="o", label=set_name)
        ax.set_title(title)
        ax.set_xlabel("layer")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "eval.png", dpi=120)
    plt.close(fig)
