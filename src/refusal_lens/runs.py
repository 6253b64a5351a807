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
import tempfile
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


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """Fail before any work unless `path` is, or can be made, a folder this process can write
    in: every command that writes a folder calls this before it loads a model. The folder is
    created (it is where the output goes anyway); nothing is written in it."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} exists and is not a folder; pick another {flag}")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(
                    f"{flag} {folder} cannot be created: {parent} is a file, not a folder; "
                    f"pick another {flag}"
                )
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(
            f"cannot write to {flag} {folder} ({_reason(error)}); pick a writable folder"
        ) from None
    return folder


def check_output_file(
    path: str | Path, flag: str = "--out", inputs: tuple[str | Path, ...] = ()
) -> Path:
    """Fail before any work unless `path` can be written as a file: not a folder, its folder
    exists and is writable, and it is none of the command's `inputs` (a user's input file is
    never overwritten). Nothing is created."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise UserError(f"{flag} {file} is a folder; give a file path")
    for source in inputs:
        if file.exists() and Path(source).exists() and file.samefile(source):
            raise UserError(f"{flag} {file} is an input of this command; write somewhere else")
    parent = file.parent
    if not parent.is_dir():
        what = "is a file" if parent.exists() else "does not exist"
        raise UserError(f"{flag} {file}: its folder {parent} {what}; create it or pick another")
    try:
        if file.exists():
            with file.open("ab"):
                pass
        else:
            with tempfile.TemporaryFile(dir=parent):
                pass
    except OSError as error:
        raise UserError(
            f"cannot write {flag} {file} ({_reason(error)}); pick a writable path"
        ) from None
    return file


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
        check_output_folder(self.path, "run folder")

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

    def note_in_manifest(self, key: str, value: Any) -> None:
        """Add `key` to the manifest's latest command (e.g. what each worker did)."""
        manifest_path = self.path / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return  # no manifest (or a cut one): nothing to add to
        history = manifest.get("history") if isinstance(manifest, dict) else None
        if not isinstance(history, list) or not history or not isinstance(history[-1], dict):
            return
        history[-1][key] = value
        write_json(manifest_path, manifest)

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
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interruption
                    continue
                if isinstance(record, dict) and record.get("key") == key:
                    yield record

    def append_jsonl(self, name: str, key: str, records: list[dict[str, Any]]) -> None:
        """Append records, one JSON object a line. A last line cut by a kill (no final
        newline) is dropped first, so the next record starts on a line of its own instead of
        being glued onto the fragment (the reader skips lines it cannot parse)."""
        path = self.file(name)
        _drop_partial_line(path)
        with path.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps({"key": key, **record}, ensure_ascii=False) + "\n")
            handle.flush()


def _drop_partial_line(path: Path) -> None:
    """When `path` does not end with a newline, end its last line: a whole JSON record (cut
    just before its newline) gets the newline, a fragment is truncated away."""
    if not path.is_file():
        return
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        # walk back to the last newline (records are small: read the tail in chunks)
        end, tail = size, b""
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            tail = handle.read(end - start) + tail
            cut = tail.rfind(b"\n")
            if cut >= 0:
                start, tail = start + cut + 1, tail[cut + 1 :]
                break
            end = start
        else:
            start = 0
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:  # JSONDecodeError and bad UTF-8 alike
            whole = False
        if whole:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
        else:
            handle.truncate(start)
