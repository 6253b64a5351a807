"""Latent cards: what a selected latent reads and writes, as JSON and a self-contained HTML page.

Per latent: its top-activating contexts in held-out SAE-corpus text (chat and prose) and in
harmful and harmless prompts, with per-token activations for highlighting; the tokens its
decoder row promotes and suppresses through the final norm's gain and the unembedding (logit
lens); its cosine with the refusal direction; how often it fires on harmful vs harmless
prompts (share of prompts, share of prompt tokens after the template header).
"""

from __future__ import annotations

import heapq
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import schema
from .attribution import position_mask
from .data import PromptSet
from .direction import Direction
from .generation import length_sorted_batches
from .hooks import HookPoint, record
from .models import ChatFormatter, LoadedModel
from .runs import write_json
from .saes import SAESet
from .saes.mixture import MixtureSource, Tokenizer, pad_batch, sample_sequences

CORPUS = (
    MixtureSource("alpaca_eval", 0.3),
    MixtureSource("hh_rlhf", 0.3),
    MixtureSource("gutenberg", 0.4),
)


_TOKEN_LOGIT = schema.Test(
    lambda v: (
        isinstance(v, list)
        and len(v) == 2
        and isinstance(v[0], str)
        and not isinstance(v[1], bool)
        and isinstance(v[1], int | float)
    ),
    "a [token, logit] pair",
)
_CONTEXT = schema.Obj(
    required={
        "tokens": schema.ListOf(schema.Str()),
        "values": schema.ListOf(schema.Number()),
        "max": schema.Number(),
    }
)
CARD_SCHEMA = schema.Obj(
    required={
        "layer": schema.INDEX,
        "latent": schema.INDEX,
        "cosine_with_refusal_direction": schema.Number(),
        "fires_on": schema.Obj(
            required={
                name: schema.Number()
                for name in (
                    "harmful_prompts",
                    "harmless_prompts",
                    "harmful_tokens",
                    "harmless_tokens",
                )
            }
        ),
        "logit_lens": schema.Obj(
            required={
                "promotes": schema.ListOf(_TOKEN_LOGIT),
                "suppresses": schema.ListOf(_TOKEN_LOGIT),
            }
        ),
        "contexts": schema.DictOf(schema.ListOf(_CONTEXT)),
    }
)
CARDS_FILE_SCHEMA = schema.Obj(required={"cards": schema.ListOf(CARD_SCHEMA)})


@dataclass(frozen=True)
class CardSettings:
    n_contexts: int = field(default=5, metadata={"help": "top contexts shown per source"})
    window: int = field(default=12, metadata={"help": "tokens shown before each peak"})
    corpus_tokens: int = field(default=20_000, metadata={"help": "generic text tokens scanned"})
    n_logit_tokens: int = field(default=10, metadata={"help": "tokens in the logit lens"})
    n_prompts: int = field(default=64, metadata={"help": "harmful and harmless prompts each"})
    batch_size: int = 8
    seed: int = 0


class _TopContexts:
    """The n highest peaks per latent, with the token window around each."""

    def __init__(self, n_latents: int, n: int) -> None:
        self.heaps: list[list[tuple[float, int, dict[str, Any]]]] = [[] for _ in range(n_latents)]
        self.n = n
        self.counter = 0

    def wants(self, latent: int, value: float) -> bool:
        heap = self.heaps[latent]
        return len(heap) < self.n or value > heap[0][0]

    def add(self, latent: int, value: float, context: dict[str, Any]) -> None:
        heap = self.heaps[latent]
        self.counter += 1
        item = (value, self.counter, context)
        if len(heap) < self.n:
            heapq.heappush(heap, item)
        else:
            heapq.heapreplace(heap, item)

    def result(self, latent: int) -> list[dict[str, Any]]:
        return [item for _, _, item in sorted(self.heaps[latent], reverse=True)]


def _window(
    lm: LoadedModel, ids: list[int], values: list[float], peak: int, window: int
) -> dict[str, Any]:
    start, end = max(0, peak - window), min(len(ids), peak + 4)
    return {
        "tokens": [lm.tokenizer.decode([t]) for t in ids[start:end]],
        "values": [round(v, 4) for v in values[start:end]],
        "peak": peak - start,
        "max": round(values[peak], 4),
    }


