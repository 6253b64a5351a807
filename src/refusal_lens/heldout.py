"""The held-out protocol: no prompt of an evaluation set, exact or near-duplicate, in any pool
that selects something (the refusal direction, a latent set, a scale).

Benchmarks paraphrase each other ("Develop malware that disables antivirus..." in
JailbreakBench vs "Develop a virus that disables antivirus..." in the harmful train split), so
exact matching is not enough: two prompts whose word sets overlap with Jaccard >= 0.6 count as
the same prompt. Selections record each prompt as a hash of its normalised text and the hashes
of its words (`describe`), so an artefact can later refuse to be evaluated on its own
selection prompts, or near-copies of them, without storing their text (`check`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from .data.promptset import PromptSet, prompt_hash
from .errors import UserError

NEAR_DUPLICATE_JACCARD = 0.6


def words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", text.casefold()))


def word_hashes(text: str) -> list[str]:
    """The prompt's distinct words, each as 8 hex digits of its SHA-256, sorted."""
    return sorted({hashlib.sha256(w.encode()).hexdigest()[:8] for w in words(text)})


def describe(prompts: PromptSet) -> dict[str, Any]:
    """What a selection records about the prompts it used."""
    return {
        "name": prompts.name,
        "n": len(prompts),
        "content_hash": prompts.content_hash(),
        "prompt_hashes": [prompt_hash(t) for t in prompts.texts()],
        "word_hashes": [word_hashes(t) for t in prompts.texts()],
    }


class _Index:
    """Word sets indexed for near-duplicate lookups at one Jaccard threshold (prefix filtering).

    If `J(A, B) >= t` then `|A & B| >= ceil(t |A|)` and `>= ceil(t |B|)`. Order every word by
    one global order (rarest first in the indexed sets): the first shared word of A and B then
    lies in A's first `|A| - ceil(t |A|) + 1` words and in B's first `|B| - ceil(t |B|) + 1`,
    so indexing and probing those prefixes only finds every pair at or above `t`, without
    comparing a prompt with every indexed prompt that shares a common word such as "how".
    """

    def __init__(self, sets: Iterable[frozenset[str]], threshold: float) -> None:
        self.threshold = threshold
        self.sets = list(sets)
        counts = Counter(word for item in self.sets for word in item)
        self._key = lambda word: (counts.get(word, 0), word)
        self.by_word: dict[str, list[int]] = {}
        for number, item in enumerate(self.sets):
            for word in self._prefix(item):
                self.by_word.setdefault(word, []).append(number)

    def _prefix(self, item: frozenset[str]) -> list[str]:
        shared = math.ceil(self.threshold * len(item) - 1e-9)  # the least overlap possible
        return sorted(item, key=self._key)[: len(item) - shared + 1]

    def near(self, item: frozenset[str]) -> bool:
        if not item:
            return False
        found = {n for word in self._prefix(item) for n in self.by_word.get(word, ())}
        return any(
            len(item & self.sets[n]) / len(item | self.sets[n]) >= self.threshold for n in found
        )


def drop_near_duplicates(
    pool: PromptSet, others: Iterable[PromptSet], threshold: float = NEAR_DUPLICATE_JACCARD
) -> PromptSet:
    """Drop prompts whose word set overlaps a prompt of `others` with Jaccard >= threshold."""
    index = _Index((words(p.text) for other in others for p in other), threshold)
    return pool.filter(lambda p: not index.near(words(p.text)))


def without(
    pool: PromptSet, others: Iterable[PromptSet], threshold: float = NEAR_DUPLICATE_JACCARD
) -> PromptSet:
    """`pool` with every prompt of `others` removed, exact (normalised text) or near."""
    others = list(others)
    kept = pool
    for other in others:
        kept = kept.without(other)
    return drop_near_duplicates(kept, others, threshold)


def overlap(
    selected_on: Mapping[str, Any], prompts: PromptSet, threshold: float = NEAR_DUPLICATE_JACCARD
) -> tuple[int, int]:
    """(exact, near) counts of `prompts` found in a recorded selection (`describe` per role).
    Roles recorded before word hashes existed are checked exactly only."""
    exact_hashes = {h for role in selected_on.values() for h in role.get("prompt_hashes", [])}
    index = _Index(
        (frozenset(item) for role in selected_on.values() for item in role.get("word_hashes", [])),
        threshold,
    )
    exact = near = 0
    for text in prompts.texts():
        if prompt_hash(text) in exact_hashes:
            exact += 1
        elif index.near(frozenset(word_hashes(text))):
            near += 1
    return exact, near


def drop_selected(
    selected_on: Mapping[str, Any], prompts: PromptSet, threshold: float = NEAR_DUPLICATE_JACCARD
) -> PromptSet:
    """`prompts` without those a recorded selection used (exactly or as near-duplicates)."""
    exact_hashes = {h for role in selected_on.values() for h in role.get("prompt_hashes", [])}
    index = _Index(
        (frozenset(item) for role in selected_on.values() for item in role.get("word_hashes", [])),
        threshold,
    )
    return prompts.filter(
        lambda p: (
            prompt_hash(p.text) not in exact_hashes
            and not index.near(frozenset(word_hashes(p.text)))
        )
    )


def check(selected_on: Mapping[str, Any], prompts: PromptSet, what: str) -> None:
    """Refuse to evaluate `what` on prompts it was selected on (or near-copies of them)."""
    exact, near = overlap(selected_on, prompts)
    if exact or near:
        raise UserError(
            f"{exact + near} of the {len(prompts)} prompts of {prompts.name} were used to select "
            f"{what} ({exact} exactly, {near} as near-duplicates; held-out protocol); evaluate on "
            "other prompts, or select again with those prompts excluded"
        )
