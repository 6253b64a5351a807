"""The report: built from a tiny benchmark run, every section it has data for, and rendered in
headless Chromium (the screenshot is not blank, every image loads)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import pytest

from refusal_lens.benchmark import benchmark_job
from refusal_lens.cli import main
from refusal_lens.models import ChatFormatter, LoadedModel
from refusal_lens.report import PAPER_TABLE, write_report
from test_benchmark import bench_inputs, tiny_config  # noqa: F401  (fixture)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.fixture()
def bench_run(
    tiny: LoadedModel,
    formatter: ChatFormatter,
    bench_inputs: tuple[str, str],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    out = tmp_path / "run"
    config = tiny_config(*bench_inputs, methods=("base", "direction", "cossim", "actdiff"))
    benchmark_job(tiny, formatter, config, out, data_dir=None, echo=lambda _m: None)
    agreement = {
        "rows": [
            {
                "judge": {"name": "substring", "version": "1"},
                "dataset": "xstest",
                "n": 10,
                "accuracy": 0.8,
                "accuracy_ci95": [0.6, 1.0],
                "kappa": 0.6,
                "kappa_ci95": [0.2, 1.0],
            }
        ]
    }
    (out / "judges").mkdir()
    (out / "judges" / "agreement.json").write_text(json.dumps(agreement))
    return out


def test_report_has_the_paper_table_figures_and_manifest(
    bench_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(bench_run)]) == 0
    assert "report.html" in capsys.readouterr().out
    markdown = (bench_run / "report" / "report.md").read_text()
    assert "| ActDiff [actdiff] |" in markdown  # our row, named like the paper's
    gemma_actdiff = " / ".join(f"{x:.2f}" for x in PAPER_TABLE["Gemma-2-2B-IT"]["actdiff"])
    assert gemma_actdiff in markdown  # the paper's numbers beside ours
    assert "## Side effects" in markdown and "## Judge agreement with human labels" in markdown
    figures = sorted(p.name for p in (bench_run / "report" / "figures").iterdir())
    assert "jailbreak_substring.png" in figures and "jailbreak_first-token.png" in figures
    page = (bench_run / "report" / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == len(figures)
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    assert "&quot;stage_seconds&quot;" in page  # the run's manifest and timings


def test_report_without_a_benchmark_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no benchmark.json" in capsys.readouterr().err


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("REFUSAL_LENS_REQUIRE_EXTRAS") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return found


def test_report_renders_in_headless_chromium(bench_run: Path, tmp_path: Path) -> None:
    browser = _chromium()
    page, _ = write_report(bench_run)
    # A copy of the page that reports, once loaded, whether every image decoded.
    probe = tmp_path / "probe.html"
    check = (
        "<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
        "const ok=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;"
        "const p=document.createElement('pre');p.id='image-check';"
        "p.textContent=`images ${ok}/${imgs.length}`;document.body.appendChild(p);});</script>"
    )
    probe.write_text(page.read_text().replace("</body>", check + "</body>"))
    profile = tmp_path / "profile"
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(
        [*common, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = re.search(r"images (\d+)/(\d+)", dom)
    assert found, "the page did not finish loading"
    loaded, total = int(found.group(1)), int(found.group(2))
    assert total >= 3 and loaded == total
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = matplotlib.image.imread(shot)
    assert pixels.std() > 0.05  # not a blank page
    assert (pixels[..., :3].mean(axis=-1) < 0.5).mean() > 0.001  # some dark text or bars


def test_report_shows_the_probes_analysis_of_the_run(bench_run: Path) -> None:
    from refusal_lens.analyses.probes import run_probes
    from test_probes import _dense_family, _examples, _planted, _settings

    plain = {name: _examples(name, n) for name, n in (("fit", 60), ("val", 20), ("test", 20))}
    ood = {"attack": _examples("attack", 20, "adversarial")}
    resid = {n: _planted(e.harmful, (2,), s) for s, (n, e) in enumerate({**plain, **ood}.items())}
    rows = run_probes([_dense_family()], resid, plain, ood, _settings(), progress=False)
    folder = bench_run / "analyses" / "probes"
    folder.mkdir(parents=True)
    settings = {"n_train": 40, "judge": "substring", "screen_tokens": 64}
    (folder / "probes.json").write_text(json.dumps({"settings": settings, "rows": rows}))
    write_report(bench_run)
    markdown = (bench_run / "report" / "report.md").read_text()
    assert "## Linear probes in and out of distribution" in markdown
    assert "| harmful | dense residual | OOD attack | all | 20 |" in markdown
    assert (bench_run / "report" / "figures" / "probes_harmful.png").is_file()
