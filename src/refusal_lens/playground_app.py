"""The browser playground (`refusal-lens playground RUN`): a Gradio app over `Playground`.

Every callback here only turns widget values into `Controls` / `Sampling`, calls the engine and
shapes what it returns for a widget; the engine (`refusal_lens.playground`) holds the logic,
so a notebook gets the same answers. The app is queued one request at a time: a busy model
makes the next request wait, never run beside it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError
from .judges import Judge
from .playground import Controls, Playground, Sampling

NONE = "(none)"
SWEEP_DEFAULT = "-6, -3, -1, 0, 1"
EXAMPLE_SETS = ("jailbreakbench", "xstest_safe")
# what a verdict cell says (`_said`)
VERDICT_WORDS = ("refused", "not refused", "degenerate", "complied", "did not comply")


@dataclass(frozen=True)
class PlaygroundSettings:
    """Where the app listens and what it offers (the `playground` command's flags)."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=7860, metadata={"help": "port to listen on"})
    judges: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "judges of the answers",
            "default": "the judges of the run's benchmark, else substring",
        },
    )
    examples: int = field(
        default=4, metadata={"help": "example prompts from each of JailbreakBench, XSTest safe"}
    )


def run_judges(run: str | None) -> tuple[str, ...]:
    """The judges a run folder's benchmark used (its `benchmark.json`), else the substring
    judge: the verdicts the playground shows are those the run's tables count."""
    from pathlib import Path

    from . import schema

    path = Path(run) / "benchmark.json" if run else None
    if path is None or not path.is_file():
        return ("substring",)
    spec = schema.Obj(
        required={"config": schema.Obj(required={"judges": schema.ListOf(schema.Str(), 1)})}
    )
    fix = "pass --judges"
    found = schema.validate(schema.read_json(path, "benchmark summary", fix), spec, str(path), fix)
    return tuple(found["config"]["judges"])


def judge_specs(settings: PlaygroundSettings, run: str | None) -> tuple[str, ...]:
    """The judges the app shows: `--judges`, else the run's (see `run_judges`)."""
    return settings.judges or run_judges(run)


def example_prompts(data_dir: str | None, n: int) -> list[str]:
    """The first `n` prompts of each example set the data directory has (none without one)."""
    from .data import load_prompts, resolve_data_dir

    if n <= 0 or resolve_data_dir(data_dir) is None:
        return []
    out: list[str] = []
    for name in EXAMPLE_SETS:
        try:
            out += load_prompts(name, data_dir=data_dir, limit=n).texts()
        except UserError:
            continue  # a set the folder lacks: its examples are left out
    return out


def controls_from(
    latent_set: str,
    k: float | None,
    mode: str,
    own_value: bool,
    value: float,
    off: Sequence[str],
    positions: str,
    from_position: float | None,
    direction: str,
    coefficient: float,
) -> Controls:
    """Widget values as `Controls` (`off`: the switched-off latents as `L<layer>:<index>`;
    `from_position` 0 or empty: no start position)."""
    return Controls(
        latent_set=None if latent_set in (NONE, "", None) else latent_set,
        k=int(k) if k else None,
        mode=mode,
        value=None if own_value else float(value),
        off=tuple(_pair(label) for label in off),
        positions=positions,
        from_position=int(from_position) if from_position else None,
        direction=direction,
        coefficient=float(coefficient),
    )


def latent_labels(playground: Playground, latent_set: str, k: float | None) -> list[str]:
    """The set's top-K latents as switch labels (`L13:3280`)."""
    if latent_set in (NONE, "", None):
        return []
    chosen = playground.latent_sets[latent_set].top(int(k) if k else None)
    return [f"L{layer}:{index}" for layer, index in chosen]


def _pair(label: str) -> tuple[int, int]:
    layer, index = label.removeprefix("L").split(":")
    return int(layer), int(index)


