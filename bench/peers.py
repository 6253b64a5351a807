"""refusal-lens' interventions beside heretic's abliteration search, on the same prompts.

    python bench/peers.py --data-dir DATA --run RUN [--trials 10] [--heretic-venv DIR]
                          [--out OUT]

RUN is a finished `refusal-lens run` of the default model: its refusal direction and its `ours`
latent set with the K* and c its search chose. Every arm is evaluated on the same prompts, with
the same chat template and system prompt, greedy, 100 new tokens:
  harmful   the first 100 JailbreakBench behaviours (refusals)
  harmless  100 harmless test prompts (first-token KL against the unedited model, heretic's
            metric: KL(base || edited) over the vocabulary, averaged over prompts)
heretic-llm 1.4.0 (optional; it pins transformers ~=5.6, so it runs in its own venv, made in
`--heretic-venv` on first use) computes its direction from the first 400 harmful and harmless
training prompts, as refusal-lens does, then runs its Optuna search for `--trials` trials.
Refusals are counted by two judges: heretic's markers (its own `is_refusal`, run in its venv)
and refusal-lens' quick learned judge (an answer that does not do the task is a refusal), for
every refusal-lens arm and every heretic trial, so each judge has its own front. Wall time:
heretic's whole process; for refusal-lens, the run's direction, SAE and latent stages (from
its benchmark.json) plus this script's evaluation of the arm. Prints the table (heretic's
trials on either judge's front) and whether each refusal-lens arm lies below heretic's front by
each judge (no heretic trial has both fewer or equal refusals and lower or equal KL). Answers
stay in OUT (research material), not in the log.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from refusal_lens.analyses.suite import benchmark_inputs
from refusal_lens.data import load_prompts
from refusal_lens.direction import Direction
from refusal_lens.evaluation.statistics import paired_difference
from refusal_lens.generation import generate
from refusal_lens.jobs import split_prompts
from refusal_lens.judges import JudgeContext, make_judge
from refusal_lens.latents import LatentSet
from refusal_lens.models import ChatFormatter, load_model
from refusal_lens.saes import SAESet
from refusal_lens.scoring import last_position_logits

HERETIC = "heretic-llm==1.4.0"
HERE = Path(__file__).resolve().parent


def one_line(texts: list[str]) -> list[str]:
    """heretic reads prompt files a line each: both tools get the same single-line prompts."""
    return [" ".join(text.split()) for text in texts]


def system_prompt(lm: Any) -> str:
    """The system turn the model's template adds by itself (Qwen2.5: "You are Qwen..."), so
    heretic prompts the model as refusal-lens does."""
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "X"}], tokenize=False)
    start = "<|im_start|>system\n"
    if text.startswith(start):
        return text[len(start) : text.index("<|im_end|>")]
    return "You are a helpful assistant."


def heretic_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"making heretic's venv in {venv} ({HERETIC}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        # this environment's torch first: left to itself, pip takes a multi-GB CUDA build
        subprocess.run([*pip, f"torch=={torch_version()}"], check=True)
        subprocess.run([*pip, HERETIC], check=True)
    return python


def torch_version() -> str:
    from importlib.metadata import version

    return version("torch")


def run_heretic(python: Path, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    result = out / "heretic.json"
    if not result.exists():  # a finished search is kept: rerunning the script reuses it
        (out / "heretic-spec.json").write_text(json.dumps(spec))
        with open(out / "heretic-log.txt", "w") as log:
            script = [str(python), str(HERE / "peers_heretic.py")]
            command = [*script, "search", str(out / "heretic-spec.json")]
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(result.read_text())


def heretic_refusals(python: Path, answers: list[str], out: Path, name: str) -> list[bool]:
    source, target = out / f"answers-{name}.json", out / f"refused-{name}.json"
    source.write_text(json.dumps(answers))
    subprocess.run(
        [str(python), str(HERE / "peers_heretic.py"), "classify", str(source), str(target)],
        check=True,
    )
    return [bool(x) for x in json.loads(target.read_text())]


def first_token_logprobs(lm: Any, formatter: Any, texts: list[str], edits: list[Any]) -> Any:
    logits = last_position_logits(lm, formatter, texts, batch_size=32, interventions=edits)
    return F.log_softmax(logits.float(), dim=-1)


def front(points: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """heretic's Pareto rule: sorted by (refusals, KL), each point with a lower KL than all
    before it."""
    best, kept = float("inf"), []
    for point in sorted(points, key=lambda p: (p[key], p["kl"])):
        if point["kl"] < best:
            best = point["kl"]
            kept.append(point)
    return kept


def dominated(point: dict[str, Any], others: list[dict[str, Any]], key: str) -> bool:
    mine = (point[key], point["kl"])
    return any(
        o[key] <= mine[0] and o["kl"] <= mine[1] and (o[key], o["kl"]) != mine for o in others
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--run", required=True, help="a finished `refusal-lens run` folder")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--heretic-venv", default="/tmp/refusal-lens-heretic-venv")
    parser.add_argument("--no-heretic", action="store_true", help="refusal-lens' arms only")
    parser.add_argument("--n", type=int, default=100, help="harmful and harmless prompts")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--out", default="runs/peers")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = benchmark_inputs(args.run)
    summary = json.loads((Path(args.run) / "benchmark.json").read_text())
    lm = load_model(found["model"])
    system = system_prompt(lm)
    formatter = ChatFormatter(lm.tokenizer, system=system)
    harmful = one_line(load_prompts("jailbreakbench", data_dir=args.data_dir).texts()[: args.n])
    harmless = one_line(split_prompts("harmless", "test", args.data_dir, limit=args.n).texts())
    files = {}
    for name, texts in (
        ("harmful_train", split_prompts("harmful", "train", args.data_dir, limit=400).texts()),
        ("harmless_train", split_prompts("harmless", "train", args.data_dir, limit=400).texts()),
        ("harmful_eval", harmful),
        ("harmless_eval", harmless),
    ):
        files[name] = str((out / f"{name}.txt").resolve())
        Path(files[name]).write_text("\n".join(one_line(texts)) + "\n")

    judge = make_judge("learned:size=quick", JudgeContext(data_dir=args.data_dir))
    rows: list[dict[str, Any]] = []
    python = None if args.no_heretic else heretic_python(Path(args.heretic_venv))
    if python is not None:
        model_folder = next((Path(p) for p in [lm.model.name_or_path] if Path(p).is_dir()), None)
        if model_folder is None:
            raise SystemExit(f"error: the model has no local folder for heretic ({lm.source})")
        spec = {
            "model": str(model_folder),
            "trials": args.trials,
            "batch_size": 32,
            "max_new_tokens": args.max_new_tokens,
            "system_prompt": system,
            **files,
            "out": str(out.resolve()),
        }
        print(f"heretic: {args.trials} trials (log: {out / 'heretic-log.txt'}) ...", flush=True)
        found_h = run_heretic(python, spec, out)
        trials = found_h["trials"]
        complete = [t for t in trials if len(t["answers"]) == len(harmful)]
        if not trials or len(complete) != len(trials):
            raise SystemExit(
                f"error: heretic recorded answers for {len(complete)} of {len(trials)} trials; "
                f"delete {out / 'heretic.json'} and rerun"
            )
        for trial in trials:  # every trial judged, so each judge has its own front
            complied = [v.complied for v in judge.verdicts(harmful, trial["answers"])]
            marked = heretic_refusals(python, trial["answers"], out, f"trial-{trial['trial']}")
            if sum(marked) != trial["refusals"]:
                raise SystemExit(
                    f"error: heretic's markers on trial {trial['trial']}'s recorded answers count "
                    f"{sum(marked)} refusals, its search {trial['refusals']}; rerun the search"
                )
            rows.append(
                {
                    "tool": f"heretic {found_h['version']}",
                    "arm": f"trial {trial['trial']}",
                    "refusals": trial["refusals"],
                    "judge_refusals": sum(not c for c in complied),
                    "kl": trial["kl"],
                    "seconds": found_h["wall_seconds"],
                    "per_prompt": {"markers": marked, "learned": [not c for c in complied]},
                }
            )

    saes = SAESet.load(found["saes"])
    ours = LatentSet.load(found["latents"])
    direction = Direction.load(found["direction"])
    stages = summary.get("stage_seconds", {})
    found_s = {name: float(stages.get(name, 0.0)) for name in ("direction", "saes", "latents")}
    arms = {
        "base": ([], 0.0),
        "direction ablation": ([direction.ablation()], found_s["direction"]),
        f"ours (K*={ours.intervention['k']}, c={ours.intervention['value']})": (
            [ours.edit(saes)],
            sum(found_s.values()),
        ),
    }
    base_logprobs = first_token_logprobs(lm, formatter, harmless, [])
    answers: dict[str, list[str]] = {}
    for name, (edits, found_seconds) in arms.items():
        started = time.perf_counter()
        texts = generate(
            lm, formatter, harmful, max_new_tokens=args.max_new_tokens, batch_size=32,
            interventions=edits, desc=name,
        )  # fmt: skip
        logprobs = first_token_logprobs(lm, formatter, harmless, edits)
        kl = F.kl_div(logprobs, base_logprobs, reduction="batchmean", log_target=True).item()
        seconds = time.perf_counter() - started
        answers[name] = texts
        complied = [v.complied for v in judge.verdicts(harmful, texts)]
        markers = heretic_refusals(python, texts, out, f"arm-{len(answers)}") if python else None
        rows.append(
            {
                "tool": "refusal-lens",
                "arm": name,
                "refusals": sum(markers) if markers is not None else None,
                "judge_refusals": sum(not c for c in complied),
                "kl": max(kl, 0.0),
                "seconds": found_seconds + seconds,
                "per_prompt": {"markers": markers, "learned": [not c for c in complied]},
            }
        )
    with open(out / "answers.jsonl", "w", encoding="utf-8") as handle:
        for name, texts in answers.items():
            for prompt, text in zip(harmful, texts, strict=True):
                handle.write(json.dumps({"arm": name, "prompt": prompt, "answer": text}) + "\n")
    (out / "peers.json").write_text(json.dumps(rows, indent=1))

    print(f"\n{len(harmful)} JailbreakBench prompts, {len(harmless)} harmless prompts, {lm.name}")
    print(f"{'tool':<20}{'arm':<34}{'markers':>9}{'learned':>9}{'KL':>9}{'wall (s)':>10}")
    heretic = [r for r in rows if r["tool"].startswith("heretic")]
    fronts = {key: front(heretic, key) for key in ("refusals", "judge_refusals")}
    shown = {id(r) for points in fronts.values() for r in points}
    for row in rows:
        if row in heretic and id(row) not in shown:
            continue  # heretic trials on neither judge's front
        marks = "-" if row["refusals"] is None else str(row["refusals"])
        learned = "-" if row["judge_refusals"] is None else str(row["judge_refusals"])
        print(
            f"{row['tool']:<20}{row['arm']:<34}{marks:>9}{learned:>9}{row['kl']:>9.3f}"
            f"{row['seconds']:>10.0f}"
        )
    if heretic:
        print("\nbelow heretic's Pareto front (no heretic trial has fewer refusals at lower KL):")
        for row in rows:
            if row["tool"] == "refusal-lens" and row["arm"] != "base":
                verdicts = [
                    f"{label}: {'no' if dominated(row, heretic, key) else 'yes'}"
                    for label, key in (("markers", "refusals"), ("learned", "judge_refusals"))
                ]
                print(f"  {row['arm']}: {', '.join(verdicts)}")
        print("\neach arm against the heretic trial nearest in KL, paired over the same prompts")
        print("(refusal rate of the trial minus the arm's, bootstrap 95% interval, p-value):")
        for row in rows:
            if row["tool"] == "refusal-lens" and row["arm"] != "base":
                near = min(heretic, key=lambda r: abs(r["kl"] - row["kl"]))
                cells = []
                for label in ("markers", "learned"):
                    theirs = [float(x) for x in near["per_prompt"][label]]
                    mine = [float(x) for x in row["per_prompt"][label]]
                    diff, p = paired_difference(theirs, mine)
                    cells.append(
                        f"{label} {diff.mean:+.2f} [{diff.low:+.2f}, {diff.high:+.2f}] p={p:.3f}"
                    )
                print(f"  {row['arm']} vs {near['arm']} (KL {near['kl']:.3f}): {'; '.join(cells)}")
    print(f"\nall {len(rows)} rows: {out / 'peers.json'}; answers: {out / 'answers.jsonl'}")


if __name__ == "__main__":
    main()
