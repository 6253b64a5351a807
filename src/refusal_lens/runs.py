"""Run folders: a manifest, stage outputs keyed by what produced them, reuse on rerun.

Every stage output carries a `key`: a hash of everything that determines it (model weights,
data, settings). A rerun reuses an output whose key matches and recomputes one that does not,
so an interrupted run loses nothing it had finished and a changed setting is never served stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .errors import UserError


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) while the block runs, so that two
    processes computing the same cached folder take turns (POSIX advisory lock; where `fcntl`
    is missing, no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    packages = ("refusal-lens", "torch", "transformers", "safetensors", "gguf", "numpy")
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in packages},
    }


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a crash never leaves half a file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UserError(
                f"run folder {self.path} exists and is not a folder; pick another --out"
            )
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_manifest(
        self, command: str, config: dict[str, Any], model: dict[str, Any], seed: int
    ) -> None:
        manifest_path = self.path / "manifest.json"
        history = []
        if manifest_path.is_file():
            try:
                history = json.loads(manifest_path.read_text()).get("history", [])
            except json.JSONDecodeError:
                history = []
        entry = {
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv[1:],
        }
        write_json(
            manifest_path,
            {
                "command": command,
                "config": config,
                "model": model,
                "seed": seed,
                "environment": environment(),
                "history": [*history, entry],
            },
        )

    def load_stage(self, name: str, key: str) -> dict[str, Any] | None:
        """A stage's JSON output if it exists and was computed with `key`, else None."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:  # a file cut by a crash: recompute the stage
            return None
        return data if isinstance(data, dict) and data.get("key") == key else None

    def save_stage(self, name: str, key: str, data: dict[str, Any]) -> None:
        write_json(self.file(name), {"key": key, **data})

    def read_jsonl(self, name: str, key: str) -> Iterator[dict[str, Any]]:
        """Records of an append-only JSONL stage written with `key` (others are ignored)."""
        path = self.path / name
        if not path.is_file():
            return
        with path.open() as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interruption
                    continue
                if record.get("key") == key:
                    yield record

    def append_jsonl(self, name: str, key: str, records: list[dict[str, Any]]) -> None:
        with self.file(name).open("a") as handle:
            for record in records:
                handle.write(json.dumps({"key": key, **record}, ensure_ascii=False) + "\n")
            handle.flush()