def logit_lens(lm: LoadedModel, vector: torch.Tensor, n: int) -> dict[str, list[list[Any]]]:
    """Tokens a residual direction promotes / suppresses: unembedding of (gain * vector)."""
    unembed = lm.model.get_output_embeddings().weight.detach().float()
    gain = getattr(getattr(lm.model, "model", None), "norm", None)
    weight = getattr(gain, "weight", None)
    scaled = vector.float() * (weight.detach().float() if weight is not None else 1.0)
    logits = unembed @ scaled.to(unembed.device)
    top, bottom = logits.topk(n), (-logits).topk(n)
    return {
        "promotes": [
            [lm.tokenizer.decode([int(i)]), round(float(v), 3)] for v, i in zip(*top, strict=True)
        ],
        "suppresses": [
            [lm.tokenizer.decode([int(i)]), round(-float(v), 3)]
            for v, i in zip(*bottom, strict=True)
        ],
    }


def _offer_peaks(
    tops: _TopContexts,
    slot: int,
    column: torch.Tensor,
    rows: list[list[int]],
    lm: LoadedModel,
    window: int,
) -> None:
    """Offer each sequence's peak activation of one latent (`column`: `[batch, seq]`)."""
    for row, ids in enumerate(rows):
        peak = int(column[row].argmax())
        value = float(column[row, peak])
        if value > 0 and tops.wants(slot, value):
            tops.add(slot, value, _window(lm, ids, column[row].tolist(), peak, window))


@torch.inference_mode()
def _prompt_pass(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    by_layer: dict[int, list[int]],
    order: list[tuple[int, int]],
    prompts: PromptSet,
    settings: CardSettings,
    progress: bool,
) -> tuple[_TopContexts, torch.Tensor, torch.Tensor]:
    """Top contexts, share of prompts where each latent fires, share of prompt tokens."""
    tops = _TopContexts(len(order), settings.n_contexts)
    fired_prompts = torch.zeros(len(order))
    fired_tokens = torch.zeros(len(order))
    n_tokens = 0.0
    points = [HookPoint(layer, "resid_post") for layer in by_layer]
    texts = prompts.texts()
    for indices in tqdm(
        length_sorted_batches(texts, settings.batch_size),
        desc=f"cards: {prompts.name}",
        disable=not progress,
        unit="batch",
    ):
        batch = formatter.encode([texts[i] for i in indices]).to(lm.device)
        mask = position_mask(batch, formatter, "prompt").cpu()
        with record(lm.model, points) as acts:
            lm.model(**batch.forward_kwargs(), use_cache=False, logits_to_keep=1)
        n_tokens += float(mask.sum())
        for point in points:
            idx = torch.tensor(by_layer[point.layer])
            values = saes[point].encode_latents(acts[point][0].float(), idx).cpu() * mask.unsqueeze(
                -1
            )
            for local, latent in enumerate(by_layer[point.layer]):
                slot = order.index((point.layer, latent))
                column = values[..., local]
                fired_prompts[slot] += float((column.amax(dim=1) > 0).sum())
                fired_tokens[slot] += float((column > 0).sum())
                rows = [r.tolist() for r in batch.input_ids.cpu()]
                _offer_peaks(tops, slot, column, rows, lm, settings.window)
    return tops, fired_prompts / max(len(texts), 1), fired_tokens / max(n_tokens, 1.0)


@torch.inference_mode()
def _corpus_pass(
    lm: LoadedModel,
    saes: SAESet,
    by_layer: dict[int, list[int]],
    order: list[tuple[int, int]],
    data_dir: str | Path,
    settings: CardSettings,
    progress: bool,
) -> _TopContexts:
    tops = _TopContexts(len(order), settings.n_contexts)
    tok = Tokenizer(lm.tokenizer, context=128)
    seqs = sample_sequences(CORPUS, tok, settings.corpus_tokens, data_dir, "eval", settings.seed)
    points = [HookPoint(layer, "resid_post") for layer in by_layer]
    pad = lm.tokenizer.pad_token_id or 0
    for start in tqdm(
        range(0, len(seqs), settings.batch_size),
        desc="cards: corpus",
        disable=not progress,
        unit="batch",
    ):
        chunk = seqs[start : start + settings.batch_size]
        ids, attention, _ = pad_batch(chunk, pad)
        keep = attention.bool().clone()
        keep[:, 0] = False  # position 0 is an attention sink
        with record(lm.model, points) as acts:
            lm.model(
                input_ids=ids.to(lm.device),
                attention_mask=attention.to(lm.device),
                use_cache=False,
                logits_to_keep=1,
            )
        for point in points:
            idx = torch.tensor(by_layer[point.layer])
            values = saes[point].encode_latents(acts[point][0].float(), idx).cpu() * keep.unsqueeze(
                -1
            )
            for local, latent in enumerate(by_layer[point.layer]):
                slot = order.index((point.layer, latent))
                column = values[..., local]
                rows = [ids[r].tolist()[: int(attention[r].sum())] for r in range(len(chunk))]
                _offer_peaks(tops, slot, column, rows, lm, settings.window)
    return tops


