"""Activations for SAE training: one truncated forward pass for all layers, masks, a disk cache.

`collect_activations` runs the model over mixture sequences, records the residual stream at every
chosen layer in the same pass and stops the forward right after the highest one (upper layers
and the unembedding never run). Masked tokens (padding, position 0 and other attention sinks,
the fixed system header, and any token kinds the user drops) are removed; post-instruction
tokens can be repeated so the SAEs see the refusal positions often. Shards are written to a
cache folder as they are computed (`index.json` + `shard_NNNNN.safetensors`), so an interrupted
collection resumes at the next shard and a second training run reuses the cache.

`ActivationCache.batches` then yields shuffled training batches: per epoch a seeded shard order,
shards loaded a group at a time into a shuffling buffer. The order depends only on (seed, step),
which is what makes a resumed training run end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import UserError
from ..executors.base import Executor
from ..executors.codec import pack, unpack
from ..hooks import HookPoint, add_hooks, parse_hook_point
from ..models import LoadedModel
from ..runs import stable_hash, write_json
from .mixture import MixtureSource, Split, Tokenizer, TokenKind, TokenSequence, pad_batch
from .mixture import sample_sequences as _sample

log = logging.getLogger(__name__)

CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
BUFFER_BYTES = 3 << 29  # 1.5 GiB of activations in the shuffling buffer
SHARD_BYTES = 3 << 27  # 384 MiB per shard (65,536 tokens for 3 layers of d_model 896 in fp16)


@dataclass(frozen=True)
class TokenMask:
    drop_first: bool = True  # position 0 is an attention sink with a huge norm
    sink_factor: float = 10.0  # drop tokens whose norm exceeds this x the median (0: keep)
    drop_system_header: bool = True
    drop_kinds: tuple[str, ...] = ()  # any of template, user, assistant, post_instruction, prose
    post_instruction_repeat: int = 1  # >1 repeats the post-instruction tokens in the stream

    def __post_init__(self) -> None:
        known = {kind.name.lower() for kind in TokenKind} - {"pad", "system_header"}
        unknown = [kind for kind in self.drop_kinds if kind not in known]
        if unknown:
            raise UserError(
                f"unknown token kind(s) {unknown} to drop; known: {', '.join(sorted(known))}"
            )
        if self.post_instruction_repeat < 1:
            raise UserError("post_instruction_repeat must be >= 1")

    def keep(self, kinds: torch.Tensor) -> torch.Tensor:
        """Boolean mask of tokens to keep, from their kinds alone."""
        keep = kinds != int(TokenKind.PAD)
        if self.drop_first:
            keep[:, 0] = False
        if self.drop_system_header:
            keep &= kinds != int(TokenKind.SYSTEM_HEADER)
        for name in self.drop_kinds:
            keep &= kinds != int(TokenKind[name.upper()])
        return keep


class _Stop(Exception):
    """Raised after the highest recorded layer: the rest of the forward pass is skipped."""


def truncated_forward(
    lm: LoadedModel,
    points: Sequence[HookPoint],
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    **kwargs: Any,
) -> dict[HookPoint, torch.Tensor]:
    """Residual activations at `points` for one right-padded batch, stopping after the last
    (`kwargs`, e.g. a KV cache and position ids, go to the model's forward)."""
    store: dict[HookPoint, torch.Tensor] = {}
    last = max(points, key=lambda p: (p.layer, p.kind != "resid_pre"))

    def reader(act: torch.Tensor, point: HookPoint) -> None:
        store[point] = act.detach().cpu()
        if point == last:
            raise _Stop

    device = lm.device
    hooks = [(p, reader) for p in points]
    with torch.inference_mode(), add_hooks(lm.model, hooks), contextlib.suppress(_Stop):
        kwargs.setdefault("use_cache", False)
        lm.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs)
    return store


