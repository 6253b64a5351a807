"""How good an SAE set is, on held-out text and at the refusal positions.

Per hook point and per evaluation set (held-out generic prose, held-out chat, and the
post-instruction positions of held-out harmful and harmless requests, reported separately):
FVU, L0, dead latents (never fire on the evaluation tokens), dense latents (fire on more than
10% of them). On the text sets also: cross-entropy loss recovered when the reconstruction
replaces the residual stream (against zero- and mean-ablation), KL from the clean next-token
distribution, and an identity check on the first batch (reconstruction + `error(x)` spliced
back gives the clean loss). Across
the request sets: the cosine between the refusal direction (difference in means at the last
template token) computed from clean activations and from reconstructions.

Splicing replaces the activations of the tokens the SAEs were trained on (the same `TokenMask`;
position 0, the fixed system header and padding keep their clean values) and every loss is
averaged over real next tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..hooks import HookPoint, add_hooks
from ..models import LoadedModel
from ..models.partial import LayerCalls
from .activations import TokenMask, _length_batches, _sink_mask, truncated_forward
from .mixture import (
    MixtureSource,
    Tokenizer,
    TokenKind,
    documents,
    pad_batch,
    sample_sequences,
)
from .sets import SAESet

TEXT_SETS: dict[str, tuple[MixtureSource, ...]] = {
    "generic": (MixtureSource("gutenberg", 1.0),),
    "chat": (
        MixtureSource("alpaca_eval", 0.5),
        MixtureSource("gpteacher", 0.2),
        MixtureSource("hh_rlhf", 0.3),
    ),
}
REQUEST_SETS = {"harmful_post": "harmful_requests", "harmless_post": "harmless_requests"}


@dataclass
class _Accumulator:
    n: int = 0
    sq_err: float = 0.0
    sum_x: torch.Tensor | None = None
    sum_sq: float = 0.0
    l0: float = 0.0
    fires: torch.Tensor | None = None  # per-latent count of tokens it fired on

    def add(self, x: torch.Tensor, recon: torch.Tensor, latents: torch.Tensor) -> None:
        x64 = x.double()
        self.n += x.shape[0]
        self.sq_err += float((x - recon).double().pow(2).sum())
        self.sum_x = x64.sum(0) if self.sum_x is None else self.sum_x + x64.sum(0)
        self.sum_sq += float(x64.pow(2).sum())
        active = latents > 0
        self.l0 += float(active.sum())
        counts = active.sum(0).long()
        self.fires = counts if self.fires is None else self.fires + counts

    def metrics(self, fired: dict[str, torch.Tensor] | None = None, key: str = "") -> dict:
        if self.n == 0 or self.sum_x is None:
            return {"tokens": 0}
        if fired is not None:
            union = fired.get(key)
            fired[key] = self.fires > 0 if union is None else union | (self.fires > 0)
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.n
        freq = self.fires.double() / self.n
        return {
            "tokens": self.n,
            "fvu": self.sq_err / max(total_var, 1e-12),
            "l0": self.l0 / self.n,
            "dead_frac": float((self.fires == 0).double().mean()),
            "dense_frac": float((freq > 0.1).double().mean()),
        }


def _next_token_loss(logits: torch.Tensor, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-position loss of predicting the next real token ([batch, seq-1]), 0 elsewhere."""
    targets = ids[:, 1:]
    valid = real[:, 1:] & real[:, :-1]
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none"
    )
    return loss.view_as(targets) * valid


def _splice(point: HookPoint, keep: torch.Tensor, new: torch.Tensor):
    def hook(act: torch.Tensor, _point: HookPoint) -> torch.Tensor:
        out = act.clone()
        out[keep.to(act.device)] = new.to(device=act.device, dtype=act.dtype)
        return out

    return [(point, hook)]


def _forward(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, hooks: list) -> torch.Tensor:
    with torch.inference_mode(), add_hooks(lm.model, hooks):
        out = lm.model(
            input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False
        )
    return out.logits.float().cpu()


