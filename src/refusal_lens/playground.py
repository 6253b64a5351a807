"""The playground's engine: one conversation answered side by side by the base model and by
the model under an intervention the user dials in, streamed token by token.

Everything the browser app (`refusal-lens playground`) shows comes from here, so a notebook
reaches the same answers: `Controls` are the knobs as data (a latent set with K*, scale or set
value and per-latent switches; direction ablation or addition), `Playground.interventions`
turns them into the interventions `steer --json` prints, `Playground.stream` yields both
answers as they grow, and `Playground.sweep` answers one prompt over a grid of strengths. One
model copy serves both answers: their decoding steps alternate, each with its own KV cache, and
the intervention's hooks are installed only for the steered answer's steps (they keep their
per-prompt state, such as the attention-sink threshold, between steps). A lock lets one caller
use the model at a time; the app queues the others. The lock is not re-entrant: in a notebook,
finish iterating `stream` before calling `card`, `sweep` or another `stream`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .cards import CardSettings
from .direction import Direction
from .errors import UserError
from .hooks import HookPoint, add_hooks, record
from .interventions import EditLatents, Intervention, bind, from_dict, needs_twin
from .latents import LatentSet
from .models import ChatFormatter, LoadedModel
from .models.cache import cache_argument
from .saes import SAESet

DIRECTION_MODES = ("none", "ablate", "add")
# the cards built on request: 16 prompts per class, 1,000 tokens of held-out corpus text
CARDS = CardSettings(n_prompts=16, corpus_tokens=1_000)
Message = Mapping[str, str]  # {"role": "user" | "assistant", "content": ...}


@dataclass(frozen=True)
class Controls:
    """What the steered answer runs under. `latent_set=None` edits no latent; `value=None`
    takes the set's own (searched) value; `off` lists (layer, latent) pairs of the set left
    unedited."""

    latent_set: str | None = None
    k: int | None = None
    mode: str = "scale"
    value: float | None = None
    off: tuple[tuple[int, int], ...] = ()
    positions: str = "all"
    from_position: int | None = None
    direction: str = "none"
    coefficient: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("scale", "set"):
            raise UserError(f"latent mode {self.mode!r} is unknown; use scale or set")
        if self.direction not in DIRECTION_MODES:
            raise UserError(
                f"direction mode {self.direction!r} is unknown; use {', '.join(DIRECTION_MODES)}"
            )


@dataclass(frozen=True)
class Sampling:
    """Greedy (`temperature=0`) or sampled with a seed; both answers use the same seed."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UserError(f"temperature must be 0 (greedy) or more, got {self.temperature}")


