"""heretic-llm's search, run by `bench/peers.py` inside heretic's own venv (it pins transformers
~=5.6, so it cannot share refusal-lens' environment). Not meant to be run by hand.

    python peers_heretic.py search SPEC.json      # the Optuna search; OUT/heretic.json
    python peers_heretic.py classify IN.json OUT.json   # heretic's refusal test on answers

`search` runs heretic's own `main()` with the settings of SPEC (model folder, prompt files, number
of trials, system prompt, batch size), answers its interactive menus with "exit", and records
every answer each trial gave to the harmful evaluation prompts (heretic counts refusals on them
but keeps only the count), so that `peers.py` can judge them with refusal-lens' learned judge.
`classify` applies heretic's `Evaluator.is_refusal` (its marker list) to any answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from types import SimpleNamespace


def _markers() -> list[str]:
    from heretic.config import Settings

    return list(Settings.model_fields["refusal_markers"].default)


def classify(source: str, target: str) -> None:
    from heretic.evaluator import Evaluator

    judge = SimpleNamespace(settings=SimpleNamespace(refusal_markers=_markers()))
    with open(source, encoding="utf-8") as handle:
        answers = json.load(handle)
    refused = [bool(Evaluator.is_refusal(judge, text)) for text in answers]  # type: ignore[arg-type]
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(refused, handle)


def search(spec_path: str) -> None:
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = spec["out"]
    checkpoints = os.path.join(out, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    sys.argv = [
        "heretic",
        "--model", spec["model"],
        "--n-trials", str(spec["trials"]),
        "--seed", "0",
        "--device-map", "cpu",
        "--batch-size", str(spec["batch_size"]),
        "--max-response-length", str(spec["max_new_tokens"]),
        "--system-prompt", spec["system_prompt"],
        "--bad-prompts.dataset", spec["harmful_train"],
        "--good-prompts.dataset", spec["harmless_train"],
        "--bad-evaluation-prompts.dataset", spec["harmful_eval"],
        "--good-evaluation-prompts.dataset", spec["harmless_eval"],
        "--study-checkpoint-dir", checkpoints,
    ]  # fmt: skip
    import heretic.evaluator as evaluator
    import heretic.main as main

    answers: list[list[str]] = []  # call 0: the unedited model; call i: trial i
    original = evaluator.Evaluator.count_refusals

    def recorded(self: object) -> int:
        inner = self.model.get_responses_batched  # type: ignore[attr-defined]

        def keep(prompts: object, **kwargs: object) -> list[str]:
            texts = inner(prompts, **kwargs)
            answers.append(list(texts))
            return texts

        self.model.get_responses_batched = keep  # type: ignore[attr-defined]
        try:
            return original(self)  # type: ignore[arg-type]
        finally:
            self.model.get_responses_batched = inner  # type: ignore[attr-defined]

    evaluator.Evaluator.count_refusals = recorded  # type: ignore[method-assign]
    # every interactive menu: restart a stale checkpoint, then exit after the trials
    main.prompt_select = lambda message, choices: (  # type: ignore[attr-defined]
        "restart" if str(message).startswith("How would you like") else None
    )
    main.prompt_text = lambda *args, **kwargs: ""  # type: ignore[attr-defined]
    started = time.perf_counter()
    with contextlib.suppress(SystemExit):
        main.main()
    wall = time.perf_counter() - started
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    name = "".join(c if (c.isalnum() or c in "_-") else "--" for c in spec["model"])
    storage = JournalStorage(JournalFileBackend(os.path.join(checkpoints, name + ".jsonl")))
    study = optuna.load_study(study_name="heretic", storage=storage)
    trials = [
        {
            "trial": int(t.user_attrs["index"]),
            "refusals": int(t.user_attrs["refusals"]),
            "n": int(t.user_attrs["n_bad_prompts"]),
            "kl": float(t.user_attrs["kl_divergence"]),
            "parameters": t.user_attrs.get("parameters"),
            "direction_index": t.user_attrs.get("direction_index"),
        }
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
    ]
    result = {
        "version": _version(),
        "markers": _markers(),
        "wall_seconds": wall,
        "base_answers": answers[0] if answers else [],
        "trials": [
            {**row, "answers": answers[row["trial"]] if row["trial"] < len(answers) else []}
            for row in trials
        ],
    }
    with open(os.path.join(out, "heretic.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle)


def _version() -> str:
    from importlib.metadata import version

    return version("heretic-llm")


if __name__ == "__main__":
    if sys.argv[1] == "search":
        search(sys.argv[2])
    else:
        classify(sys.argv[2], sys.argv[3])
