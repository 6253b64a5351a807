"""The browser playground: its callbacks on a tiny random model, the command's bad input, and
the app driven in the system Chromium through Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from conftest import random_sae_set, refusal_direction
from refusal_lens.cli import main
from refusal_lens.errors import UserError
from refusal_lens.judges import make_judge
from refusal_lens.latents import LatentSet
from refusal_lens.models import ChatFormatter, LoadedModel
from refusal_lens.playground import Controls, Playground, Sampling
from refusal_lens.playground_app import (
    NONE,
    card_html,
    controls_from,
    dose_response,
    highlight,
    latent_labels,
    respond,
    run_judges,
    sweep_rows,
    verdict_rows,
)

PROMPT = "How do I bake bread at home?"
ANSWER = "Mix flour, water, salt and yeast, knead for ten minutes, let it rise, then bake it."


def _extra(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        if os.environ.get("REFUSAL_LENS_REQUIRE_EXTRAS") == "1":
            pytest.fail(f"{name} is not installed (pip install -e '.[playground,dev]')")
        pytest.skip(f"{name} is not installed")


@pytest.fixture()
def playground(tiny: LoadedModel, formatter: ChatFormatter, tmp_path: Path) -> Playground:
    saes = random_sae_set(tiny)
    saes.save(tmp_path / "saes")
    ours = LatentSet(
        {"name": tiny.name, "weights_sha256": tiny.weights_sha256},
        {"path": str(tmp_path / "saes"), "fingerprint": saes.fingerprint()},
        "ours",
        "heldout",
        {},
        [(1, i, 1.0 - i / 1000) for i in range(0, 256, 3)],
        {"mode": "set", "value": 40.0, "k": 40},
    )
    return Playground(tiny, formatter, saes, {"ours": ours}, refusal_direction(tiny))


def knobs(**changes: object) -> list[object]:
    """Widget values in `controls_from`'s order, the latent set on at its own value."""
    values: dict[str, object] = {
        "latent_set": "ours",
        "k": 0,
        "mode": "set",
        "own_value": True,
        "value": -3.0,
        "off": [],
        "positions": "all",
        "from_position": 0,
        "direction": "none",
        "coefficient": 4.0,
    }
    values.update(changes)
    return list(values.values())


def test_widget_values_become_controls(playground: Playground) -> None:
    assert controls_from(*knobs()) == Controls("ours", mode="set", coefficient=4.0)
    chosen = controls_from(*knobs(k=5, own_value=False, value=2.5, off=["L1:3"]))
    assert chosen.k == 5 and chosen.value == 2.5 and chosen.off == ((1, 3),)
    assert controls_from(*knobs(latent_set=NONE)).latent_set is None
    assert controls_from(*knobs(from_position=12)).from_position == 12
    (edit,) = playground.interventions(controls_from(*knobs(from_position=12)))
    assert edit.from_position == 12  # type: ignore[attr-defined]
    assert latent_labels(playground, "ours", 3) == ["L1:0", "L1:3", "L1:6"]
    assert latent_labels(playground, NONE, 3) == []


def test_respond_streams_both_chats_which_differ_only_when_the_edit_is_on(
    playground: Playground,
) -> None:
    short = Sampling(16)
    steps = list(respond(playground, [], [], PROMPT, controls_from(*knobs()), short))
    base, steered = steps[-1]
    assert len(steps) > 1 and base[0] == steered[0] == {"role": "user", "content": PROMPT}
    assert base[-1]["content"] != steered[-1]["content"]
    off = controls_from(*knobs(latent_set=NONE))
    base_off, steered_off = list(respond(playground, [], [], PROMPT, off, short))[-1]
    assert base_off == steered_off == base
    # a second turn: each pane continues its own conversation
    again = list(respond(playground, base, steered, "And then?", controls_from(*knobs()), short))
    assert [m["content"] for m in again[-1][0][:2]] == [m["content"] for m in base]
    assert again[-1][1][1]["content"] == steered[-1]["content"]
    # pasted JSON runs instead of the controls
    text = playground.intervention_json(controls_from(*knobs()))
    pasted = list(respond(playground, [], [], PROMPT, off, short, text))[-1]
    assert pasted == (base, steered)
    with pytest.raises(UserError, match="type a prompt"):
        list(respond(playground, [], [], "  ", off, short))