@dataclass
class Playground:
    lm: LoadedModel
    formatter: ChatFormatter
    saes: SAESet | None = None
    latent_sets: dict[str, LatentSet] = field(default_factory=dict)
    direction: Direction | None = None
    # latent cards by (layer, latent): the run's (`cards/cards.json`), then each one built on
    # first request
    cards: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    data_dir: str | Path | None = None  # prompts and corpus text of the cards built here
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_run(
        cls,
        lm: LoadedModel,
        formatter: ChatFormatter,
        run: str | Path,
        saes: SAESet | None = None,
        data_dir: str | Path | None = None,
    ) -> Playground:
        """Every latent set a run folder holds (the benchmark's under `latents/`, the
        analyses' under `analyses/`), named by their path in it, its direction and its latent
        cards."""
        folder = Path(run)
        if not folder.is_dir():
            raise UserError(f"run folder {folder} does not exist; pass a benchmark run folder")
        sets = {
            str(path.parent.relative_to(folder)): LatentSet.load(path)
            for pattern in ("latents/**/latents.json", "analyses/**/latents.json")
            for path in sorted(folder.glob(pattern))
        }
        direction = (
            Direction.load(folder / "direction")
            if (folder / "direction" / "direction.json").is_file()
            else None
        )
        return cls(lm, formatter, saes, sets, direction, run_cards(folder, saes), data_dir)

    # ------------------------------------------------------------------ interventions

    def interventions(self, controls: Controls) -> list[Intervention]:
        """The interventions `controls` stand for, checked before any generation."""
        out: list[Intervention] = []
        if controls.latent_set is not None:
            out.append(self._latent_edit(controls))
        if controls.direction != "none":
            if self.direction is None:
                raise UserError("this playground has no refusal direction; pass --direction RUN")
            if controls.direction == "ablate":
                out.append(self.direction.ablation())
            else:
                out.append(self.direction.addition(controls.coefficient))
        return out

    def _latent_edit(self, controls: Controls) -> EditLatents:
        name = controls.latent_set
        if name not in self.latent_sets:
            known = ", ".join(self.latent_sets) or "none"
            raise UserError(f"latent set {name!r} is not loaded; choose from {known}")
        if self.saes is None:
            raise UserError("latent edits need the SAE set; pass --saes")
        latent_set = self.latent_sets[name]
        edit = latent_set.edit(
            self.saes,
            k=controls.k,
            mode=controls.mode,
            value=controls.value,
            positions=controls.positions,
        )
        kept = tuple(pair for pair in edit.latents if pair not in set(controls.off))
        if not kept:
            raise UserError("every latent of the set is switched off; switch one on")
        edit = replace(edit, latents=kept)
        return (
            edit
            if controls.from_position is None
            else replace(edit, from_position=controls.from_position)
        )

    def intervention_json(self, controls: Controls) -> str:
        """The interventions as `steer --json` prints them (loadable with `load_json`)."""
        return json.dumps([item.to_dict() for item in self.interventions(controls)], indent=2)

    @staticmethod
    def load_json(text: str) -> list[Intervention]:
        """Interventions from `intervention_json`'s text (or a file holding it)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(
                f"the intervention is not JSON ({error}); paste what it printed"
            ) from None
        if not isinstance(data, list):
            raise UserError("the intervention JSON must be a list of interventions")
        return [from_dict(item, "playground intervention") for item in data]

    # ------------------------------------------------------------------ answers

    def stream(
        self,
        messages: Sequence[Message],
        steered: Sequence[Intervention],
        sampling: Sampling = Sampling(),
        *,
        base_messages: Sequence[Message] | None = None,
    ) -> Iterator[tuple[str, str]]:
        """(base answer, steered answer) so far, after each decoding step of either.
        `base_messages`: the base model's own conversation, where the two have diverged (by
        default both answer `messages`)."""
        if needs_twin(steered):
            raise UserError("the playground does not run `retain` edits; drop retain")
        ids = self._encode(messages)
        base_ids = ids if base_messages is None else self._encode(base_messages)
        with self.lock:
            runs = [
                _Decoder(self, base_ids, [], sampling),
                _Decoder(self, ids, bind(steered, [""], torch.ones_like(ids)), sampling),
            ]
            texts = ["", ""]
            while not all(run.done for run in runs):
                for i, run in enumerate(runs):
                    if not run.done:
                        texts[i] = run.step()
                yield texts[0], texts[1]

    def answer(
        self,
        messages: Sequence[Message],
        steered: Sequence[Intervention],
        sampling: Sampling = Sampling(),
    ) -> tuple[str, str]:
        """`stream`'s final pair."""
        pair = ("", "")
        for latest in self.stream(messages, steered, sampling):
            pair = latest
        return pair

    def sweep(
        self,
        prompt: str,
        controls: Controls,
        values: Sequence[float],
        sampling: Sampling = Sampling(),
    ) -> list[dict[str, Any]]:
        """One prompt answered under each strength in `values` (the latent scale or set value,
        or the direction's coefficient when no latent set is chosen): the dose-response."""
        rows = []
        for value in values:
            knob = (
                replace(controls, value=value)
                if controls.latent_set is not None
                else replace(controls, coefficient=value)
            )
            ids = self._encode([{"role": "user", "content": prompt}])
            edit = bind(self.interventions(knob), [""], torch.ones_like(ids))
            run = _Decoder(self, ids, edit, sampling)
            with self.lock:
                while not run.done:
                    run.step()
            rows.append({"value": value, "answer": run.text()})
        return rows

    # ------------------------------------------------------------------ look inside

    @torch.inference_mode()
    def latent_activations(
        self, messages: Sequence[Message], answer: str, latents: Sequence[tuple[int, int]]
    ) -> tuple[list[str], torch.Tensor]:
        """The conversation and `answer` as the unedited model reads them: its tokens, and
        `[token, latent]` activations of `latents` ((layer, index) pairs of the SAE set)."""
        if self.saes is None:
            raise UserError("latent activations need the SAE set; pass --saes")
        ids = torch.cat([self._encode(messages), self._answer_ids(answer)], dim=1)
        points = {point.layer: point for point in self.saes.points}
        missing = sorted({layer for layer, _ in latents} - set(points))
        if missing:
            raise UserError(f"the SAE set has no SAE at layer {missing[0]}; pick its latents")
        wanted = [points[layer] for layer in sorted({layer for layer, _ in latents})]
        with record(self.lm.model, wanted) as acts:
            self.lm.model(input_ids=ids)
        codes = {p.layer: self.saes[p].encode(acts[p][0][0].float()) for p in wanted}
        values = torch.stack([codes[layer][:, index] for layer, index in latents], dim=1)
        tokens = [self.lm.tokenizer.decode([t]) for t in ids[0].tolist()]
        return tokens, values.cpu()

    @torch.inference_mode()
    def direction_projection(self, messages: Sequence[Message]) -> list[float]:
        """Per layer, the last prompt token's residual stream (after the block) projected on
        the unit refusal direction: where the model writes refusal."""
        if self.direction is None:
            raise UserError("this playground has no refusal direction; pass --direction RUN")
        points = [HookPoint(layer, "resid_post") for layer in range(self.lm.n_layers)]
        unit = self.direction.vector.float() / self.direction.vector.float().norm()
        with record(self.lm.model, points, reduce=lambda act: act[:, -1]) as acts:
            self.lm.model(input_ids=self._encode(messages))
        return [float(acts[p][0][0].float().cpu() @ unit) for p in points]

    def card(self, layer: int, latent: int, settings: CardSettings = CARDS) -> dict[str, Any]:
        """The latent's card (top contexts, logit lens, firing rates, cosine with the refusal
        direction): the run's own, or built now on validation prompts as the benchmark builds
        its cards (then kept for the next request)."""
        key = (layer, latent)
        if key in self.cards:
            return self.cards[key]
        if self.saes is None:
            raise UserError("latent cards need the SAE set; pass --saes")
        if self.direction is None:
            raise UserError("latent cards need the refusal direction; pass --direction RUN")
        if HookPoint(layer, "resid_post") not in self.saes.points:
            raise UserError(f"the SAE set has no SAE at layer {layer}; pick one of its latents")
        if not 0 <= latent < self.saes[HookPoint(layer, "resid_post")].W_dec.shape[0]:
            raise UserError(f"latent {latent} is outside the layer-{layer} SAE")
        from .cards import build_cards
        from .data import resolve_data_dir
        from .jobs import split_prompts

        n = settings.n_prompts
        with self.lock:
            (built,) = build_cards(
                self.lm,
                self.formatter,
                self.saes,
                [key],
                self.direction,
                split_prompts("harmful", "val", self.data_dir, limit=n),
                split_prompts("harmless", "val", self.data_dir, limit=n),
                data_dir=resolve_data_dir(self.data_dir),
                settings=settings,
                progress=False,
            )
        self.cards[key] = built
        return built

    def _answer_ids(self, answer: str) -> torch.Tensor:
        ids = self.lm.tokenizer(answer, add_special_tokens=False, return_tensors="pt")
        return ids["input_ids"].to(self.lm.device)

    def _encode(self, messages: Sequence[Message]) -> torch.Tensor:
        if not messages or messages[-1].get("role") != "user":
            raise UserError("the conversation must end with a user message")
        for message in messages:
            if message.get("role") not in ("user", "assistant") or not isinstance(
                message.get("content"), str
            ):
                raise UserError(
                    "each message needs a role (user or assistant) and text content; got "
                    f"{dict(message)!r}"
                )
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self.formatter.system is not None:
            turns.insert(0, {"role": "system", "content": self.formatter.system})
        text = self.lm.tokenizer.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=True
        )
        ids = self.lm.tokenizer(str(text), add_special_tokens=False, return_tensors="pt")
        return ids["input_ids"].to(self.lm.device)


