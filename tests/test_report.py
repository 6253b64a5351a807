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


def test_report_shows_every_analysis_of_the_run(
    tiny: LoadedModel, bench_run: Path, shared_data: Path, tmp_path: Path
) -> None:
    """Each analysis of the registry, run through its entry on the tiny model, becomes a
    report section."""
    from dataclasses import replace

    import torch

    from conftest import random_sae_set
    from refusal_lens.analyses.categories import CategorySettings
    from refusal_lens.analyses.circuits import CircuitSettings
    from refusal_lens.analyses.inputs import AnalysisInputs
    from refusal_lens.analyses.jailbreaks import JailbreakSettings
    from refusal_lens.analyses.minimal import MinimalSettings
    from refusal_lens.analyses.probes import ProbeSettings
    from refusal_lens.analyses.registry import ANALYSES
    from refusal_lens.direction import Direction
    from refusal_lens.judges import register_judge
    from refusal_lens.latents import LatentSet
    from test_categories import _categorised
    from test_probes import _ParityJudge

    register_judge("test-parity", lambda context: _ParityJudge(), "refuses prompts of even CRC")
    saes = random_sae_set(tiny, arch="standard", seed=1)
    saes.save(tmp_path / "saes")
    torch.manual_seed(0)
    Direction(torch.randn(tiny.d_model) * 4, 1, -1, {"name": tiny.name}).save(tmp_path)
    direction = Direction.load(tmp_path)
    ours = LatentSet(
        {"name": tiny.name, "weights_sha256": tiny.weights_sha256},
        {"path": str(tmp_path / "saes"), "fingerprint": saes.fingerprint()},
        "ours",
        "heldout",
        {},
        [(2, 3, 1.0), (2, 7, 0.5), (1, 11, 0.2)],
        {"mode": "scale", "value": -3.0, "k": 3},
        info={"refusal_token": {"string": "I"}},
    )
    formatter = ChatFormatter(tiny.tokenizer)
    out = bench_run / "analyses"
    inputs = AnalysisInputs(  # what `analyze` builds once; every analysis runs through its entry
        lm=tiny,
        formatter=formatter,
        saes=saes,
        saes_path=str(tmp_path / "saes"),
        direction=direction,
        direction_path=str(tmp_path),
        latents=ours,
        ours=ours,
        data_dir=str(shared_data),
        echo=lambda _: None,
    )
    ANALYSES["categories"].load().run(
        inputs,
        CategorySettings(
            dataset=str(_categorised(tmp_path / "cats.jsonl")),
            min_prompts=5,
            n_train=4,
            n_test=3,
            k=5,
            common_fraction=0.6,
            refused_only=False,
            judge="test-parity",
            max_new_tokens=3,
            batch_size=4,
        ),
        out / "categories",
    )
    harm = LatentSet.load(out / "categories" / "harm")
    upstream = LatentSet(  # the random harm set may sit at the top layer: nothing lies below
        ours.model, ours.saes, "harm", "heldout", {}, [(0, 4, 1.0), (1, 116, 0.5)], {}
    )
    ANALYSES["circuits"].load().run(
        replace(inputs, harm=upstream, data_dir=None),
        CircuitSettings(dataset="builtin_harmful_test", n_prompts=3, n_validate=2),
        out / "circuits",
    )
    ANALYSES["jailbreaks"].load().run(
        replace(inputs, harm=harm),
        JailbreakSettings(n_goals=6, attacks_per_goal=2, judges=("test-parity",), max_new_tokens=3),
        out / "jailbreaks-suffixes",
    )
    ANALYSES["probes"].load().run(
        inputs,
        ProbeSettings(
            n_train=12,
            n_test=6,
            n_adversarial=4,
            sources=("suffixes",),
            c_grid=(1.0,),
            judge="test-parity",
            screen_tokens=3,
            random_seeds=(0,),
        ),
        out / "probes",
    )
    ANALYSES["minimal"].load().run(
        inputs,
        MinimalSettings(
            dataset="builtin_harmful_val",
            min_score=-1e9,
            n_prompts=3,
            interactions=2,
            test_dataset="builtin_harmful_test",
            n_test=3,
            judge="test-parity",
            max_new_tokens=3,
        ),
        out / "minimal",
    )
    write_report(bench_run)
    markdown = (bench_run / "report" / "report.md").read_text()
    for heading in (
        "## Category-specific and common latents",
        "## Upstream harm latents -> downstream refusal latents",
        "## Jailbreaks at the latent level (suffixes)",
        "## Linear probes in and out of distribution",
        "## Minimal latent set and interactions",
    ):
        assert heading in markdown
    figures = {p.name for p in (bench_run / "report" / "figures").iterdir()}
    assert {"analysis_categories.png", "circuits.png", "probes_harmful.png"} <= figures
    page = (bench_run / "report" / "report.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,", page)) == len(figures)
