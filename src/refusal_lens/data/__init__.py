"""Prompt sets: the built-in harmful/harmless set, benchmark loaders and local prompt files.

`load_prompts` resolves, in order: a built-in name (``builtin_harmful``, ``builtin_harmless_train``
...), a ``hub:owner/name[:config][@split]`` id, an existing local file (.csv/.json/.jsonl/.txt), a
registered benchmark name read from the data directory (``--data-dir`` / ``$REFUSAL_LENS_DATA``,
laid out as the guide's *Data* section describes) with a Hugging Face hub fallback. See
`load_prompts` for the registered names (``alpaca`` is the held-out Alpaca split ``harmless_test``).
"""

from refusal_lens.data.loaders import (
    DATA_ENV_VAR,
    available_datasets,
    builtin_prompts,
    check_dataset_name,
    load_prompts,
    resolve_data_dir,
)
from refusal_lens.data.promptset import Prompt, PromptSet

__all__ = [
    "DATA_ENV_VAR",
    "Prompt",
    "PromptSet",
    "available_datasets",
    "builtin_prompts",
    "check_dataset_name",
    "load_prompts",
    "resolve_data_dir",
]