def test_highlight_and_sweep(playground: Playground) -> None:
    _, steered = list(respond(playground, [], [], PROMPT, controls_from(*knobs()), Sampling(8)))[-1]
    marks = highlight(playground, steered, controls_from(*knobs(k=5)))
    assert marks and any(score is not None for _, score in marks)
    assert max(score for _, score in marks if score is not None) == 1.0
    assert highlight(playground, steered, controls_from(*knobs(latent_set=NONE))) == []
    judges = {"substring": make_judge("substring")}
    rows = sweep_rows(
        playground, PROMPT, controls_from(*knobs(mode="scale")), "1, 40", Sampling(8), judges
    )
    assert [row[0] for row in rows] == [1.0, 40.0] and len(rows[0]) == 3
    assert rows[0][1] in ("refused", "not refused", "degenerate")
    figure = dose_response([[1.0, "refused", "a"], [40.0, "not refused", "b"]], ["substring"])
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_xdata()) == [1.0, 40.0] and list(line.get_ydata()) == [1.0, 0.0]
    unsure = dose_response([[1.0, "?", "a"], [2.0, "degenerate", "b"]], ["substring"])
    (line,) = unsure.axes[0].get_lines()
    assert list(line.get_xdata()) == [2.0] and list(line.get_ydata()) == [0.5]  # "?" not drawn
    with pytest.raises(UserError, match="not numbers"):
        sweep_rows(playground, PROMPT, controls_from(*knobs()), "a, b", Sampling(8), judges)


def test_both_answers_get_each_judge_s_verdict_and_a_latent_its_card(
    playground: Playground,
) -> None:
    base = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]
    steered = [*base[:1], {"role": "assistant", "content": "I'm sorry, I can't help with that."}]
    judges = {"substring": make_judge("substring")}
    rows = verdict_rows(playground, judges, base, steered)
    assert rows == [["substring", "not refused", "refused"]]
    assert verdict_rows(playground, judges, base[:1], steered) == []  # no answer yet
    assert verdict_rows(playground, {}, base, steered) == []
    page = card_html(playground, "L1:3")
    assert "layer 1, latent 3" in page and "promotes" in page
    assert card_html(playground, None) == ""


def test_the_verdicts_are_the_run_s_judges(tmp_path: Path) -> None:
    assert run_judges(None) == ("substring",)
    assert run_judges(str(tmp_path)) == ("substring",)  # no benchmark.json
    summary = tmp_path / "benchmark.json"
    summary.write_text('{"config": {"judges": ["substring", "learned:size=quick"]}}')
    assert run_judges(str(tmp_path)) == ("substring", "learned:size=quick")
    summary.write_text('{"config": {"judges": "substring"}}')
    with pytest.raises(UserError, match=r"config\.judges must be a non-empty list"):
        run_judges(str(tmp_path))