def respond(
    playground: Playground,
    history: list[dict[str, str]],
    steered_history: list[dict[str, str]],
    prompt: str,
    controls: Controls,
    sampling: Sampling,
    json_text: str = "",
) -> Iterator[tuple[list[dict[str, str]], list[dict[str, str]]]]:
    """Both chats with the new turn, growing as the answers stream. `json_text`, when given,
    is the intervention to run (as `steer --json` prints it) instead of the controls."""
    if not prompt.strip():
        raise UserError("type a prompt first")
    steered = playground.load_json(json_text) if json_text.strip() else None
    if steered is None:
        steered = playground.interventions(controls)
    asked = {"role": "user", "content": prompt}
    base_turns = [*_turns(history), asked]
    steered_turns = [*_turns(steered_history), asked]
    # each pane continues its own conversation; both see the same new prompt
    for base_text, steered_text in playground.stream(
        steered_turns, steered, sampling, base_messages=base_turns
    ):
        yield (
            [*base_turns, {"role": "assistant", "content": base_text}],
            [*steered_turns, {"role": "assistant", "content": steered_text}],
        )


def _turns(history: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [
        {"role": str(m["role"]), "content": _text(m["content"])}
        for m in history
        if m.get("role") in ("user", "assistant")
    ]


def _text(content: Any) -> str:
    """Gradio may hand a message's content back as a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def highlight(
    playground: Playground,
    history: list[dict[str, Any]],
    controls: Controls,
) -> list[tuple[str, float | None]]:
    """The last exchange of a chat with each token scored by the summed activation of the
    chosen set's switched-on latents (scaled to the largest: 1.0), for `HighlightedText`."""
    turns = _turns(history)
    if len(turns) < 2 or turns[-1]["role"] != "assistant":
        return []
    edits = [i for i in playground.interventions(controls) if hasattr(i, "latents")]
    if not edits:
        return []
    tokens, values = playground.latent_activations(
        turns[:-1], turns[-1]["content"], list(edits[0].latents)
    )
    score = values.sum(dim=1)
    top = float(score.max()) or 1.0
    return [
        (token, round(float(v) / top, 3) if v > 0 else None)
        for token, v in zip(tokens, score, strict=True)
    ]


def sweep_rows(
    playground: Playground,
    prompt: str,
    controls: Controls,
    values_text: str,
    sampling: Sampling,
    judges: dict[str, Judge],
) -> list[list[Any]]:
    """The strength sweep as table rows: value, then each judge's verdict, then the answer."""
    try:
        values = [float(v) for v in values_text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise UserError(
            f"sweep values {values_text!r} are not numbers; write e.g. -6, -3, 0, 1"
        ) from None
    if not values:
        raise UserError("give at least one sweep value, e.g. -6, -3, 0, 1")
    rows = playground.sweep(prompt, controls, values, sampling)
    answers = [row["answer"] for row in rows]
    with playground.lock:  # a judge may read the evaluated model
        verdicts = {
            name: judge.verdicts([prompt] * len(answers), answers) for name, judge in judges.items()
        }
    return [
        [row["value"], *(_said(verdicts[name][i]) for name in judges), row["answer"]]
        for i, row in enumerate(rows)
    ]


def verdict_rows(
    playground: Playground,
    judges: dict[str, Judge],
    history: list[dict[str, Any]],
    steered_history: list[dict[str, Any]],
) -> list[list[str]]:
    """Each judge's verdict on the last answer of both chats: rows of (judge, base, steered).
    Judges run under the playground's lock (a judge may read the evaluated model)."""
    pairs = [_last_exchange(history), _last_exchange(steered_history)]
    if not judges or any(pair is None for pair in pairs):
        return []
    with playground.lock:
        said = {
            name: [_said(judge.verdicts([p[0]], [p[1]])[0]) for p in pairs if p is not None]
            for name, judge in judges.items()
        }
    return [[name, *verdicts] for name, verdicts in said.items()]


def _last_exchange(history: list[dict[str, Any]]) -> tuple[str, str] | None:
    turns = _turns(history)
    if len(turns) < 2 or turns[-1]["role"] != "assistant" or turns[-2]["role"] != "user":
        return None
    return turns[-2]["content"], turns[-1]["content"]


def card_html(playground: Playground, label: str | None) -> str:
    """The latent card of `label` (`L13:3280`) as HTML: the run's, or built on request."""
    from .cards import card_fragments

    if not label:
        return ""
    layer, index = _pair(label)
    return card_fragments([playground.card(layer, index)])


def dose_response(rows: list[list[Any]], judges: Sequence[str]) -> Any:
    """The sweep as a plot: per judge, whether each strength's answer was refused (1) or not
    (0); a degenerate answer sits at 0.5 (neither)."""
    from matplotlib.figure import Figure  # not pyplot: no global state across app threads

    score = {
        "refused": 1.0,
        "did not comply": 1.0,
        "degenerate": 0.5,
        "not refused": 0.0,
        "complied": 0.0,
    }
    figure = Figure(figsize=(6, 2.6))
    axes = figure.subplots()
    for column, name in enumerate(judges, start=1):
        points = sorted((float(row[0]), score[row[column]]) for row in rows if row[column] in score)
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    axes.set_yticks(
        [0, 0.5, 1], ["complied / not refused", "degenerate", "refused / did not comply"]
    )
    axes.set_xlabel("strength (c, v or the coefficient)")
    axes.set_ylim(-0.1, 1.1)
    if judges:
        axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return figure


def _said(verdict: Any) -> str:
    if getattr(verdict, "degenerate", False):
        return "degenerate"
    if verdict.complied is not None:
        return "complied" if verdict.complied else "did not comply"
    if verdict.refused is not None:
        return "refused" if verdict.refused else "not refused"
    return "?"


def build_app(
    playground: Playground,
    *,
    examples: Sequence[str] = (),
    judges: dict[str, Judge] | None = None,
) -> Any:
    """The Gradio Blocks app (call `.queue().launch()` on it)."""
    import gradio as gr

    judges = judges or {}
    sets = [NONE, *playground.latent_sets]
    # the benchmark's own set when the run has one, else the first
    ours = [name for name in playground.latent_sets if name.endswith("/ours")]
    first = ours[0] if ours else next(iter(playground.latent_sets), NONE)

    def sampling(tokens: float, temperature: float, seed: float) -> Sampling:
        return Sampling(int(tokens), float(temperature), int(seed))

    def guarded(fn: Any) -> Any:
        def run(*args: Any) -> Any:
            try:
                return fn(*args)
            except UserError as error:
                raise gr.Error(str(error)) from None

        return run

    def guarded_stream(fn: Any) -> Any:
        def run(*args: Any) -> Any:
            try:
                yield from fn(*args)
            except UserError as error:
                raise gr.Error(str(error)) from None

        return run

    with gr.Blocks(title="refusal-lens playground", analytics_enabled=False) as app:
        gr.Markdown(
            f"## refusal-lens playground: `{playground.lm.name}`\n"
            "The same conversation, answered by the base model (left) and under the "
            "intervention set below (right)."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                latent_set = gr.Dropdown(sets, value=first, label="latent set")
                k = gr.Number(value=0, precision=0, label="K* (0: the set's own)")
                mode = gr.Radio(["scale", "set"], value="scale", label="latent edit")
                own = gr.Checkbox(value=True, label="the set's own c / v")
                value = gr.Slider(
                    -20, 40, value=-3, step=0.5, label="c (scale) or v (set)", elem_id="value"
                )
                off = gr.CheckboxGroup([], label="latents switched off", elem_id="latent-switches")
                positions = gr.Radio(["all", "prompt", "generated"], value="all", label="positions")
                start = gr.Number(value=0, precision=0, label="from position p (0: from the start)")
                direction = gr.Radio(
                    ["none", "ablate", "add"], value="none", label="refusal direction"
                )
                coefficient = gr.Slider(-16, 16, value=4, step=0.5, label="addition coefficient")
                tokens = gr.Slider(8, 512, value=96, step=8, label="max new tokens")
                temperature = gr.Slider(0, 2, value=0, step=0.1, label="temperature (0: greedy)")
                seed = gr.Number(value=0, precision=0, label="seed")
            with gr.Column(scale=3):
                with gr.Row():
                    base_chat = gr.Chatbot(label="base", elem_id="base-chat", height=360)
                    steered_chat = gr.Chatbot(label="steered", elem_id="steered-chat", height=360)
                prompt = gr.Textbox(label="prompt", elem_id="prompt", lines=2)
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("Clear", elem_id="clear")
                verdicts = gr.Dataframe(
                    headers=["judge", "base", "steered"],
                    label="the judges' verdicts on the last answers",
                    elem_id="verdicts",
                )
                if examples:
                    gr.Examples(list(examples), inputs=prompt, label="examples")
                with gr.Accordion("intervention (as `steer --json` prints it)", open=False):
                    shown = gr.Code(
                        language="json",
                        label="current controls",
                        interactive=False,
                        elem_id="controls-json",
                    )
                    custom = gr.Code(
                        language="json",
                        label="run this instead (paste or load; empty: the controls)",
                        interactive=True,
                    )
                    upload = gr.File(label="load a JSON file", file_types=[".json"])
                with gr.Tab("look inside"):
                    explain = gr.Button("Highlight the chosen latents on the last answers")
                    base_marks = gr.HighlightedText(label="base", elem_id="base-marks")
                    steered_marks = gr.HighlightedText(label="steered", elem_id="steered-marks")
                    projection = gr.Dataframe(
                        headers=["layer", "projection on the refusal direction"],
                        label="last prompt token, per layer",
                    )
                with gr.Tab("latent cards"):
                    card_latent = gr.Dropdown(
                        [],
                        label="latent of the set (its card shows on choosing)",
                        elem_id="card-latent",
                    )
                    card = gr.HTML(elem_id="card")
                with gr.Tab("strength sweep"):
                    values = gr.Textbox(
                        value=SWEEP_DEFAULT, label="values of c, v or the coefficient"
                    )
                    run_sweep = gr.Button("Sweep", elem_id="sweep")
                    table = gr.Dataframe(
                        headers=["value", *judges, "answer"],
                        label="answers",
                        wrap=True,
                        elem_id="sweep-table",
                    )
                    plot = gr.Plot(label="dose-response", elem_id="sweep-plot")
        knobs = [latent_set, k, mode, own, value, off, positions, start, direction, coefficient]
        decoding = [tokens, temperature, seed]

        def on_set(name: str, top: float | None) -> Any:
            labels = latent_labels(playground, name, top)
            return gr.update(choices=labels, value=[]), gr.update(choices=labels, value=None)

        def on_controls(*knob_values: Any) -> str:
            try:
                return playground.intervention_json(controls_from(*knob_values))
            except UserError as error:
                return f"// {error}"

        def on_send(history: Any, steered_history: Any, text: str, *rest: Any) -> Any:
            knob_values, (t, temp, s, json_text) = rest[: len(knobs)], rest[len(knobs) :]
            yield from respond(
                playground,
                history or [],
                steered_history or [],
                text,
                controls_from(*knob_values),
                sampling(t, temp, s),
                json_text or "",
            )

        def on_explain(history: Any, steered_history: Any, *knob_values: Any) -> Any:
            chosen = controls_from(*knob_values)
            rows: list[list[Any]] = []
            turns = _turns(history or [])
            if playground.direction is not None and turns:
                asked = turns[:-1] if turns[-1]["role"] == "assistant" else turns
                rows = [
                    [i, round(v, 3)] for i, v in enumerate(playground.direction_projection(asked))
                ]
            return (
                highlight(playground, history or [], chosen),
                highlight(playground, steered_history or [], chosen),
                rows,
            )

        def on_sweep(text: str, sweep_values: str, *rest: Any) -> Any:
            knob_values, (t, temp, s) = rest[: len(knobs)], rest[len(knobs) :]
            chosen = controls_from(*knob_values)
            rows = sweep_rows(playground, text, chosen, sweep_values, sampling(t, temp, s), judges)
            return rows, dose_response(rows, list(judges))

        def on_upload(file: Any) -> str:
            if file is None:
                return ""
            path = file if isinstance(file, str) else file.name
            with open(path, encoding="utf-8") as handle:
                return handle.read()

        latent_set.change(on_set, [latent_set, k], [off, card_latent])
        k.change(on_set, [latent_set, k], [off, card_latent])
        for knob in knobs:
            knob.change(on_controls, knobs, shown)
        app.load(on_set, [latent_set, k], [off, card_latent]).then(on_controls, knobs, shown)
        send.click(
            guarded_stream(on_send),
            [base_chat, steered_chat, prompt, *knobs, *decoding, custom],
            [base_chat, steered_chat],
        ).then(
            guarded(lambda a, b: verdict_rows(playground, judges, a or [], b or [])),
            [base_chat, steered_chat],
            verdicts,
        )
        clear.click(lambda: ([], [], []), None, [base_chat, steered_chat, verdicts])
        card_latent.change(guarded(lambda label: card_html(playground, label)), card_latent, card)
        explain.click(
            guarded(on_explain),
            [base_chat, steered_chat, *knobs],
            [base_marks, steered_marks, projection],
        )
        run_sweep.click(guarded(on_sweep), [prompt, values, *knobs, *decoding], [table, plot])
        upload.change(on_upload, upload, custom)
    return app
