"""Fetch the benchmark data directory from the files' public sources.

Every file the pipeline reads from a data directory is listed in the packaged manifest
(`sources.json`, written by ``tools/data_sources.py``): where it goes in the layout, the URL
of a pinned commit it is published at, and the sha256 and size of its content. `fetch_data`
downloads what is missing into a folder, checks each file against the manifest, and leaves a
file in place only when it matches, so an interrupted fetch resumes where it stopped.

A mirror stands in for the internet (an air-gapped site, a test): a folder laid out as
``MIRROR/<host>/<path of the URL>``, or an ``http(s)://`` base that replaces
``https://<host>``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

from refusal_lens.errors import UserError

TIMEOUT_S = 30.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """One file of the data directory and where it is published."""

    path: str  # in the data layout, e.g. advbench/harmful_behaviors.csv
    group: str  # the layout's top folder it belongs to
    url: str
    sha256: str  # of the content as it lies in the layout (after gunzip)
    bytes: int
    gunzip: bool = False
    what: str = ""
    license: str = ""


def _field(entry: dict[str, object], key: str, kind: type, where: str) -> object:
    value = entry.get(key)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise UserError(f"{where}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def manifest() -> list[DataFile]:
    """The packaged manifest, checked for types."""
    text = resources.files("refusal_lens.data").joinpath("sources.json").read_text("utf-8")
    raw = json.loads(text)
    files = raw.get("files") if isinstance(raw, dict) else None
    if not isinstance(files, list):
        raise UserError("the packaged sources.json has no 'files' list; reinstall refusal-lens")
    out = []
    for i, entry in enumerate(files):
        where = f"sources.json file {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} is not an object; reinstall refusal-lens")
        out.append(
            DataFile(
                path=str(_field(entry, "path", str, where)),
                group=str(_field(entry, "group", str, where)),
                url=str(_field(entry, "url", str, where)),
                sha256=str(_field(entry, "sha256", str, where)),
                bytes=int(_field(entry, "bytes", int, where)),  # type: ignore[call-overload]
                gunzip=bool(_field(entry, "gunzip", bool, where)),
                what=str(entry.get("what", "")),
                license=str(entry.get("license", "")),
            )
        )
    return out


def groups(files: Sequence[DataFile]) -> list[str]:
    return sorted({f.group for f in files})


def select(files: Sequence[DataFile], only: Sequence[str]) -> list[DataFile]:
    """The files of the named groups (all when `only` is empty); an unknown name is an error."""
    if not only:
        return list(files)
    known = groups(files)
    unknown = [g for g in only if g not in known]
    if unknown:
        raise UserError(f"unknown data group {unknown[0]!r}; use some of: {', '.join(known)}")
    return [f for f in files if f.group in only]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def present(root: Path, entry: DataFile) -> bool:
    """Whether `root` already holds the manifest's version of the file."""
    path = root / entry.path
    return path.is_file() and path.stat().st_size == entry.bytes and _sha256(path) == entry.sha256


def source_of(entry: DataFile, mirror: str | None) -> str:
    """The URL (or local path) to read `entry` from, through `mirror` if one is given."""
    if not mirror:
        return entry.url
    url = urlparse(entry.url)
    if mirror.startswith(("http://", "https://", "file://")):
        return mirror.rstrip("/") + "/" + url.netloc + url.path
    return str(Path(mirror).expanduser() / url.netloc / url.path.lstrip("/"))


def _read(source: str) -> bytes:
    if not source.startswith(("http://", "https://", "file://")):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"the mirror has no {path}; give a mirror laid out as MIRROR/host/path")
        return path.read_bytes()
    try:
        with urllib.request.urlopen(source, timeout=TIMEOUT_S) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        raise UserError(
            f"{source} answered HTTP {exc.code}; try again later or use --mirror"
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot download {source} ({reason}); check the network, or pass --mirror DIR "
            "(a copy laid out as DIR/host/path)"
        ) from None


def fetch_file(root: Path, entry: DataFile, mirror: str | None = None) -> None:
    """Download one file into `root`, verify it, and move it into place atomically."""
    content = _read(source_of(entry, mirror))
    if entry.gunzip:
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError) as exc:
            raise UserError(f"{entry.url} is not a valid gzip file ({exc}); fetch again") from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != entry.sha256 or len(content) != entry.bytes:
        raise UserError(
            f"{entry.path}: the downloaded file differs from the version refusal-lens was "
            f"tested with (sha256 {digest[:12]}, expected {entry.sha256[:12]}); the source may "
            "have changed: report it, or place the expected file there by hand"
        )
    target = root / entry.path
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(content)
    os.replace(partial, target)


@dataclass(frozen=True)
class FetchSummary:
    fetched: int
    kept: int
    bytes: int


def fetch_data(
    root: str | Path,
    *,
    only: Sequence[str] = (),
    mirror: str | None = None,
    progress: Callable[[int, int, DataFile], None] | None = None,
) -> FetchSummary:
    """Fill `root` with the data directory's files (the `only` groups, else all).

    Files already there with the manifest's content are kept; the rest are downloaded and
    verified one by one, so a rerun after an interruption fetches only what is missing.
    """
    folder = Path(root).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; give a folder to fetch the data into")
    files = select(manifest(), only)
    fetched = kept = size = 0
    for i, entry in enumerate(files):
        if progress is not None:
            progress(i, len(files), entry)
        if present(folder, entry):
            kept += 1
            continue
        fetch_file(folder, entry, mirror)
        fetched += 1
        size += entry.bytes
    return FetchSummary(fetched=fetched, kept=kept, bytes=size)


def check_data(root: str | Path, only: Sequence[str] = ()) -> list[DataFile]:
    """The manifest's files (of the `only` groups) that `root` lacks or holds another version of."""
    folder = Path(root).expanduser()
    return [entry for entry in select(manifest(), only) if not present(folder, entry)]
