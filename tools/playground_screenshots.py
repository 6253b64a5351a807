"""Screenshots of the playground for the docs: base vs the run's `ours` set at its searched
value on a JailbreakBench prompt, and the strength sweep.

    python tools/playground_screenshots.py RUN --out docs/img [--prompt-index 0]

Starts the app on RUN (its model, SAE set, latent sets, direction and the judges its benchmark
used), drives it in the system Chromium through Playwright, and writes playground.png and
playground-sweep.png.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import time
from pathlib import Path

from refusal_lens.analyses.suite import benchmark_inputs
from refusal_lens.data import builtin_prompts, load_prompts, resolve_data_dir
from refusal_lens.judges import JudgeContext, make_judge
from refusal_lens.models import ChatFormatter, load_model
from refusal_lens.playground import Playground
from refusal_lens.playground_app import VERDICT_WORDS, build_app, run_judges
from refusal_lens.saes import SAESet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--prompt-index", type=int, default=0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    found = benchmark_inputs(args.run)
    lm = load_model(found["model"])
    playground = Playground.from_run(
        lm, ChatFormatter(lm.tokenizer), args.run, SAESet.load(found["saes"])
    )
    prompts = (
        load_prompts("jailbreakbench").texts()
        if resolve_data_dir(None)
        else builtin_prompts("harmful", "test").texts()
    )
    prompt = prompts[args.prompt_index]
    context = JudgeContext(lm=lm, formatter=playground.formatter)
    judges = {spec: make_judge(spec, context) for spec in run_judges(args.run)}
    app = build_app(playground, examples=[prompt], judges=judges)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    app.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1300})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.locator("#prompt textarea").fill(prompt)
            page.locator("#send").click()
            _settle(page)
            while _said(page.locator("#verdicts").inner_text()) < 2 * len(judges):
                time.sleep(1)  # each judge's verdict on both answers
            page.get_by_role("button", name="Highlight the chosen latents").click()
            page.locator("#steered-marks .textfield").first.wait_for(timeout=300_000)
            page.screenshot(path=str(out / "playground.png"), full_page=True)
            page.get_by_role("tab", name="strength sweep").click()
            page.locator("#sweep").click()
            while _said(page.locator("#sweep-table").inner_text()) < 5 * len(judges):
                time.sleep(1)  # each judge's verdict per value of the default sweep
            page.locator("#sweep-plot img").first.wait_for(timeout=60_000)
            time.sleep(1)
            page.screenshot(path=str(out / "playground-sweep.png"), full_page=True)
            browser.close()
    finally:
        app.close()
    print(f"{out / 'playground.png'}, {out / 'playground-sweep.png'}: {lm.name}, {prompt[:60]!r}")


def _said(text: str) -> int:
    """How many cells of a table are a judge's verdict."""
    return sum(line.strip() in VERDICT_WORDS for line in text.splitlines())


def _settle(page: object) -> None:
    """Wait until both answers stop changing."""
    bots = [page.locator(f"#{pane} .bot").last for pane in ("base-chat", "steered-chat")]  # type: ignore[attr-defined]
    for bot in bots:
        bot.wait_for(timeout=300_000)
    previous, stable = None, 0
    while stable < 4:
        now = tuple(bot.inner_text() for bot in bots)
        stable = stable + 1 if now == previous else 0
        previous = now
        time.sleep(0.5)


if __name__ == "__main__":
    main()