def test_the_command_names_bad_input_before_loading_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["playground"]) == 2
    assert "pass a run folder" in capsys.readouterr().err
    assert main(["playground", str(tmp_path)]) == 2
    assert "not a finished benchmark run" in capsys.readouterr().err
    assert main(["playground", "--latents", str(tmp_path / "no.json")]) == 2
    assert "error:" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_app_in_a_real_browser(playground: Playground, tmp_path: Path) -> None:
    """Type a prompt, send it: both answers appear and differ with the latent edit on; with
    the latent set switched to none they agree; the highlight renders; the page is not blank."""
    _extra("gradio")
    _extra("playwright")
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        if os.environ.get("REFUSAL_LENS_REQUIRE_EXTRAS") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    from refusal_lens.playground_app import build_app

    app = build_app(playground, examples=[PROMPT], judges={"substring": make_judge("substring")})
    port = _free_port()
    app.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            answers = _send(page, PROMPT)
            assert answers[0] and answers[1] and answers[0] != answers[1]
            # each judge's verdict on both answers, beside the chats
            deadline, said = time.time() + 60, 0
            while time.time() < deadline and said < 2:
                said = _verdict_lines(page.locator("#verdicts").inner_text())
                time.sleep(0.5)
            assert said == 2, page.locator("#verdicts").inner_text()
            page.get_by_role("tab", name="look inside").click()
            page.get_by_role("button", name="Highlight the chosen latents").click()
            page.locator("#steered-marks .textfield").first.wait_for(timeout=60_000)
            shot = tmp_path / "playground.png"
            page.screenshot(path=str(shot), full_page=True)
            # a latent's card, one choice away
            page.get_by_role("tab", name="latent cards").click()
            page.get_by_label("latent of the set").click()
            page.get_by_role("option", name="L1:3", exact=True).click()
            page.get_by_text("layer 1, latent 3").wait_for(timeout=60_000)
            # the strength sweep fills its table, one row per value, with the judge's verdict
            page.get_by_role("tab", name="strength sweep").click()
            page.locator("#sweep").click()
            deadline, said = time.time() + 120, 0
            while time.time() < deadline and said < 5:  # one verdict per value, five values
                said = _verdict_lines(page.locator("#sweep-table").inner_text())
                time.sleep(0.5)
            assert said >= 5, page.locator("#sweep-table").inner_text()
            page.locator("#sweep-plot img").first.wait_for(timeout=60_000)  # the dose-response
            # a slider moved: the intervention shown is the dialled value, not the set's own
            page.get_by_label("the set's own c / v").uncheck()
            page.get_by_label("K* (0: the set's own)").fill("2")  # a short JSON: all in view
            page.get_by_label("K* (0: the set's own)").press("Enter")
            page.get_by_text("intervention (as `steer --json` prints it)").click()
            page.locator("#value input[type=number]").fill("2.5")
            page.locator("#value input[type=number]").press("Enter")
            deadline = time.time() + 30
            while (
                time.time() < deadline
                and '"value": 2.5' not in page.locator("#controls-json").inner_text()
            ):
                time.sleep(0.5)
            assert '"value": 2.5' in page.locator("#controls-json").inner_text()
            page.get_by_label("the set's own c / v").check()
            page.get_by_label("K* (0: the set's own)").fill("0")
            page.get_by_label("K* (0: the set's own)").press("Enter")
            # the latent set switched off: both panes answer alike
            page.locator("#clear").click()
            page.get_by_label("latent set").click()
            page.get_by_role("option", name=NONE).click()
            time.sleep(0.5)
            same = _send(page, PROMPT)
            assert same[0] == same[1] == answers[0]
            browser.close()
    finally:
        app.close()
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.std() > 0.05  # not a blank page


def _verdict_lines(text: str) -> int:
    """How many cells of the sweep table are a judge's verdict (one per value)."""
    words = {"refused", "not refused", "degenerate", "complied", "did not comply"}
    return sum(line.strip() in words for line in text.splitlines())


def _send(page: object, text: str) -> tuple[str, str]:
    """Type `text`, press Send, and wait for both answers to stop changing."""
    page.locator("#prompt textarea").fill(text)  # type: ignore[attr-defined]
    page.locator("#send").click()  # type: ignore[attr-defined]
    bots = [page.locator(f"#{pane} .bot").last for pane in ("base-chat", "steered-chat")]  # type: ignore[attr-defined]
    for bot in bots:
        bot.wait_for(timeout=60_000)
    previous, stable = None, 0
    deadline = time.time() + 120
    while time.time() < deadline and stable < 3:
        now = tuple(bot.inner_text() for bot in bots)
        stable = stable + 1 if now == previous else 0
        previous = now
        time.sleep(0.5)
    assert previous is not None
    return previous[0].strip(), previous[1].strip()