def _logits_after(
    calls: LayerCalls,
    point: HookPoint,
    clean: torch.Tensor,
    keep: torch.Tensor,
    new: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """Logits with `new` spliced into `point`, rerunning only the layers above it."""
    hidden = clean.to(device).clone()
    hidden[keep.to(device)] = new.to(device=device, dtype=hidden.dtype)
    return calls.logits_after(point.layer, hidden).float().cpu()


def _kl(clean: torch.Tensor, new: torch.Tensor, valid: torch.Tensor) -> float:
    """Summed KL(clean || new) of the next-token distributions over the `valid` positions."""
    p = F.log_softmax(clean.float(), -1)
    q = F.log_softmax(new.float(), -1)
    kl = (p.exp() * (p - q)).sum(-1)
    return float((kl * valid).sum())


def evaluate_text_set(
    lm: LoadedModel,
    saes: SAESet,
    name: str,
    n_tokens: int,
    data_dir: str | Path | None,
    mask: TokenMask,
    batch_size: int = 8,
    context: int = 256,
    seed: int = 0,
    progress: bool = True,
    fired: dict[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, Any]]:
    tok = Tokenizer(lm.tokenizer, context=context)
    seqs = sample_sequences(TEXT_SETS[name], tok, n_tokens, data_dir, "eval", seed)
    points = saes.points
    acc = {p: _Accumulator() for p in points}
    losses: dict[str, dict[HookPoint, float]] = {
        k: dict.fromkeys(points, 0.0) for k in ("recon", "zero", "mean")
    }
    kl_sum = dict.fromkeys(points, 0.0)
    clean_loss = 0.0
    n_targets = 0
    identity_gap = dict.fromkeys(points, 0.0)
    pad = lm.tokenizer.pad_token_id or 0
    means = _means(lm, saes, seqs[: 4 * batch_size], mask, pad)
    calls = LayerCalls(lm.model)
    partial: bool | None = None
    batches = _length_batches(seqs, batch_size)
    for number, batch in enumerate(tqdm(batches, desc=f"eval {name}", disable=not progress)):
        ids, attn, kinds = pad_batch(batch, pad)
        real = attn.bool()
        acts = _record_full(lm, points, ids, attn, calls)
        clean_logits = acts.pop("logits")
        if partial is None:  # checked once: can the upper layers be rerun on their own?
            first = points[0]
            partial = all(p.kind == "resid_post" for p in points) and calls.matches_full_forward(
                first.layer, acts[first].to(lm.device), clean_logits.to(lm.device), real
            )
        keep = _sink_mask({p: acts[p] for p in points}, mask.keep(kinds), mask.sink_factor)
        clean = _next_token_loss(clean_logits, ids, real)
        clean_loss += float(clean.sum())
        valid = real[:, 1:] & real[:, :-1]
        n_targets += int(valid.sum())
        for point in points:
            sae = saes[point]
            x = acts[point][keep].float()
            with torch.no_grad():
                latents, recon = sae.encode_and_reconstruct(x)
            acc[point].add(x, recon, latents)
            variants = {
                "recon": recon,
                "zero": torch.zeros_like(x),
                "mean": means[point].expand_as(x),
            }
            for variant, new in variants.items():
                if partial:
                    logits = _logits_after(calls, point, acts[point], keep, new, lm.device)
                else:
                    logits = _forward(lm, ids, attn, _splice(point, keep, new))
                losses[variant][point] += float(_next_token_loss(logits, ids, real).sum())
                if variant == "recon":
                    kl_sum[point] += _kl(clean_logits[:, :-1], logits[:, :-1], valid)
            if number == 0:  # the identity check: reconstruction + error spliced back = clean
                logits = _forward(lm, ids, attn, _splice(point, keep, recon + sae.error(x)))
                spliced = float(_next_token_loss(logits, ids, real).sum())
                identity_gap[point] = abs(spliced - float(clean.sum())) / max(int(valid.sum()), 1)
    out: dict[str, dict[str, Any]] = {}
    ce_clean = clean_loss / max(n_targets, 1)
    for point in points:
        ce = {k: losses[k][point] / max(n_targets, 1) for k in losses}
        out[point.name] = {
            **acc[point].metrics(fired, point.name),
            "ce_clean": ce_clean,
            "ce_recon": ce["recon"],
            "ce_zero_ablation": ce["zero"],
            "ce_mean_ablation": ce["mean"],
            "ce_recovered_zero": _recovered(ce_clean, ce["recon"], ce["zero"]),
            "ce_recovered_mean": _recovered(ce_clean, ce["recon"], ce["mean"]),
            "kl_recon": kl_sum[point] / max(n_targets, 1),
            "identity_loss_gap": identity_gap[point],
            "identity_ok": identity_gap[point] < 1e-3,
        }
    return out


def _recovered(clean: float, recon: float, ablated: float) -> float:
    return (ablated - recon) / (ablated - clean) if ablated != clean else float("nan")


def _record_full(
    lm: LoadedModel,
    points: Sequence[HookPoint],
    ids: torch.Tensor,
    mask: torch.Tensor,
    calls: LayerCalls,
) -> dict[Any, torch.Tensor]:
    store: dict[Any, torch.Tensor] = {}

    def reader(act: torch.Tensor, point: HookPoint) -> None:
        store[point] = act.detach().cpu().clone()

    device = lm.device
    hooks = [(p, reader) for p in points]
    with torch.inference_mode(), add_hooks(lm.model, hooks), calls.capture():
        out = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    store["logits"] = out.logits.float().cpu()
    return store


def _means(lm: LoadedModel, saes: SAESet, seqs: list, mask: TokenMask, pad: int) -> dict:
    ids, attn, kinds = pad_batch(seqs, pad)
    acts = truncated_forward(lm, saes.points, ids, attn)
    keep = _sink_mask(acts, mask.keep(kinds), mask.sink_factor)
    return {p: acts[p][keep].float().mean(0) for p in saes.points}


def evaluate_requests(
    lm: LoadedModel,
    saes: SAESet,
    data_dir: str | Path | None,
    n_prompts: int,
    batch_size: int = 16,
    progress: bool = True,
    fired: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Metrics at the post-instruction positions of held-out requests, and direction cosines."""
    tok = Tokenizer(lm.tokenizer, context=512)
    results: dict[str, dict[str, Any]] = {}
    last: dict[str, dict[HookPoint, tuple[torch.Tensor, torch.Tensor]]] = {}
    pad = lm.tokenizer.pad_token_id or 0
    for name, source in REQUEST_SETS.items():
        seqs = _requests(tok, source, data_dir, n_prompts)
        acc = {p: _Accumulator() for p in saes.points}
        clean_last: dict[HookPoint, list[torch.Tensor]] = {p: [] for p in saes.points}
        recon_last: dict[HookPoint, list[torch.Tensor]] = {p: [] for p in saes.points}
        for start in tqdm(
            range(0, len(seqs), batch_size), desc=f"eval {name}", disable=not progress
        ):
            ids, attn, kinds = pad_batch(seqs[start : start + batch_size], pad)
            acts = truncated_forward(lm, saes.points, ids, attn)
            post = kinds == int(TokenKind.POST_INSTRUCTION)
            last_index = attn.sum(1) - 1
            rows = torch.arange(ids.shape[0])
            for point in saes.points:
                sae = saes[point]
                with torch.no_grad():
                    x = acts[point][post].float()
                    latents, recon = sae.encode_and_reconstruct(x)
                    acc[point].add(x, recon, latents)
                    final = acts[point][rows, last_index].float()
                    clean_last[point].append(final)
                    recon_last[point].append(sae(final))
        results[name] = {p.name: acc[p].metrics(fired, p.name) for p in saes.points}
        last[name] = {
            p: (torch.cat(clean_last[p]).mean(0), torch.cat(recon_last[p]).mean(0))
            for p in saes.points
        }
    cosines = {}
    for point in saes.points:
        clean_dir = last["harmful_post"][point][0] - last["harmless_post"][point][0]
        recon_dir = last["harmful_post"][point][1] - last["harmless_post"][point][1]
        cosines[point.name] = float(F.cosine_similarity(clean_dir, recon_dir, dim=0))
    return results, cosines


def _requests(tok: Tokenizer, source: str, data_dir: str | Path | None, n: int) -> list:
    seqs = []
    for doc in documents(source, data_dir, "eval"):
        seq = tok.encode(doc, source)
        if seq is not None:
            seqs.append(seq)
        if len(seqs) >= n:
            break
    return seqs


@dataclass
class EvalConfig:
    text_tokens: int = field(default=4096, metadata={"help": "tokens per text set"})
    n_prompts: int = field(
        default=64, metadata={"help": "held-out requests per class", "flag": "prompts"}
    )
    batch_size: int = 8
    sets: tuple[str, ...] = ("generic", "chat")
    seed: int = 0


def trained_mask(saes: SAESet) -> TokenMask:
    """The token mask the set was trained with (the default one for sets made elsewhere)."""
    saved = saes.info.get("recipe", {}).get("mask")
    if not saved:
        return TokenMask()
    return TokenMask(**{**saved, "drop_kinds": tuple(saved.get("drop_kinds", ()))})


def evaluate_sae_set(
    lm: LoadedModel,
    saes: SAESet,
    data_dir: str | Path | None,
    cfg: EvalConfig | None = None,
    mask: TokenMask | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    cfg = cfg or EvalConfig()
    mask = mask or trained_mask(saes)
    saes.check_model(lm)
    report: dict[str, Any] = {"config": asdict(cfg), "sets": {}}
    fired: dict[str, torch.Tensor] = {}
    for name in cfg.sets:
        report["sets"][name] = evaluate_text_set(
            lm,
            saes,
            name,
            cfg.text_tokens,
            data_dir,
            mask,
            cfg.batch_size,
            seed=cfg.seed,
            progress=progress,
            fired=fired,
        )
    requests, cosines = evaluate_requests(
        lm, saes, data_dir, cfg.n_prompts, cfg.batch_size, progress=progress, fired=fired
    )
    report["sets"].update(requests)
    report["direction_cosine"] = cosines
    # per-set "dead" depends on how many tokens a set has; this is over all of them
    report["dead_frac_all_eval_tokens"] = {
        point: float((~union).double().mean()) for point, union in fired.items()
    }
    report["training"] = saes.info.get("final_stats", {})
    return report
