"""The text an SAE is trained on: a weighted mixture of conversations, prose and requests.

Conversations are rendered with the model's chat template; requests (one user turn) end with the
template's generation prompt, so their last tokens are the post-instruction positions where the
refusal signal lives. Every token is labelled with a kind (`TokenKind`) so masks can keep or
drop template, user, assistant, system-header and prose tokens, and so evaluation can report the
post-instruction positions on their own.

Every source has a deterministic train / held-out split: SAEs train on `train`, `eval-saes`
measures on `eval` (requests: the refusal_direction train vs test splits; never a test prompt in
training).
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from ..data import load_prompts, resolve_data_dir
from ..errors import UserError

Split = Literal["train", "eval"]
DocKind = Literal["chat", "prose", "request"]


class TokenKind(IntEnum):
    PAD = 0
    SYSTEM_HEADER = 1  # the fixed system turn the template inserts before the user turn
    TEMPLATE = 2  # role markers and other template tokens
    USER = 3
    ASSISTANT = 4
    POST_INSTRUCTION = 5  # template tokens after the last user turn of a request
    PROSE = 6


KIND_NAMES = {kind.name.lower(): kind for kind in TokenKind}


@dataclass(frozen=True)
class Document:
    kind: DocKind
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) for chat / request
    text: str = ""  # prose


@dataclass
class TokenSequence:
    """One tokenized training sequence with a kind per token."""

    input_ids: list[int]
    kinds: list[int]
    source: str


@dataclass(frozen=True)
class MixtureSource:
    name: str
    weight: float


DEFAULT_MIXTURE: tuple[MixtureSource, ...] = (
    MixtureSource("alpaca_eval", 0.20),
    MixtureSource("gpteacher", 0.08),
    MixtureSource("hh_rlhf", 0.12),
    MixtureSource("gutenberg", 0.20),
    MixtureSource("harmful_requests", 0.20),
    MixtureSource("harmless_requests", 0.20),
)


def parse_mixture(spec: str | None) -> tuple[MixtureSource, ...]:
    """`alpaca_eval=0.3,gutenberg=0.2,my.jsonl=0.5` (names or file paths); None = default."""
    if not spec:
        return DEFAULT_MIXTURE
    sources = []
    for part in spec.split(","):
        name, _, weight = part.strip().rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not name or value <= 0:
            raise UserError(f"bad mixture entry {part!r}; write name=weight with weight > 0")
        sources.append(MixtureSource(name, value))
    return tuple(sources)


def _held_out(key: str, fraction: float = 0.1) -> bool:
    return (zlib.crc32(key.encode()) % 1000) < fraction * 1000


def _split_keep(key: str, split: Split) -> bool:
    return _held_out(key) == (split == "eval")


def _json(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(
            f"{what} not found at {path}; pass --data-dir pointing at a folder laid out like "
            "the guide's Data section describes, or leave it out of --mixture"
        )
    return path


def _alpaca_eval(root: Path, split: Split) -> Iterator[Document]:
    folder = _require(root / "general_text" / "alpaca_eval" / "results", "alpaca_eval")
    for outputs in sorted(folder.glob("*/model_outputs.json")):
        for row in _json(outputs):
            if _split_keep(row["instruction"], split):
                yield Document("chat", (("user", row["instruction"]), ("assistant", row["output"])))


def _gpteacher(root: Path, split: Split) -> Iterator[Document]:
    folder = _require(root / "general_text" / "gpteacher", "gpteacher")
    for path in sorted(folder.glob("**/*.json")):
        for row in _json(path):
            user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            if _split_keep(user, split):
                yield Document("chat", (("user", user), ("assistant", row["response"])))


def _hh_turns(transcript: str) -> tuple[tuple[str, str], ...]:
    turns: list[tuple[str, str]] = []
    for chunk in transcript.split("\n\nHuman: ")[1:]:
        human, _, assistant = chunk.partition("\n\nAssistant: ")
        turns.append(("user", human.strip()))
        if assistant.strip():
            turns.append(("assistant", assistant.strip()))
    return tuple(turns)


def _hh_rlhf(root: Path, split: Split) -> Iterator[Document]:
    path = _require(root / "hh_rlhf" / "harmless-base" / "test.jsonl", "hh_rlhf")
    for line in path.read_text(encoding="utf-8").splitlines():
        transcript = json.loads(line)["chosen"]
        turns = _hh_turns(transcript)
        if turns and turns[-1][0] == "assistant" and _split_keep(transcript, split):
            yield Document("chat", turns)


def _gutenberg(root: Path, split: Split) -> Iterator[Document]:
    folder = _require(root / "general_text" / "gutenberg", "gutenberg")
    for path in sorted(folder.glob("*.txt")):
        paragraphs = [
            p.strip() for p in path.read_text(encoding="utf-8", errors="replace").split("\n\n")
        ]
        paragraphs = [p for p in paragraphs if len(p) > 40]
        cut = int(len(paragraphs) * 0.9)  # the last 10% of each book is held out
        for paragraph in paragraphs[:cut] if split == "train" else paragraphs[cut:]:
            yield Document("prose", text=paragraph)


def _requests(kind: str, root: Path | None, split: Split) -> Iterator[Document]:
    name = f"{kind}_{'train' if split == 'train' else 'test'}"
    if root is None:
        name = f"builtin_{kind}_{'train' if split == 'train' else 'test'}"
    for prompt in load_prompts(name, data_dir=root):
        yield Document("request", (("user", prompt.text),))


def _user_file(path: Path, split: Split) -> Iterator[Document]:
    """JSONL rows with `messages` ([{role, content}]), `prompt`/`instruction` (a request) or
    `text` (prose); a .txt file is prose, one paragraph per blank-line-separated block."""
    if path.suffix == ".txt":
        for index, block in enumerate(path.read_text(encoding="utf-8").split("\n\n")):
            if block.strip() and _split_keep(f"{index}:{block}", split):
                yield Document("prose", text=block.strip())
        return
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number} is not valid JSON: {exc.msg}") from exc
        if not _split_keep(line, split):
            continue
        if "messages" in row:
            yield Document("chat", tuple((m["role"], m["content"]) for m in row["messages"]))
        elif "prompt" in row or "instruction" in row:
            yield Document("request", (("user", row.get("prompt") or row["instruction"]),))
        elif "text" in row:
            yield Document("prose", text=row["text"])
        else:
            raise UserError(f"{path}:{number} has none of messages, prompt, instruction, text")


def documents(name: str, data_dir: str | Path | None, split: Split) -> Iterator[Document]:
    root = resolve_data_dir(data_dir)
    if name in ("harmful_requests", "harmless_requests"):
        yield from _requests(name.split("_")[0], root, split)
        return
    readers = {
        "alpaca_eval": _alpaca_eval,
        "gpteacher": _gpteacher,
        "hh_rlhf": _hh_rlhf,
        "gutenberg": _gutenberg,
    }
    if name in readers:
        if root is None:
            raise UserError(
                f"mixture source {name!r} needs the data directory; pass --data-dir or set "
                "REFUSAL_LENS_DATA"
            )
        yield from readers[name](root, split)
        return
    path = Path(name)
    if path.suffix in (".jsonl", ".txt") and path.exists():
        yield from _user_file(path, split)
        return
    known = ", ".join([*readers, "harmful_requests", "harmless_requests"])
    raise UserError(f"unknown mixture source {name!r}; use one of {known}, or a .jsonl/.txt file")


@dataclass
class Tokenizer:
    """Turns documents into sequences of at most `context` tokens with a kind per token."""

    tokenizer: PreTrainedTokenizerBase
    context: int = 256
    system: str | None = None

    def _render(self, messages: Sequence[tuple[str, str]], generation_prompt: bool) -> str:
        chat = [{"role": role, "content": content} for role, content in messages]
        if self.system is not None:
            chat.insert(0, {"role": "system", "content": self.system})
        return str(
            self.tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=generation_prompt
            )
        )

    def _spans(
        self, rendered: str, messages: Sequence[tuple[str, str]]
    ) -> list[tuple[int, int, int]]:
        spans = []
        cursor = 0
        for role, content in messages:
            start = rendered.find(content, cursor) if content else -1
            if start < 0:
                continue
            end = start + len(content)
            kind = TokenKind.USER if role == "user" else TokenKind.ASSISTANT
            spans.append((start, end, int(kind)))
            cursor = end
        return spans

    def encode(self, doc: Document, source: str) -> TokenSequence | None:
        if doc.kind == "prose":
            ids = self.tokenizer(doc.text, add_special_tokens=False)["input_ids"][: self.context]
            if not ids:
                return None
            return TokenSequence(list(ids), [int(TokenKind.PROSE)] * len(ids), source)
        request = doc.kind == "request"
        rendered = self._render(doc.messages, generation_prompt=request)
        encoded = self.tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        spans = self._spans(rendered, doc.messages)
        first_user = spans[0][0] if spans else len(rendered)
        last_content_end = spans[-1][1] if spans else 0
        kinds = []
        for start, end in offsets:
            kind = int(TokenKind.TEMPLATE)
            for span_start, span_end, span_kind in spans:
                if start < span_end and end > span_start:
                    kind = span_kind
                    break
            else:
                if end <= first_user and doc.messages[0][0] != "system":
                    kind = int(TokenKind.SYSTEM_HEADER) if start < self.header_chars else kind
                elif request and start >= last_content_end:
                    kind = int(TokenKind.POST_INSTRUCTION)
            kinds.append(kind)
        if request and len(ids) > self.context:
            # keep the end of a long request: its post-instruction tokens are the point
            ids, kinds = ids[-self.context :], kinds[-self.context :]
        return TokenSequence(list(ids[: self.context]), kinds[: self.context], source)

    @cached_property
    def header_chars(self) -> int:
        """Characters of the fixed text before the first user turn (the system turn); the
        user-role marker itself (`<|im_start|>user\n`) counts as template, not header."""
        marker = "\x00USER\x00"
        prefix = self._render((("user", marker),), False).split(marker, 1)[0]
        role = prefix.rfind("user")
        start = prefix.rfind("<", 0, role) if role >= 0 else -1
        return start if start > 0 else len(prefix)


def sample_sequences(
    mixture: Sequence[MixtureSource],
    tokenizer: Tokenizer,
    n_tokens: int,
    data_dir: str | Path | None,
    split: Split,
    seed: int,
) -> list[TokenSequence]:
    """Sequences whose token counts follow the mixture weights, shuffled (seeded).

    Each source contributes `weight / sum(weights) * n_tokens` tokens, cycling through its
    documents (in a seeded order) when it has fewer; the sequences are then shuffled together.
    """
    total = sum(source.weight for source in mixture)
    rng = random.Random(seed)
    out: list[TokenSequence] = []
    for source in mixture:
        docs = list(documents(source.name, data_dir, split))
        if not docs:
            raise UserError(f"mixture source {source.name!r} has no {split} documents")
        rng.shuffle(docs)
        budget = int(source.weight / total * n_tokens)
        taken = 0
        index = 0
        while taken < budget:
            seq = tokenizer.encode(docs[index % len(docs)], source.name)
            index += 1
            if seq is not None:
                out.append(seq)
                taken += len(seq.input_ids)
            if index > 50 * len(docs) + 1000 and taken == 0:
                raise UserError(f"mixture source {source.name!r} yields no tokens")
    rng.shuffle(out)
    return out


def pad_batch(
    sequences: Sequence[TokenSequence], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `kinds` tensors (padding kind = PAD)."""
    width = max(len(seq.input_ids) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    kinds = torch.zeros((len(sequences), width), dtype=torch.int8)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq.input_ids)
        ids[row, :n] = torch.tensor(seq.input_ids)
        kinds[row, :n] = torch.tensor(seq.kinds, dtype=torch.int8)
        mask[row, :n] = 1
    return ids, mask, kinds
