"""Optional Hugging Face hub fallback (needs the `hub` extra: ``pip install 'refusal-lens[hub]'``).

`datasets` is imported lazily. Failures raise `HubUnavailable` with a few-word reason; the
caller turns that into one `UserError` that also says what was looked for locally.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from refusal_lens.data.files import Fields, Table
from refusal_lens.errors import UserError

HUB_PREFIX = "hub:"
PROBE_TIMEOUT_S = 3.0
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class HubUnavailable(Exception):
    """The hub could not provide the dataset; the message is a short reason."""


@dataclass(frozen=True)
class HubSource:
    repo: str
    config: str | None = None
    split: str | None = None  # None: "train", else "test", else the first split
    fields: Fields = field(default_factory=Fields)

    @property
    def label(self) -> str:
        return (
            f"{HUB_PREFIX}{self.repo}"
            + (f":{self.config}" if self.config else "")
            + (f"@{self.split}" if self.split else "")
        )


def parse_hub_id(spec: str) -> HubSource:
    """Parse ``hub:owner/name[:config][@split]``."""
    body = spec[len(HUB_PREFIX) :] if spec.startswith(HUB_PREFIX) else spec
    split: str | None = None
    config: str | None = None
    if "@" in body:
        body, split = body.rsplit("@", 1)
    if ":" in body:
        body, config = body.split(":", 1)
    if not _REPO_RE.match(body) or split == "" or config == "":
        raise UserError(
            f"bad hub dataset id {spec!r}; write it as hub:owner/name[:config][@split], "
            "e.g. hub:walledai/AdvBench@train"
        )
    return HubSource(repo=body, config=config, split=split)


def hub_offline() -> bool:
    """Whether offline mode is asked for now (read at call time, not at import time)."""
    return any(
        os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for var in _OFFLINE_VARS
    )


def _probe_endpoint() -> None:
    """Fail fast (a few seconds) when the hub host cannot be reached, instead of minutes of
    retries inside `datasets`. Skipped behind a proxy, where a direct connection may not work."""
    if any(os.environ.get(var) for var in _PROXY_VARS):
        return
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except socket.gaierror:
        raise HubUnavailable(f"cannot resolve {host} (no network?)") from None
    except TimeoutError:
        raise HubUnavailable(f"{host} did not answer within {PROBE_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise HubUnavailable(f"cannot connect to {host} ({exc.strerror or exc})") from None


@contextlib.contextmanager
def _forced_offline() -> Iterator[None]:
    """Make already-imported hub libraries honour an offline flag set after their import."""
    patched: list[tuple[Any, str, Any]] = []
    for module_name, attr in (
        ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_DATASETS_OFFLINE"),
    ):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attr):
            patched.append((module, attr, getattr(module, attr)))
            setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in reversed(patched):
            setattr(module, attr, value)


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    if name == "DatasetNotFoundError" or "doesn't exist on the Hub" in text:
        return "no such dataset on the hub (or it is gated/private)"
    if isinstance(exc, ConnectionError) or "Couldn't reach" in text:
        return "could not reach the hub"
    return f"{name}: {text[:160]}" if text else name


def _pick_split(dataset_dict: Any, wanted: str | None, label: str) -> Any:
    names = list(dataset_dict.keys())
    if wanted is not None:
        if wanted not in names:
            raise HubUnavailable(f"{label} has no split {wanted!r} (splits: {', '.join(names)})")
        return dataset_dict[wanted]
    for preferred in ("train", "test"):
        if preferred in names:
            return dataset_dict[preferred]
    if not names:
        raise HubUnavailable(f"{label} has no splits")
    return dataset_dict[names[0]]


def load_hub_table(source: HubSource) -> Table:
    """Download (or read from the hub cache) one split of a hub dataset as a `Table`."""
    try:
        import datasets
    except ImportError:
        raise HubUnavailable(
            "the optional 'datasets' package is not installed (pip install 'refusal-lens[hub]')"
        ) from None

    offline = hub_offline()
    if not offline:
        _probe_endpoint()
    context = _forced_offline() if offline else contextlib.nullcontext()
    try:
        with context:
            loaded = datasets.load_dataset(source.repo, source.config)
    except Exception as exc:
        if offline:
            raise HubUnavailable(
                f"offline mode is on (HF_HUB_OFFLINE) and {source.repo} is not in the hub cache"
            ) from None
        raise HubUnavailable(f"{source.label}: {_reason(exc)}") from None
    split = _pick_split(loaded, source.split, source.label)
    columns = tuple(str(c) for c in split.column_names)
    return Table(columns=columns, rows=tuple(split.to_list()))