class SharedPrefix:
    """The leading tokens every chat row starts with and the mask drops (the template's fixed
    system turn): their keys and values are computed once, truncated like the rows' forward,
    and every row that starts with them runs only its own tokens on top (`forward`). Their
    activations were dropped anyway, so what is collected is unchanged; the compute is not
    (the system turn is about a quarter of the default mixture's tokens)."""

    def __init__(self, lm: LoadedModel, points: Sequence[HookPoint], ids: list[int]) -> None:
        self.lm = lm
        self.points = list(points)
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.id_list = list(ids)
        self._cache: Any = None

    @classmethod
    def of(
        cls,
        lm: LoadedModel,
        points: Sequence[HookPoint],
        sequences: Sequence[TokenSequence],
        mask: TokenMask,
    ) -> SharedPrefix | None:
        """The system-turn prefix of the first chat row, when the mask drops it (None: no
        row has one, or the mask keeps it)."""
        if not mask.drop_system_header:
            return None
        header = int(TokenKind.SYSTEM_HEADER)
        for seq in sequences:
            n = 0
            while n < len(seq.kinds) and seq.kinds[n] == header:
                n += 1
            if n:
                return cls(lm, points, list(seq.input_ids[:n]))
        return None

    def starts(self, seq: TokenSequence) -> bool:
        """Whether the row starts with the prefix (and has tokens of its own after it)."""
        n = self.ids.numel()
        header = int(TokenKind.SYSTEM_HEADER)
        return (
            len(seq.input_ids) > n
            and list(seq.input_ids[:n]) == self.id_list
            and all(kind == header for kind in seq.kinds[:n])
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[HookPoint, torch.Tensor]:
        """Activations at the points for a right-padded batch of rows WITHOUT the prefix, as
        if each row were preceded by it."""
        import copy

        from transformers import DynamicCache

        from ..models.cache import cache_argument

        device = self.lm.device
        argument = cache_argument(self.lm.model)
        n = self.ids.numel()
        if self._cache is None:
            cache = DynamicCache(config=self.lm.model.config)
            truncated_forward(
                self.lm,
                self.points,
                self.ids.unsqueeze(0),
                torch.ones(1, n, dtype=torch.long),
                use_cache=True,
                **{argument: cache},
            )
            self._cache = cache
        cache = copy.deepcopy(self._cache)
        cache.batch_repeat_interleave(ids.shape[0])
        attention = torch.cat([torch.ones(ids.shape[0], n, dtype=mask.dtype), mask], 1)
        positions = n + torch.arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)
        return truncated_forward(
            self.lm,
            self.points,
            ids,
            attention,
            use_cache=True,
            position_ids=positions.to(device),
            **{argument: cache},
        )


def forward_batch(
    lm: LoadedModel,
    points: Sequence[HookPoint],
    batch: Sequence[TokenSequence],
    pad_id: int,
    prefix: SharedPrefix | None,
) -> tuple[dict[HookPoint, torch.Tensor], torch.Tensor, torch.Tensor]:
    """`(activations, attention_mask, kinds)` of one right-padded batch, the rows that start
    with the shared prefix run on top of its cached keys and values (their prefix positions
    hold zeros and the kind PAD: nothing there is ever kept)."""
    ids, attn, kinds = pad_batch(batch, pad_id)
    rows = [r for r, seq in enumerate(batch) if prefix is not None and prefix.starts(seq)]
    if prefix is None or not rows:
        return truncated_forward(lm, points, ids, attn), attn, kinds
    n = prefix.ids.numel()
    shared_rows = set(rows)
    others = [r for r in range(len(batch)) if r not in shared_rows]
    acts = {p: torch.zeros(*ids.shape, lm.d_model, dtype=lm.dtype) for p in points}
    width = max(len(batch[r].input_ids) for r in rows) - n
    shared = prefix.forward(ids[rows, n : n + width], attn[rows, n : n + width])
    for point in points:
        acts[point][rows, n : n + width] = shared[point].to(lm.dtype)
    if others:
        width = max(len(batch[r].input_ids) for r in others)
        plain = truncated_forward(lm, points, ids[others, :width], attn[others, :width])
        for point in points:
            acts[point][others, :width] = plain[point].to(lm.dtype)
    kinds = kinds.clone()
    kinds[rows, :n] = int(TokenKind.PAD)
    return acts, attn, kinds