def run_cards(run: Path, saes: SAESet | None) -> dict[tuple[int, int], dict[str, Any]]:
    """The latent cards a run folder holds, checked for types; none when it has none, or when
    `saes` is not the SAE set the run's cards were made with (its benchmark.json's)."""
    from . import schema
    from .cards import CARDS_FILE_SCHEMA

    path = run / "cards" / "cards.json"
    if not path.is_file():
        return {}
    fix = "delete it and rerun the benchmark"
    summary = run / "benchmark.json"
    if saes is not None and summary.is_file():
        found = schema.read_json(summary, "benchmark summary", "rerun the benchmark")
        made_with = found.get("saes", {}) if isinstance(found, dict) else {}
        if isinstance(made_with, dict) and made_with.get("fingerprint") not in (
            None,
            saes.fingerprint(),
        ):
            return {}  # another SAE set's latent numbers: its cards would mislead
    cards = schema.validate(
        schema.read_json(path, "latent cards", fix), CARDS_FILE_SCHEMA, str(path), fix
    )["cards"]
    return {(card["layer"], card["latent"]): card for card in cards}


class _Decoder:
    """One answer, one token per `step`, with its own KV cache and persistent hooks."""

    def __init__(
        self,
        playground: Playground,
        ids: torch.Tensor,
        interventions: Sequence[Intervention],
        sampling: Sampling,
    ) -> None:
        self.playground, self.ids, self.sampling = playground, ids, sampling
        self.interventions = list(interventions)
        self._hooks: list[Any] | None = None
        self.tokens: list[int] = []
        self.done = False
        self._cache: dict[str, Any] | None = None
        self._next = ids
        self._generator = torch.Generator(device="cpu").manual_seed(sampling.seed)

    def text(self) -> str:
        tokenizer = self.playground.lm.tokenizer
        return str(tokenizer.decode(self.tokens, skip_special_tokens=True))

    @torch.inference_mode()
    def step(self) -> str:
        from transformers import DynamicCache

        lm = self.playground.lm
        if self._hooks is None:  # made once: their state lives from the prompt to the end
            self._hooks = [h for item in self.interventions for h in item.hooks(lm.model)]
        if self._cache is None:
            self._cache = {cache_argument(lm.model): DynamicCache()}
        with add_hooks(lm.model, self._hooks):
            logits = lm.model(input_ids=self._next, use_cache=True, logits_to_keep=1, **self._cache)
        scores = logits.logits[0, -1].float()
        if self.sampling.temperature > 0:
            probs = torch.softmax(scores / self.sampling.temperature, dim=-1).cpu()
            token = int(torch.multinomial(probs, 1, generator=self._generator))
        else:
            token = int(scores.argmax())
        stops = self.playground.formatter.stop_token_ids
        if token in stops:
            self.done = True
        else:
            self.tokens.append(token)
            self._next = torch.tensor([[token]], device=lm.device)
        if len(self.tokens) >= self.sampling.max_new_tokens:
            self.done = True
        return self.text()
