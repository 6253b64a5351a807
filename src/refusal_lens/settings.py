"""Where refusal-lens keeps things (cache directory, environment overrides) and which model it
studies when none is named."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

CACHE_ENV_VAR = "REFUSAL_LENS_CACHE"
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"  # the embedded default (installs from PyPI)


def cache_dir(override: str | Path | None = None) -> Path:
    """The user cache directory (converted models, hashes): flag > $REFUSAL_LENS_CACHE > default."""
    chosen = override or os.environ.get(CACHE_ENV_VAR) or user_cache_dir("refusal-lens")
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
