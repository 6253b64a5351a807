"""The prompt containers every other module works with: an immutable `Prompt` and `PromptSet`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import overload

from refusal_lens.errors import UserError


def normalize_text(text: str) -> str:
    """The comparison key used by `PromptSet.without`: casefolded, whitespace runs collapsed."""
    return " ".join(text.casefold().split())


def prompt_hash(text: str) -> str:
    """The short key of a prompt (normalised text): how latent sets record their selection
    prompts, so held-out checks survive casing and whitespace changes."""
    return hashlib.sha256(normalize_text(text).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Prompt:
    """One prompt. `source` is the dataset name or file path it came from.

    `meta` holds extra string fields (xstest: ``{"label", "type", "focus"}``; built-in:
    ``{"split"}``). It takes part in equality but not in the hash, so prompts stay hashable.
    """

    text: str
    category: str | None = None
    source: str = ""
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Prompt.text must be a str, got {type(self.text).__name__}")
        # Copy so that a caller mutating its dict cannot change a frozen prompt.
        object.__setattr__(self, "meta", {str(k): str(v) for k, v in self.meta.items()})


@dataclass(frozen=True)
class PromptSet:
    """A named, ordered, immutable sequence of prompts."""

    name: str
    prompts: tuple[Prompt, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.prompts, tuple):
            object.__setattr__(self, "prompts", tuple(self.prompts))

    def texts(self) -> list[str]:
        """The prompt texts, in order."""
        return [p.text for p in self.prompts]

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    @overload
    def __getitem__(self, index: int) -> Prompt: ...

    @overload
    def __getitem__(self, index: slice) -> PromptSet: ...

    def __getitem__(self, index: int | slice) -> Prompt | PromptSet:
        if isinstance(index, slice):
            return PromptSet(self.name, self.prompts[index])
        return self.prompts[index]

    def head(self, n: int | None) -> PromptSet:
        """The first `n` prompts (all of them when `n` is None)."""
        if n is None:
            return self
        if n < 0:
            raise UserError(f"cannot take the first {n} prompts of {self.name}; use a count >= 0")
        return PromptSet(self.name, self.prompts[:n])

    def filter(self, keep: Callable[[Prompt], bool], name: str | None = None) -> PromptSet:
        """The prompts for which `keep` is true, named `name` (default: this set's name)."""
        return PromptSet(self.name if name is None else name, tuple(p for p in self if keep(p)))

    def without(self, other: PromptSet | Iterable[Prompt]) -> PromptSet:
        """Drop the prompts whose normalised text (casefold, collapsed whitespace) is in `other`.

        Used to keep a training split disjoint from the test sets it is evaluated on.
        """
        banned = {normalize_text(p.text) for p in other}
        return self.filter(lambda p: normalize_text(p.text) not in banned)

    def content_hash(self) -> str:
        """SHA-256 (hex) over the texts in order; independent of name, categories and meta."""
        payload = json.dumps(self.texts(), ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return f"PromptSet(name={self.name!r}, n={len(self)})"