def _sink_mask(
    acts: dict[HookPoint, torch.Tensor], keep: torch.Tensor, factor: float
) -> torch.Tensor:
    if factor <= 0:
        return keep
    for act in acts.values():
        norms = act.float().norm(dim=-1)
        median = norms[keep].median() if keep.any() else norms.median()
        keep = keep & (norms <= factor * median)
    return keep


@dataclass
class CollectionSpec:
    """Everything that determines a cache's content (its key)."""

    model: dict[str, Any]
    points: list[str]
    mixture: list[dict[str, Any]]
    n_tokens: int
    context: int
    mask: dict[str, Any]
    split: str
    seed: int
    dtype: str
    batch_size: int
    model_dtype: str
    system: str | None = None
    version: int = 2

    def key(self) -> str:
        return stable_hash(asdict(self))


@dataclass
class ActivationCache:
    folder: Path
    index: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, folder: str | Path) -> ActivationCache:
        path = Path(folder)
        index_file = path / "index.json"
        if not index_file.exists():
            raise UserError(f"no activation cache at {path} (index.json missing)")
        return cls(path, json.loads(index_file.read_text()))

    @property
    def points(self) -> list[str]:
        return list(self.index["points"])

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.index["shards"])

    @property
    def n_tokens(self) -> int:
        return sum(int(s["n_tokens"]) for s in self.shards)

    @property
    def complete(self) -> bool:
        return bool(self.index.get("complete"))

    def load_shard(self, number: int) -> dict[str, torch.Tensor]:
        path = self.folder / self.shards[number]["file"]
        try:
            return load_file(path)
        except (SafetensorError, OSError) as exc:
            raise UserError(
                f"activation shard {path} is unreadable ({str(exc).splitlines()[0]}); delete "
                "the cache folder and collect again"
            ) from exc

    def sample(self, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """Up to `n` rows from at most 8 evenly spread shards (initialisation, normalisation)."""
        if self.n_tokens == 0:
            raise UserError(
                f"the activation cache {self.folder} holds no tokens; the token masks removed "
                "everything (check --drop-kinds) or the collection was empty"
            )
        gen = torch.Generator().manual_seed(seed)
        count = len(self.shards)
        numbers = (
            sorted({round(i * (count - 1) / 7) for i in range(8)}) if count > 8 else range(count)
        )
        per_shard = max(1, n // len(numbers))
        parts: dict[str, list[torch.Tensor]] = {p: [] for p in self.points}
        for number in numbers:
            shard = self.load_shard(number)
            rows = torch.randperm(shard[self.points[0]].shape[0], generator=gen)[:per_shard]
            for point in self.points:
                parts[point].append(shard[point][rows].float())
        return {point: torch.cat(chunks)[:n] for point, chunks in parts.items()}

    def row_bytes(self) -> int:
        """Bytes of one token's activations over all points."""
        with safe_open(self.folder / self.shards[0]["file"], "pt") as handle:
            one = handle.get_slice(self.points[0])
            width = int(one.get_shape()[1])
            itemsize = CACHE_DTYPES.get(_SAFETENSORS_DTYPES.get(one.get_dtype(), ""), torch.float32)
        return len(self.points) * width * torch.tensor([], dtype=itemsize).element_size()

    def batches(
        self,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Endless shuffled batches (epochs repeat), starting at batch `start_step`.

        Per epoch: a seeded shard order; shards are loaded a group at a time (up to
        `buffer_bytes`) and shuffled together.
        """
        sizes = [int(s["n_tokens"]) for s in self.shards]
        buffer_tokens = max(batch_size, buffer_bytes // self.row_bytes())
        if sum(sizes) < batch_size:
            raise UserError(
                f"the activation cache holds {sum(sizes)} tokens, fewer than one batch of "
                f"{batch_size}; collect more tokens or lower --batch-size"
            )
        step = 0
        epoch = 0
        while True:
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = torch.randperm(len(sizes), generator=gen).tolist()
            for group in _groups(order, sizes, buffer_tokens):
                n_rows = sum(sizes[i] for i in group)
                perm = torch.randperm(n_rows, generator=gen)
                n_batches = n_rows // batch_size
                if step + n_batches <= start_step:
                    step += n_batches
                    continue
                buffer = self._load_group(group)
                for b in range(n_batches):
                    if step >= start_step:
                        rows = perm[b * batch_size : (b + 1) * batch_size]
                        yield {point: buffer[point][rows].float() for point in self.points}
                    step += 1
            epoch += 1

    def _load_group(self, group: list[int]) -> dict[str, torch.Tensor]:
        loaded = [self.load_shard(number) for number in group]
        return {point: torch.cat([shard[point] for shard in loaded]) for point in self.points}


def _groups(order: list[int], sizes: list[int], buffer_tokens: int) -> Iterator[list[int]]:
    group: list[int] = []
    filled = 0
    for number in order:
        group.append(number)
        filled += sizes[number]
        if filled >= buffer_tokens:
            yield group
            group, filled = [], 0
    if group:
        yield group


def _length_batches(seqs: list[TokenSequence], batch: int) -> list[list[TokenSequence]]:
    """Batches of similar length (less padding), in a deterministic order."""
    chunks = []
    window = batch * 16
    for start in range(0, len(seqs), window):
        block = sorted(seqs[start : start + window], key=lambda s: len(s.input_ids))
        chunks.extend(block[i : i + batch] for i in range(0, len(block), batch))
    return chunks


def collect_activations(
    lm: LoadedModel,
    points: Sequence[HookPoint],
    folder: str | Path,
    *,
    mixture: Sequence[MixtureSource],
    n_tokens: int,
    data_dir: str | Path | None = None,
    split: Split = "train",
    context: int = 256,
    batch_size: int = 16,
    shard_tokens: int | None = None,
    mask: TokenMask | None = None,
    seed: int = 0,
    dtype: str = "float16",
    system: str | None = None,
    progress: bool = True,
    shared_prefix: bool = True,
    executor: Executor | None = None,
) -> ActivationCache:
    """Collect (or resume collecting, or reuse) `n_tokens` kept activations per point.
    `shared_prefix`: run the system turn every chat row starts with once (`SharedPrefix`);
    what is collected is the same either way, up to float rounding. `executor`: where the
    forwards run (default: here), `COLLECT_BATCHES` batches per work item; only this process
    writes the cache, in batch order, so its shards are the ones a local run writes."""
    if n_tokens <= 0:
        raise UserError("the number of tokens to collect must be positive")
    if dtype not in CACHE_DTYPES:
        raise UserError(f"unknown cache dtype {dtype!r}; use one of {', '.join(CACHE_DTYPES)}")
    mask = mask or TokenMask()
    spec = CollectionSpec(
        model={"name": lm.name, "weights_sha256": lm.weights_sha256},
        points=[p.name for p in points],
        mixture=[asdict(s) for s in mixture],
        n_tokens=n_tokens,
        context=context,
        mask=asdict(mask),
        split=split,
        seed=seed,
        dtype=dtype,
        batch_size=batch_size,
        model_dtype=str(lm.dtype).removeprefix("torch."),
        system=system,
    )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cache = _open_or_start(out, spec)
    if cache.complete:
        return cache

    if shard_tokens is None:
        row = len(points) * lm.d_model * torch.tensor([], dtype=CACHE_DTYPES[dtype]).element_size()
        shard_tokens = max(1024, min(65_536, SHARD_BYTES // row))
    tok = Tokenizer(lm.tokenizer, context=context, system=system)
    # Sample more raw tokens than needed: masks remove some (header, sinks, position 0).
    sequences = _sample(mixture, tok, int(n_tokens * 1.3) + 4096, data_dir, split, seed)
    batches = _length_batches(sequences, batch_size)
    done_batches = int(cache.index.get("batches_done", 0))
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    pending: dict[str, list[torch.Tensor]] = {p.name: [] for p in points}
    pending_kinds: list[torch.Tensor] = []
    collected = cache.n_tokens
    bar = tqdm(
        total=n_tokens, initial=collected, unit="tok", desc="activations", disable=not progress
    )
    prefix = SharedPrefix.of(lm, points, sequences, mask) if shared_prefix else None

    def add(number: int, rows: dict[str, torch.Tensor], kinds: torch.Tensor) -> bool:
        """Batch `number`'s rows, in batch order; False once enough tokens are collected."""
        nonlocal collected
        for point in points:
            pending[point.name].append(rows[point.name])
        pending_kinds.append(kinds)
        collected += int(kinds.shape[0])
        bar.update(int(kinds.shape[0]))
        if sum(t.shape[0] for t in pending_kinds) >= shard_tokens or collected >= n_tokens:
            _write_shard(cache, pending, pending_kinds, number + 1)
        return collected < n_tokens

    todo = range(done_batches, len(batches)) if collected < n_tokens else range(0)
    if executor is None:
        for number in todo:
            rows, kinds = collect_batch(lm, points, batches[number], pad_id, prefix, mask, dtype)
            if not add(number, rows, kinds):
                break
    else:
        shared = {
            "points": [p.name for p in points],
            "pad_id": pad_id,
            "prefix": None if prefix is None else prefix.id_list,
            "mask": asdict(mask),
            "dtype": dtype,
        }
        _collect_on(executor, shared, batches, list(todo), add)
    if pending_kinds:
        _write_shard(cache, pending, pending_kinds, len(batches))
    bar.close()
    if cache.n_tokens < n_tokens:
        log.warning(
            "the mixture gave %d tokens after masking, fewer than the %d asked for",
            cache.n_tokens,
            n_tokens,
        )
    cache.index["complete"] = True
    write_json(out / "index.json", cache.index)
    return cache


def collect_batch(
    lm: LoadedModel,
    points: Sequence[HookPoint],
    batch: Sequence[TokenSequence],
    pad_id: int,
    prefix: SharedPrefix | None,
    mask: TokenMask,
    dtype: str,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One batch's kept activations per point, as the cache stores them (masked, sinks
    dropped, post-instruction tokens repeated, in `dtype`), and their token kinds."""
    acts, _, kinds = forward_batch(lm, points, batch, pad_id, prefix)
    keep = _sink_mask(acts, mask.keep(kinds), mask.sink_factor)
    repeat = _repeats(kinds, keep, mask.post_instruction_repeat)
    rows: dict[str, torch.Tensor] = {}
    for point in points:
        kept = acts[point][keep].float()
        if not torch.isfinite(kept).all():
            raise UserError(
                f"non-finite activations at {point.name}; load the model in float32 "
                "(--dtype float32)"
            )
        stored = kept.to(CACHE_DTYPES[dtype])
        if not torch.isfinite(stored).all():
            raise UserError(
                f"activations at {point.name} overflow {dtype}; use --cache-dtype float32"
            )
        rows[point.name] = stored.repeat_interleave(repeat, dim=0)
    return rows, kinds[keep].repeat_interleave(repeat)


def collect_item(
    lm: LoadedModel, shared: dict[str, Any], batches: list[list[dict[str, Any]]], prefix: Any
) -> dict[str, str]:
    """A work item of collection: `collect_batch` over a few batches, packed for the driver
    (`{batch}/{point}` and `{batch}/kinds`)."""
    points = [parse_hook_point(name) for name in shared["points"]]
    mask = TokenMask(**shared["mask"])
    out: dict[str, torch.Tensor] = {}
    for b, rows in enumerate(batches):
        batch = [TokenSequence(r["input_ids"], r["kinds"], r["source"]) for r in rows]
        tensors, kinds = collect_batch(
            lm, points, batch, shared["pad_id"], prefix, mask, shared["dtype"]
        )
        out.update({f"{b}/{name}": t for name, t in tensors.items()})
        out[f"{b}/kinds"] = kinds
    return pack(out)


COLLECT_BATCHES = 4  # batches per work item of collection


def _collect_on(
    executor: Executor,
    shared: dict[str, Any],
    batches: list[list[TokenSequence]],
    todo: list[int],
    add: Callable[[int, dict[str, torch.Tensor], torch.Tensor], bool],
) -> None:
    """Rounds of work items (twice as many as the executor has workers, so little is computed
    past the last batch needed), whose batches are added in batch order as they arrive."""
    per_round = 2 * executor.parallelism
    arrived: dict[int, tuple[dict[str, torch.Tensor], torch.Tensor]] = {}
    position = 0  # the next batch of `todo` to add
    while position < len(todo):
        numbers = todo[position : position + per_round * COLLECT_BATCHES]
        items = [
            {
                "batches": [
                    [asdict(seq) for seq in batches[n]] for n in numbers[i : i + COLLECT_BATCHES]
                ]
            }
            for i in range(0, len(numbers), COLLECT_BATCHES)
        ]
        going = True

        def finished(index: int, result: Any, numbers: list[int] = numbers) -> None:
            nonlocal position, going
            tensors = unpack(result)
            for b in range(min(COLLECT_BATCHES, len(numbers) - index * COLLECT_BATCHES)):
                rows = {
                    name.split("/", 1)[1]: t
                    for name, t in tensors.items()
                    if name.startswith(f"{b}/") and not name.endswith("/kinds")
                }
                arrived[numbers[index * COLLECT_BATCHES + b]] = (rows, tensors[f"{b}/kinds"])
            while going and position < len(todo) and todo[position] in arrived:
                going = add(todo[position], *arrived.pop(todo[position]))
                position += 1

        executor.map("collect", shared, items, finished, desc="activations", bar=False)
        if not going:
            return


def _repeats(kinds: torch.Tensor, keep: torch.Tensor, factor: int) -> torch.Tensor:
    kept = kinds[keep]
    repeat = torch.ones_like(kept, dtype=torch.long)
    repeat[kept == int(TokenKind.POST_INSTRUCTION)] = factor
    return repeat


def _open_or_start(out: Path, spec: CollectionSpec) -> ActivationCache:
    index_file = out / "index.json"
    key = spec.key()
    if index_file.exists():
        cache = ActivationCache.open(out)
        if cache.index.get("key") == key:
            return cache
        raise UserError(
            f"{out} holds activations collected with other settings (model, layers, mixture or "
            "tokens); pick another cache folder or delete it"
        )
    index = {
        "key": key,
        "spec": asdict(spec),
        "points": spec.points,
        "shards": [],
        "batches_done": 0,
        "complete": False,
    }
    write_json(index_file, index)
    return ActivationCache(out, index)


def _write_shard(
    cache: ActivationCache,
    pending: dict[str, list[torch.Tensor]],
    pending_kinds: list[torch.Tensor],
    batches_done: int,
) -> None:
    if not pending_kinds:
        return
    number = len(cache.index["shards"])
    name = f"shard_{number:05d}.safetensors"
    tensors = {point: torch.cat(chunks).contiguous() for point, chunks in pending.items()}
    tensors["kinds"] = torch.cat(pending_kinds).contiguous()
    tmp = cache.folder / (name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, cache.folder / name)
    cache.index["shards"].append(
        {"file": name, "n_tokens": int(tensors["kinds"].shape[0]), "batches_done": batches_done}
    )
    cache.index["batches_done"] = batches_done
    write_json(cache.folder / "index.json", cache.index)
    for chunks in pending.values():
        chunks.clear()
    pending_kinds.clear()


def cache_from_tensors(
    folder: str | Path, activations: dict[str, torch.Tensor], shard_tokens: int = 65_536
) -> ActivationCache:
    """An activation cache from in-memory tensors (same rows for every point): synthetic data,
    activations computed elsewhere, benchmarks."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    points = list(activations)
    n = activations[points[0]].shape[0]
    if n == 0 or any(t.shape[0] != n for t in activations.values()):
        raise UserError("activation tensors must be non-empty with the same number of rows")
    cache = ActivationCache(out, {"key": None, "points": points, "shards": [], "complete": False})
    for start in range(0, n, shard_tokens):
        pending = {p: [t[start : start + shard_tokens]] for p, t in activations.items()}
        kinds = [torch.zeros(min(shard_tokens, n - start), dtype=torch.int8)]
        _write_shard(cache, pending, kinds, 0)
    cache.index["complete"] = True
    write_json(out / "index.json", cache.index)
    return cache
