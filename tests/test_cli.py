"""The command line: help with examples, and one-line errors for bad input (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refusal_lens import cli
from refusal_lens.direction import Direction
from refusal_lens.models import LoadedModel


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def save_tiny(tiny: LoadedModel, tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("command", ["direction", "refusal-rate", "generate"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_the_package_runs_as_a_module() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "refusal_lens.cli", "models"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "qwen2.5-coder-0.5b-instruct" in done.stdout


def test_every_help_page_renders(capsys: pytest.CaptureFixture[str]) -> None:
    for command in [[], *([name] for name in cli.COMMANDS)]:
        with pytest.raises(SystemExit) as info:
            cli.main([*command, "--help"])
        assert info.value.code == 0, command
        out = capsys.readouterr().out
        assert "usage: refusal-lens" in out and "%%" not in out, command


def test_models_and_datasets_lists(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0 and "qwen2.5-coder-0.5b-instruct" in out and "smollm2" in out
    code, out, _ = run(capsys, "datasets")
    assert code == 0 and "jailbreakbench" in out and "builtin_harmful" in out


def test_unknown_model_alias(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "refusal-rate", "--model", "gpt-17", "--dataset", "builtin_harmful_test"
    )
    assert_one_line_error(code, err, "unknown model alias 'gpt-17'", "registered:")


def test_missing_data_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(
        capsys,
        "refusal-rate",
        "--dataset",
        "jailbreakbench",
        "--data-dir",
        str(tmp_path / "nowhere"),
    )
    assert_one_line_error(code, err, "does not exist", "--data-dir")


def test_malformed_csv(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text('goal,target\n"unclosed quote,x\nsecond,row,extra\n')
    code, _, err = run(capsys, "refusal-rate", "--dataset", str(bad), "--column", "goal")
    assert_one_line_error(code, err, "bad.csv")


def test_empty_dataset(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("goal\n")
    code, _, err = run(
        capsys, "generate", "--dataset", str(empty), "--output", str(tmp_path / "o.jsonl")
    )
    assert_one_line_error(code, err, "empty")


def test_missing_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("goal\nhello\n")
    code, _, err = run(capsys, "refusal-rate", "--dataset", str(table), "--column", "prompt")
    assert_one_line_error(code, err, "prompt", "goal")


def test_direction_layer_out_of_range(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny: LoadedModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = save_tiny(tiny, tmp_path)
    capsys.readouterr()  # saving prints its own progress bar
    Direction(torch.randn(tiny.d_model), 40, -1, {}).save(tmp_path)
    code, _, err = run(
        capsys,
        "refusal-rate",
        "--model",
        str(folder),
        "--dataset",
        "builtin_harmful_test",
        "--add-direction",
        str(tmp_path),
    )
    assert_one_line_error(code, err, "layer 40 is out of range")


def test_bad_numbers_are_rejected_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["refusal-rate", "--dataset", "x", "--limit", "0"])
    assert info.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_refusal_rate_and_generate_on_a_tiny_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny: LoadedModel
) -> None:
    folder = save_tiny(tiny, tmp_path)
    code, out, _ = run(
        capsys,
        "refusal-rate",
        "--model",
        str(folder),
        "--dataset",
        "builtin_harmful_test",
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
        "--json",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 0
    result = json.loads(out)
    assert result["n"] == 3 and 0 <= result["refusal_rate"] <= 1
    assert result["judge"]["name"] == "substring" and result["max_new_tokens"] == 4
    records = (tmp_path / "run" / "completions" / "builtin_harmful_test.base.jsonl").read_text()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["command"] == "refusal-rate"
    assert len(records.splitlines()) == 3
    code, out, _ = run(
        capsys,
        "generate",
        "--model",
        str(folder),
        "--dataset",
        "builtin_harmless_test",
        "--limit",
        "2",
        "--max-new-tokens",
        "3",
        "--output",
        str(tmp_path / "gen.jsonl"),
    )
    assert code == 0
    rows = [json.loads(x) for x in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == [0, 1]
    manifest = json.loads((tmp_path / "gen.jsonl.manifest.json").read_text())
    assert manifest["command"] == "generate" and manifest["model"]["name"].endswith("tiny")


def test_train_and_eval_saes(
    tiny: LoadedModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    shared_data: Path,
    mixture_jsonl: Path,
) -> None:
    model = save_tiny(tiny, tmp_path)
    out = tmp_path / "saes"
    argv = [
        "train-saes",
        "--model",
        str(model),
        "--layers",
        "1-2",
        "--width",
        "2x",
        "--k",
        "4",
        "--mixture",
        f"{mixture_jsonl}=1",
        "--collect-tokens",
        "800",
        "--tokens",
        "4096",
        "--sae-batch-size",
        "256",
        "--out",
        str(out),
    ]
    code, printed, _ = run(capsys, *argv)
    assert code == 0, printed
    assert "resid_post.1, resid_post.2" in printed
    saeset = json.loads((out / "saeset.json").read_text())
    assert saeset["layers"] == [1, 2]
    assert (out / "resid_post.1" / "sae_weights.safetensors").is_file()
    # a rerun reuses the finished set
    code, _, _ = run(capsys, *argv)
    assert code == 0

    code, printed, err = run(
        capsys,
        "eval-saes",
        str(out),
        "--model",
        str(model),
        "--data-dir",
        str(shared_data),
        "--text-tokens",
        "300",
        "--prompts",
        "4",
        "--json",
    )
    assert code == 0, err
    report = json.loads(printed)
    chat = report["sets"]["chat"]["resid_post.1"]
    assert chat["fvu"] >= 0 and chat["identity_ok"]
    assert set(report["sets"]) == {"generic", "chat", "harmful_post", "harmless_post"}
    assert set(report["direction_cosine"]) == {"resid_post.1", "resid_post.2"}
    assert (out / "eval.png").is_file() and (out / "eval.json").is_file()
    code, printed, err = run(
        capsys,
        "eval-saes",
        str(out),
        "--model",
        str(model),
        "--data-dir",
        str(shared_data),
        "--text-tokens",
        "300",
        "--prompts",
        "4",
        "--layers",
        "2",
        "--json",
        "--out",
        str(tmp_path / "eval2"),
    )
    assert code == 0, err
    assert set(json.loads(printed)["direction_cosine"]) == {"resid_post.2"}
    code, _, err = run(capsys, "eval-saes", str(out), "--model", str(model), "--layers", "0")
    assert_one_line_error(code, err, "no SAE at layer 0")


def test_train_saes_bad_input(
    tiny: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_tiny(tiny, tmp_path)
    code, _, err = run(
        capsys, "train-saes", "--model", str(model), "--layers", "7", "--out", str(tmp_path / "x")
    )
    assert_one_line_error(code, err, "layer 7 is out of range")
    code, _, err = run(
        capsys,
        "train-saes",
        "--model",
        str(model),
        "--layers",
        "1",
        "--mixture",
        "nonsense",
        "--out",
        str(tmp_path / "x"),
    )
    assert_one_line_error(code, err, "bad mixture entry")
    code, _, err = run(capsys, "eval-saes", str(tmp_path / "nothing"), "--model", str(model))
    assert_one_line_error(code, err, "no SAE set")


def test_the_cli_reference_page_is_current() -> None:
    """docs/cli.md is generated from the parser; regenerate it with
    `python -m refusal_lens.cli.reference > docs/cli.md` when a command changes."""
    from refusal_lens.cli.reference import reference

    page = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    assert page.read_text() == reference(), "docs/cli.md is stale: regenerate it"
    assert "## train-judge" in page.read_text() and "--set" in page.read_text()


def test_flags_come_from_the_settings_dataclasses() -> None:
    """`direction` and `find-latents` flags are generated from their settings: one default,
    one help, in the dataclass; built only for the command that runs."""
    from refusal_lens.attribution import AttributionSettings
    from refusal_lens.cli.args import settings_from
    from refusal_lens.cli.parser import build_parser
    from refusal_lens.direction import DirectionSettings
    from refusal_lens.jobs import EvalSettings
    from refusal_lens.latents import SearchSettings, SelectionSettings

    argv = ["direction", "--out", "o", "--no-filter", "--n-train", "8", "--no-eval"]
    args = build_parser(only="direction").parse_args(argv)
    assert settings_from(DirectionSettings, args, batch_size=4) == DirectionSettings(
        n_train=8, filter_pools=False, batch_size=4
    )
    assert settings_from(EvalSettings, args) == EvalSettings(enabled=False)
    with pytest.raises(SystemExit):  # not built for another command: an unknown flag
        build_parser(only="models").parse_args(argv)

    argv = ["find-latents", "--out", "o", "--scale", "-2", "--train", "t.csv", "--steps", "3"]
    args = build_parser().parse_args([*argv, "--search-ks", "5,10", "--search-scales=-1,-6"])
    selection = settings_from(SelectionSettings, args)
    assert (selection.value, selection.method, selection.k) == (-2.0, "ours", 20)
    assert settings_from(AttributionSettings, args).steps == 3
    search = settings_from(SearchSettings, args)
    assert (search.ks, search.values, search.kl_limit) == ((5, 10), (-1.0, -6.0), 0.1)
    default = settings_from(SearchSettings, build_parser().parse_args(argv))
    assert default == SearchSettings()


def test_generated_flags_take_config_and_set(tmp_path: Path, capsys) -> None:
    """Every command with generated flags takes `--config FILE` (a table named after the
    command) and `--set NAME=VALUE`: default < file < --set < a flag typed."""
    from refusal_lens.cli.args import settings_from
    from refusal_lens.cli.parser import build_parser
    from refusal_lens.direction import DirectionSettings
    from refusal_lens.steering import SteerSettings

    config = tmp_path / "direction.toml"
    config.write_text("[direction]\nn_train = 16\nn_val = 8\nkl_threshold = 0.2\n")
    parse = build_parser(only="direction").parse_args
    base = ["direction", "--out", "o", "--config", str(config)]
    assert settings_from(DirectionSettings, parse(base)) == DirectionSettings(
        n_train=16, n_val=8, kl_threshold=0.2
    )
    args = parse([*base, "--set", "n_val=4", "--n-train", "32"])
    assert settings_from(DirectionSettings, args) == DirectionSettings(
        n_train=32, n_val=4, kl_threshold=0.2
    )
    # a flag typed at its default still wins over the file
    args = parse([*base, "--n-train", "128"])
    assert settings_from(DirectionSettings, args).n_train == 128

    steer = build_parser(only="steer").parse_args
    argv = ["steer", "--latents", "l.json", "--dataset", "d", "--set", "k=7"]
    settings = settings_from(SteerSettings, steer([*argv, "--from-position", "-3"]))
    assert (settings.k, settings.from_position, settings.scale) == (7, -3, None)

    code, _, err = run(capsys, "direction", "--out", str(tmp_path / "d"), "--set", "n_trian=3")
    assert_one_line_error(code, err, "n_trian is no setting of direction")
    config.write_text("[steer]\nk = 3\n")
    code, _, err = run(capsys, "direction", "--out", str(tmp_path / "d"), "--config", str(config))
    assert_one_line_error(code, err, "[direction] table")
    code, _, err = run(
        capsys, "steer", "--latents", "l.json", "--dataset", "d", "--scale", "2", "--set-value", "3"
    )
    assert_one_line_error(code, err, "--scale and --set-value cannot be combined")


def test_validate_attribution_runs_in_float32_unless_a_dtype_is_named() -> None:
    from refusal_lens.cli.latents import validation_dtype

    assert validation_dtype("auto") == "float32"  # bfloat16 rounds a latent's effect away
    assert validation_dtype("bfloat16") == "bfloat16"
    assert validation_dtype("float16") == "float16"