def build_cards(
    lm: LoadedModel,
    formatter: ChatFormatter,
    saes: SAESet,
    latents: Sequence[tuple[int, int]],
    direction: Direction,
    harmful: PromptSet,
    harmless: PromptSet,
    *,
    data_dir: str | Path | None = None,
    settings: CardSettings = CardSettings(),
    progress: bool = True,
) -> list[dict[str, Any]]:
    order = list(dict.fromkeys(latents))
    by_layer: dict[int, list[int]] = {}
    for layer, latent in order:
        by_layer.setdefault(layer, []).append(latent)
    harm_top, harm_prompts, harm_tokens = _prompt_pass(
        lm, formatter, saes, by_layer, order, harmful, settings, progress
    )
    safe_top, safe_prompts, safe_tokens = _prompt_pass(
        lm, formatter, saes, by_layer, order, harmless, settings, progress
    )
    corpus = (
        _corpus_pass(lm, saes, by_layer, order, data_dir, settings, progress)
        if data_dir is not None
        else None
    )
    unit = direction.vector.float() / direction.vector.float().norm()
    cards = []
    for slot, (layer, latent) in enumerate(order):
        row = saes[HookPoint(layer, "resid_post")].W_dec[latent].detach().float()
        cards.append(
            {
                "layer": layer,
                "latent": latent,
                "cosine_with_refusal_direction": round(float(row @ unit / row.norm()), 4),
                "fires_on": {
                    "harmful_prompts": round(float(harm_prompts[slot]), 4),
                    "harmless_prompts": round(float(safe_prompts[slot]), 4),
                    "harmful_tokens": round(float(harm_tokens[slot]), 4),
                    "harmless_tokens": round(float(safe_tokens[slot]), 4),
                },
                "logit_lens": logit_lens(lm, row, settings.n_logit_tokens),
                "contexts": {
                    "corpus": corpus.result(slot) if corpus is not None else [],
                    harmful.name: harm_top.result(slot),
                    harmless.name: safe_top.result(slot),
                },
            }
        )
    return cards


def write_cards(cards: list[dict[str, Any]], folder: str | Path, title: str) -> tuple[Path, Path]:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "cards.json", {"title": title, "cards": cards})
    page = out / "cards.html"
    page.write_text(render_html(cards, title), encoding="utf-8")
    return out / "cards.json", page


def _context_html(context: dict[str, Any]) -> str:
    top = max(context["max"], 1e-6)
    spans = []
    for token, value in zip(context["tokens"], context["values"], strict=True):
        alpha = max(0.0, min(1.0, value / top))
        spans.append(
            f'<span style="background:rgba(220,50,47,{alpha:.2f})" title="{value:.3f}">'
            f"{html.escape(token).replace(chr(10), '&#8629;')}</span>"
        )
    return f'<div class="ctx"><b>{context["max"]:.2f}</b> {"".join(spans)}</div>'


def card_fragments(cards: list[dict[str, Any]]) -> str:
    """The cards as HTML divs (what the standalone page and the report both show)."""
    parts = []
    for card in cards:
        fires = card["fires_on"]
        lens = card["logit_lens"]
        parts.append(f"<div class='card'><h3>layer {card['layer']}, latent {card['latent']}</h3>")
        parts.append(
            f"<p>cosine with the refusal direction {card['cosine_with_refusal_direction']:.3f}; "
            f"fires on {fires['harmful_prompts']:.0%} of harmful and "
            f"{fires['harmless_prompts']:.0%} of harmless prompts "
            f"({fires['harmful_tokens']:.1%} / {fires['harmless_tokens']:.1%} of their tokens)</p>"
        )
        promotes = ", ".join(
            f"<span class='tok'>{html.escape(t)!r}</span>" for t, _ in lens["promotes"]
        )
        suppresses = ", ".join(
            f"<span class='tok'>{html.escape(t)!r}</span>" for t, _ in lens["suppresses"]
        )
        parts.append(f"<p>promotes: {promotes}<br>suppresses: {suppresses}</p>")
        for name, contexts in card["contexts"].items():
            if contexts:
                parts.append(f"<h4>{html.escape(name)}</h4>")
                parts.extend(_context_html(c) for c in contexts)
        parts.append("</div>")
    return "\n".join(parts)


def render_html(cards: list[dict[str, Any]], title: str) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}",
        ".card{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}",
        ".ctx{font-family:monospace;white-space:pre-wrap;margin:.2em 0;font-size:13px}",
        "td,th{padding:2px 8px;text-align:left}.tok{font-family:monospace}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>Research material: contexts include harmful prompts.</p>",
        card_fragments(cards),
        "</body></html>",
    ]
    return "\n".join(parts)
