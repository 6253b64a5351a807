"""Run-folder helpers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from refusal_lens.runs import exclusive


def test_exclusive_makes_a_second_holder_wait(tmp_path: Path) -> None:
    lock = tmp_path / "cache" / "search.lock"
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with exclusive(lock):
            held.set()
            time.sleep(0.3)  # a second holder that did not wait would write before this ends
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait()
    with exclusive(lock):
        order.append("second")
    thread.join()
    assert order == ["first done", "second"]
