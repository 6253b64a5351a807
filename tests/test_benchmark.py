"""The benchmark: typed settings (file < environment < flags), the job on a tiny model, and
resumption (a rerun computes nothing; one more method computes only that method; a killed
run resumes without recomputing finished items)."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch

import refusal_lens.benchmark.inputs as inputs_module
import refusal_lens.evaluation.work as work_module
import refusal_lens.generation as generation_module
from conftest import random_sae_set, refusal_direction
from refusal_lens import heldout
from refusal_lens.benchmark import BenchmarkConfig, benchmark_job
from refusal_lens.benchmark.context import Context
from refusal_lens.config import load_settings
from refusal_lens.data import Prompt, PromptSet, builtin_prompts
from refusal_lens.direction import Direction
from refusal_lens.errors import UserError
from refusal_lens.evaluation.capabilities import CapabilitySettings
from refusal_lens.evaluation.store import Condition, ResultStore
from refusal_lens.executors import LocalExecutor, Replica
from refusal_lens.latents import LatentSet
from refusal_lens.models import ChatFormatter, LoadedModel, load_model
from refusal_lens.runs import RunDir

# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Inner:
    limit: int | None = 5
    tasks: tuple[str, ...] = ("a",)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    rate: float = 0.5
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_settings_layers_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[t]\nname = "file"\nrate = 1\n[t.inner]\nlimit = 7\ntasks = ["b", "c"]\n')
    monkeypatch.setenv("P_RATE", "2.5")
    monkeypatch.setenv("P_INNER__TASKS", "d")
    got = load_settings(Outer, file=toml, table="t", env_prefix="P_", overrides=["flag=true"])
    assert got == Outer("file", 2.5, True, Inner(7, ("d",)))
    got = load_settings(
        Outer, file=toml, table="t", env_prefix="P_", overrides=["inner.limit=none"]
    )
    assert got.inner.limit is None
    assert load_settings(Outer, defaults={"name": "preset"}).name == "preset"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["nope=1"], "unknown setting 'nope'; known: flag, inner, name, rate"),
        (["rate=fast"], "rate = 'fast' is not a valid float"),
        (["flag=maybe"], "flag = 'maybe' is not a valid bool"),
        (["inner.limit=2.5"], "limit = '2.5' is not a valid int"),
        (["inner=3"], "inner is a table of settings"),
        (["name.x=1"], "name is a value, not a table"),
        (["justaname"], "is not NAME=VALUE"),
    ],
)
def test_settings_errors_name_the_setting(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(Outer, overrides=overrides)


def test_settings_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_settings(Outer, file=tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(UserError, match="is not valid TOML"):
        load_settings(Outer, file=bad)


def test_benchmark_config_checks_its_values() -> None:
    with pytest.raises(UserError, match="unknown method 'magic'"):
        BenchmarkConfig(methods=("magic",))
    with pytest.raises(UserError, match="unknown protocol"):
        BenchmarkConfig(protocols=("both",))
    with pytest.raises(UserError, match="unknown capability method 'all'"):
        BenchmarkConfig(capability_methods=("all",))
    with pytest.raises(UserError, match="screen_tokens must be positive"):
        BenchmarkConfig(screen_tokens=0)


# ----------------------------------------------------------------------------- the job


@pytest.fixture()
def bench_inputs(tiny: LoadedModel, tmp_path: Path) -> tuple[str, str]:
    saes = random_sae_set(tiny)
    saes.save(tmp_path / "saes")
    torch.manual_seed(3)
    (tmp_path / "direction").mkdir()
    Direction(
        torch.randn(tiny.d_model) * 4, 1, -1, tiny.identity(), {"selected_on": builtin_pools()}
    ).save(tmp_path / "direction")
    return str(tmp_path / "saes"), str(tmp_path / "direction")


def builtin_pools() -> dict:
    """What a direction found on the built-in train/val splits records of its pools."""
    return {
        f"{kind}_{split}": heldout.describe(builtin_prompts(kind, split))  # type: ignore[arg-type]
        for kind in ("harmful", "harmless")
        for split in ("train", "val")
    }


def tiny_config(saes: str, direction: str, **changes: object) -> BenchmarkConfig:
    values: dict = {
        "model": "tiny",
        "saes": saes,
        "direction": direction,
        "methods": ("base", "direction", "cossim"),
        "datasets": ("builtin_harmful_test",),
        "limit": 4,
        "max_new_tokens": 4,
        "batch_size": 4,
        "judges": ("substring", "first-token"),
        "n_select": 8,
        "search": False,
        "scale": -3.0,  # given: the tiny model refuses nothing, so ours' search cannot run
        "harmless": "builtin_harmless_test",
        "n_harmless": 3,
        "rollout_tokens": 3,
        "n_generic": 3,
        "xstest_limit": 0,
        "induce_values": (),
        "capabilities": CapabilitySettings(tasks=()),
    }
    values.update(changes)
    return BenchmarkConfig(**values)


def local(lm: LoadedModel, formatter: ChatFormatter) -> LocalExecutor:
    return LocalExecutor(Replica(lm=lm, formatter=formatter))


def recording_generate(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], dict[str, int]]:
    """The benchmark's generation calls in order (their progress labels), and the length each
    label asked for."""
    calls: list[str] = []
    lengths: dict[str, int] = {}
    real = generation_module.generate

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("desc", ""))
        lengths[calls[-1]] = kwargs["max_new_tokens"]
        return real(*args, **kwargs)

    monkeypatch.setattr(generation_module, "generate", wrapper)
    return calls, lengths


def counting_generate(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return recording_generate(monkeypatch)[0]


def test_benchmark_on_a_tiny_model_resumes_and_adds_one_method(
    tiny: LoadedModel,
    formatter: ChatFormatter,
    bench_inputs: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    calls = counting_generate(monkeypatch)
    config = tiny_config(*bench_inputs)
    out = tmp_path / "run"
    summary = benchmark_job(tiny, formatter, config, out, data_dir=None, echo=lambda _m: None)
    conditions = {(r["condition"], r["judge"]) for r in summary["harmful"]}
    assert conditions == {
        (c, j)
        for c in ("base", "direction ablation", "cossim")
        for j in ("substring", "first-token")
    }
    cossim = next(r for r in summary["harmful"] if r["condition"] == "cossim")
    assert cossim["refusal_rate"]["n"] == 4 and "p_value" in cossim["refusal_rate"]
    effects = {r["condition"]: r for r in summary["side_effects"]}
    assert "harmless_kl" not in effects["base"] and effects["cossim"]["harmless_kl"]["n"] == 3
    assert effects["cossim"]["generic_ce"]["n"] == 3
    assert (out / "benchmark.md").read_text().startswith("# Benchmark: tiny-qwen2")
    first = len(calls)
    assert first > 0
    counts = summary["store_counts"]
    again = benchmark_job(tiny, formatter, config, out, data_dir=None, echo=lambda _m: None)
    assert len(calls) == first  # a rerun generates nothing
    assert again["store_counts"] == counts
    assert again["harmful"] == summary["harmful"]
    more = tiny_config(*bench_inputs, methods=("base", "direction", "cossim", "actdiff"))
    benchmark_job(tiny, formatter, more, out, data_dir=None, echo=lambda _m: None)
    assert calls[first:] and all("actdiff" in desc for desc in calls[first:])


def test_refusal_only_generations_use_the_short_length(
    tiny: LoadedModel,
    formatter: ChatFormatter,
    bench_inputs: tuple[str, str],
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, lengths = recording_generate(monkeypatch)
    config = tiny_config(
        *bench_inputs, max_new_tokens=5, screen_tokens=2, xstest_limit=2, capability_methods=()
    )
    run = tmp_path / "run"
    summary = benchmark_job(tiny, formatter, config, run, data_dir=shared_data, echo=print)
    xstest = {desc: n for desc, n in lengths.items() if desc.startswith("xstest_safe")}
    harmful = {desc: n for desc, n in lengths.items() if "builtin_harmful_test" in desc}
    assert len(xstest) == 3 and set(xstest.values()) == {2}  # every arm, short
    assert harmful and set(harmful.values()) == {5}
    assert summary["screen_tokens"] == 2
    assert "from 2-token completions" in (run / "benchmark.md").read_text()


def test_without_saes_or_data_the_benchmark_stops_before_any_work(
    tiny: LoadedModel,
    formatter: ChatFormatter,
    bench_inputs: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    calls = counting_generate(monkeypatch)
    config = tiny_config(None, bench_inputs[1])  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"no cached SAE set for .* --data-dir DIR"):
        benchmark_job(tiny, formatter, config, tmp_path / "run", data_dir=None, echo=print)
    assert calls == []


def test_batch_sizes_do_not_key_latent_sets() -> None:
    from refusal_lens.attribution import AttributionSettings
    from refusal_lens.jobs import LatentsChoice
    from refusal_lens.latents import SelectionSettings

    choice = LatentsChoice(n_prompts=8)

    def key(**changes: object) -> str:
        settings = SelectionSettings(method="ours", **changes)  # type: ignore[arg-type]
        return inputs_module.selection_key(choice, settings)

    assert key(batch_size=8) == key(batch_size=32)
    assert key(attribution=AttributionSettings(batch_size=2)) == key()
    assert key(k=10) != key(k=20)
    assert inputs_module.selection_key(LatentsChoice(n_prompts=16), SelectionSettings()) != (
        inputs_module.selection_key(choice, SelectionSettings())
    )


@pytest.fixture()
def refuser_inputs(refuser: LoadedModel, tmp_path: Path) -> tuple[str, str]:
    """A random SAE set and the difference-in-means direction of the refusing tiny model."""
    random_sae_set(refuser).save(tmp_path / "saes")
    (tmp_path / "direction").mkdir()
    refusal_direction(refuser).save(tmp_path / "direction")
    return str(tmp_path / "saes"), str(tmp_path / "direction")


def test_every_method_protocol_and_stage_on_a_model_that_refuses(
    refuser: LoadedModel,
    refuser_inputs: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ours (attribution, search), a random control matched to it, actdiff and cossim,
    held-out and transductive, and refusal induction, on a tiny model trained to refuse the
    built-in harmful requests."""
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    formatter = ChatFormatter(refuser.tokenizer, max_length=256)
    config = tiny_config(
        *refuser_inputs,
        model="tiny-refuser",
        methods=("base", "direction", "ours", "cossim", "actdiff", "random"),
        protocols=("heldout", "transductive"),
        judges=("substring",),
        limit=6,
        max_new_tokens=8,
        search=True,
        scale=None,
        k=4,
        n_select=12,
        induce_values=(8.0,),
        n_induce=4,
    )
    summary = benchmark_job(
        refuser, formatter, config, tmp_path / "run", data_dir=None, echo=lambda _m: None
    )
    rows = {(r["condition"], r["protocol"]): r for r in summary["harmful"]}
    base = rows[("base", "-")]
    assert base["refusal_rate"]["mean"] >= 0.5  # the model refuses: the metrics have a signal
    for method in ("ours", "cossim", "actdiff"):
        setting = rows[(method, "heldout")]["setting"]
        # each method's own (K*, c), searched on the same validation prompts
        assert setting["chosen_by"].startswith("search"), setting
        searched = json.loads(
            (tmp_path / "run" / "latents" / "heldout" / method / "search.json").read_text()
        )
        assert (setting["k"], setting["value"]) == (
            searched["chosen"]["k"],
            searched["chosen"]["value"],
        )
    ours = rows[("ours", "heldout")]["setting"]
    assert rows[("random 0", "heldout")]["setting"] | {"chosen_by": ""} == ours | {"chosen_by": ""}
    # transductive: ours per prompt, cossim and actdiff with their global sets
    assert ("ours (per prompt)", "transductive") in rows
    assert ("cossim (on the set)", "transductive") in rows
    assert ("actdiff (on the set)", "transductive") in rows
    induced = {r["condition"]: r for r in summary["induction"]}
    assert set(induced) == {"base", "ours set to 8", "direction addition"}
    markdown = (tmp_path / "run" / "benchmark.md").read_text()
    assert f"| ours | heldout | {ours['k']}, {ours['value']:g} (searched) |" in markdown


def test_screened_verdicts_are_stored_under_the_screen_generation(
    refuser: LoadedModel,
    refuser_inputs: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Induction completions are short (the screen length): their verdicts are keyed by that
    generation, not by the long one (a stale verdict would be reused when the long
    generation's settings change)."""
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    formatter = ChatFormatter(refuser.tokenizer, max_length=256)
    config = tiny_config(
        *refuser_inputs,
        model="tiny-refuser",
        methods=("base", "ours"),
        judges=("substring",),
        n_select=8,
        induce_values=(4.0,),
        n_induce=3,
        max_new_tokens=5,
        screen_tokens=2,
    )
    benchmark_job(refuser, formatter, config, tmp_path / "run", data_dir=None, echo=print)
    with sqlite3.connect(tmp_path / "run" / "results.sqlite") as db:
        n_verdicts, orphans, short = db.execute(
            "select count(*), sum(not exists (select 1 from completions c where "
            "c.model = v.model and c.saes = v.saes and c.intervention = v.intervention and "
            "c.generation = v.generation and c.prompt_id = v.prompt_id)), "
            "count(distinct v.generation) from verdicts v"
        ).fetchone()
    # every verdict sits beside the completion it judged; short and long ones both exist
    assert n_verdicts > 0 and orphans == 0 and short == 2


KILLED_RUN = """
import sys
from refusal_lens.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_killed_benchmark_resumes_without_recomputing(
    tiny: LoadedModel, tmp_path: Path, executor: str
) -> None:
    """The driver killed mid-run: the rerun computes only what the store lacks (with Ray, the
    workers of the killed driver go with it and the rerun starts new ones)."""
    if executor == "ray" and os.environ.get("REFUSAL_LENS_REQUIRE_EXTRAS") != "1":
        pytest.importorskip("ray")
    model_dir = tmp_path / "model"
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    saved = load_model(str(model_dir), device="cpu")  # its identity is the folder's weights
    saes, direction = str(tmp_path / "saes"), tmp_path / "direction"
    random_sae_set(saved).save(saes)
    direction.mkdir()
    torch.manual_seed(3)
    Direction(
        torch.randn(saved.d_model) * 4, 1, -1, saved.identity(), {"selected_on": builtin_pools()}
    ).save(direction)
    out = tmp_path / "run"
    argv = [
        "benchmark", "--model", str(model_dir), "--saes", saes, "--direction", str(direction),
        "--out", str(out), "--batch-size", "2",
        "--set", "methods=base,direction", "--set", "datasets=builtin_harmful_test",
        "--set", "limit=12", "--set", "max_new_tokens=24", "--set", "batch_size=2",
        "--set", "judges=substring", "--set", "harmless=builtin_harmless_test",
        "--set", "n_harmless=2", "--set", "n_generic=2", "--set", "xstest_limit=0",
        "--set", "induce_values=", "--set", "capabilities.tasks=",
        "--executor", executor, "--workers", "2",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("REFUSAL_LENS_DATA", None)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, *argv], env=env)
    db = out / "results.sqlite"
    deadline = time.time() + 600  # a guard against a hung run, generous for a loaded machine
    before = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    before = conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
            except sqlite3.OperationalError:  # the file exists, its tables not yet
                before = 0
            if before >= 2:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= before < 26, "kill the run after some completions, before the end"
    with sqlite3.connect(db) as conn:
        kept = dict(conn.execute("SELECT prompt_id || intervention, created FROM completions"))
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, *argv], env=env, check=False)
    assert done.returncode == 0
    with sqlite3.connect(db) as conn:
        after = dict(conn.execute("SELECT prompt_id || intervention, created FROM completions"))
    assert all(after[key] == created for key, created in kept.items())  # nothing redone
    assert len(after) == 12 * 2 + 2  # base and ablated on 12 prompts, plus 2 harmless rollouts
    summary = json.loads((out / "benchmark.json").read_text())
    assert {r["condition"] for r in summary["harmful"]} == {"base", "direction ablation"}


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")))
def test_shipped_configs_load(path: Path) -> None:
    config = load_settings(BenchmarkConfig, file=path, table="benchmark")
    assert config.datasets and config.judges


def test_semicolons_separate_items_that_hold_commas() -> None:
    config = load_settings(
        BenchmarkConfig, overrides=["judges=substring;harmbench:model=m,max_tokens=5"]
    )
    assert config.judges == ("substring", "harmbench:model=m,max_tokens=5")


def test_settings_outside_the_table_are_errors(tmp_path: Path) -> None:
    toml = tmp_path / "b.toml"
    toml.write_text("limit = 5\n[benchmark]\nk = 10\n")
    with pytest.raises(UserError, match=r"belong in a \[benchmark\] table; found limit"):
        load_settings(BenchmarkConfig, file=toml, table="benchmark")
    toml.write_text("benchmark = 5\n")
    with pytest.raises(UserError, match="must be a table"):
        load_settings(BenchmarkConfig, file=toml, table="benchmark")
    with pytest.raises(UserError, match="k must be positive"):
        load_settings(BenchmarkConfig, overrides=["k=0"])


def test_benchmark_without_the_substring_judge_and_a_first_token_threshold(
    tiny: LoadedModel,
    formatter: ChatFormatter,
    bench_inputs: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    config = tiny_config(
        *bench_inputs, methods=("base", "cossim"), judges=("first-token:threshold=50",)
    )
    summary = benchmark_job(tiny, formatter, config, tmp_path / "r", data_dir=None, echo=print)
    rates = {r["condition"]: r["refusal_rate"]["mean"] for r in summary["harmful"]}
    assert rates == {"base": 0.0, "cossim": 0.0}  # nothing clears a log-odds of 50
    with sqlite3.connect(tmp_path / "r" / "results.sqlite") as conn:
        specs = [json.loads(row[0]) for row in conn.execute("SELECT spec FROM judges")]
    assert {"name": "first-token", "threshold": 50.0} in [
        {k: s[k] for k in ("name", "threshold")} for s in specs if s["name"] == "first-token"
    ]


def test_a_latent_set_selected_from_other_inputs_is_selected_again(
    tiny: LoadedModel,
    formatter: ChatFormatter,
    bench_inputs: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Latent sets are keyed by content: other settings, or another direction saved at the
    same path, select the set again (a path is not a key)."""
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    selections: list[str] = []
    real = inputs_module.latents_job

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        selections.append(kwargs["settings"].method)
        return real(*args, **kwargs)

    monkeypatch.setattr(inputs_module, "latents_job", counting)
    config = tiny_config(*bench_inputs, methods=("base", "cossim"), judges=("substring",))

    def run() -> dict:
        return benchmark_job(tiny, formatter, config, tmp_path / "r", data_dir=None, echo=print)

    first = run()
    run()
    assert selections == ["cossim"]  # reused
    config = tiny_config(
        *bench_inputs, methods=("base", "cossim"), judges=("substring",), n_select=6
    )
    run()
    assert selections == ["cossim", "cossim"]
    _saes, direction = bench_inputs
    old = Direction.load(direction)
    Direction(-old.vector, old.layer, old.position, old.model, old.info).save(Path(direction))
    again = run()
    assert selections == ["cossim"] * 3
    cossim = [r for r in (first, again) for r in r["harmful"] if r["condition"] == "cossim"]
    assert cossim[0]["setting"] == cossim[1]["setting"]
    picked = [json.loads(p.read_text()) for p in (tmp_path / "r" / "latents").rglob("latents.json")]
    assert len(picked) == 1  # the stale set was replaced, not kept beside


def test_a_latent_set_is_kept_in_the_user_cache_for_later_runs(
    tiny: LoadedModel,
    formatter: ChatFormatter,
    bench_inputs: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new run folder copies the set selected before from the user cache (same key), and
    its latents equal the first run's."""
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    selections: list[Path] = []
    real = inputs_module.latents_job

    def counting(lm, fmt, out, **kwargs):  # type: ignore[no-untyped-def]
        selections.append(Path(out))
        return real(lm, fmt, out, **kwargs)

    monkeypatch.setattr(inputs_module, "latents_job", counting)
    config = tiny_config(*bench_inputs, methods=("base", "cossim"), judges=("substring",))
    for run in ("a", "b"):
        benchmark_job(tiny, formatter, config, tmp_path / run, data_dir=None, echo=print)
    assert len(selections) == 1 and selections[0].parent.name == "latents"
    assert not selections[0].is_relative_to(tmp_path / "a")  # selected in the cache
    sets = [LatentSet.load(tmp_path / run / "latents" / "heldout" / "cossim") for run in "ab"]
    assert sets[0].latents == sets[1].latents and sets[0].latents


def test_a_rerun_into_a_new_folder_computes_nothing_computed_before(
    tiny: LoadedModel,
    formatter: ChatFormatter,
    bench_inputs: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Results go through the user cache's store: a second folder generates and judges
    nothing, yet holds every row it reports; `share_results=false` computes again."""
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    calls = counting_generate(monkeypatch)
    config = tiny_config(*bench_inputs)
    first = benchmark_job(tiny, formatter, config, tmp_path / "a", data_dir=None, echo=print)
    generated = len(calls)
    second = benchmark_job(tiny, formatter, config, tmp_path / "b", data_dir=None, echo=print)
    assert len(calls) == generated > 0
    assert second["harmful"] == first["harmful"]
    assert second["side_effects"] == first["side_effects"]
    assert second["store_counts"] == first["store_counts"]  # the folder has its own copy
    alone = replace(config, share_results=False)
    third = benchmark_job(tiny, formatter, alone, tmp_path / "c", data_dir=None, echo=print)
    assert len(calls) == 2 * generated
    assert third["harmful"] == first["harmful"]


def test_a_found_direction_is_kept_in_the_user_cache_for_later_runs(
    tiny: LoadedModel, formatter: ChatFormatter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    searches: list[Path] = []

    def fake_search(lm: LoadedModel, _formatter, out, **kwargs) -> dict:
        searches.append(Path(out))
        Path(out).mkdir(parents=True)
        Direction(torch.ones(lm.d_model), 1, -1, lm.identity()).save(out)
        return {}

    monkeypatch.setattr(inputs_module, "direction_job", fake_search)

    def context(run: str, n_val: int = 32) -> Context:
        config = BenchmarkConfig(direction_n_val=n_val)
        return Context(
            tiny, formatter, None, {}, config.judges, "", config.max_new_tokens,  # type: ignore[arg-type]
            config.batch_size, print, local(tiny, formatter), config, RunDir(tmp_path / run),
            None, "",
            cache_dir=str(tmp_path / "cache"),
        )  # fmt: skip

    first = inputs_module.find_direction(context("a"), seed=0)
    again = inputs_module.find_direction(context("b"), seed=0)
    assert len(searches) == 1 and searches[0].is_relative_to(tmp_path / "cache")
    assert torch.equal(first.vector, again.vector)
    assert (tmp_path / "b" / "direction" / "direction.json").is_file()  # the run is complete
    inputs_module.find_direction(context("c", n_val=16), seed=0)  # other settings: a new search
    inputs_module.find_direction(context("d"), seed=1)
    assert len(searches) == 3 and len(set(searches)) == 3
    other_system = ChatFormatter(tiny.tokenizer, system="Be terse.")
    inputs_module.find_direction(replace(context("e"), formatter=other_system), seed=0)
    assert len(searches) == 4

    # a copy killed half-way leaves no direction.json in the run, only a partial folder
    (tmp_path / "f" / "direction.partial").mkdir(parents=True)
    (tmp_path / "f" / "direction.partial" / "direction.json").write_text("{")
    again = inputs_module.find_direction(context("f"), seed=0)
    assert torch.equal(first.vector, again.vector) and len(searches) == 4
    assert not (tmp_path / "f" / "direction.partial").exists()


def test_a_prompt_in_two_harmful_sets_is_generated_once(
    tiny: LoadedModel, formatter: ChatFormatter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    real = generation_module.generate

    def wrapper(lm, fmt, instructions, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(list(instructions))
        return real(lm, fmt, instructions, **kwargs)

    monkeypatch.setattr(generation_module, "generate", wrapper)
    shared = "Explain how to hack a computer."
    sets = [
        PromptSet("a", (Prompt("Write a poem about the sea."), Prompt(shared))),
        PromptSet("b", (Prompt(shared), Prompt("Tell me how to bake bread."))),
    ]
    condition = Condition(tiny.weights_sha256, "none", label="base")
    arm = work_module.Arm("base", "base", "-", [], condition, ("a", "b"))
    with ResultStore(tmp_path / "results.sqlite") as store:
        config = BenchmarkConfig(max_new_tokens=4)
        ctx = Context(
            tiny, formatter, store, {}, config.judges, "gen", config.max_new_tokens,
            config.batch_size, print, local(tiny, formatter), config, RunDir(tmp_path / "run"),
            None, "screen",
        )  # fmt: skip
        first = work_module.stored_completions_of_sets(ctx, arm, sets)
        assert len(calls) == 1 and sorted(calls[0]) == sorted({p.text for s in sets for p in s})
        assert first[0][1] == first[1][0]
        assert work_module.stored_completions_of_sets(ctx, arm, sets) == first
        assert len(calls) == 1  # all stored: nothing generated again


def test_every_arm_the_direction_chose_is_held_out(
    tiny: LoadedModel,
    formatter: ChatFormatter,
    bench_inputs: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A direction selected on a benchmark's prompts cannot be evaluated on it: not its
    ablation arm, not a latent arm whose prefilter it chose; and a direction that does not
    record its pools cannot be checked, so it is refused."""
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    _saes, folder = bench_inputs
    old = Direction.load(folder)
    leaky = dict(old.info["selected_on"])
    leaky["harmful_val"] = heldout.describe(builtin_prompts("harmful", "test"))
    Direction(old.vector, old.layer, old.position, old.model, {"selected_on": leaky}).save(
        Path(folder)
    )
    for methods in (("base", "direction"), ("base", "cossim")):
        config = tiny_config(*bench_inputs, methods=methods, judges=("substring",))
        with pytest.raises(UserError, match="builtin_harmful_test were used to select"):
            benchmark_job(tiny, formatter, config, tmp_path / "r", data_dir=None, echo=print)
    Direction(old.vector, old.layer, old.position, old.model).save(Path(folder))
    config = tiny_config(*bench_inputs, methods=("base", "direction"), judges=("substring",))
    with pytest.raises(UserError, match="does not record the prompts"):
        benchmark_job(tiny, formatter, config, tmp_path / "r2", data_dir=None, echo=print)


def test_an_empty_rollout_is_compared_where_the_base_model_ended_it(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes
) -> None:
    """An empty base rollout still has one compared position (the last prompt token, which
    predicted end-of-turn): its KL is that position's, not a 0 added to the mean."""
    from refusal_lens.evaluation.side_effects import completion_kl, completion_kl_per_prompt
    from refusal_lens.interventions import EditLatents
    from refusal_lens.scoring import last_position_logits

    edit = EditLatents(tiny_saes, tuple((1, i) for i in range(0, 256, 5)), "set", 6.0)
    prompts = ["Write a poem about the sea.", "Name a color."]
    rollouts = ["The sea is wide.", ""]
    per_prompt = completion_kl_per_prompt(tiny, formatter, prompts, rollouts, [edit])
    base = torch.log_softmax(last_position_logits(tiny, formatter, prompts[1:]), dim=-1)
    edited = torch.log_softmax(
        last_position_logits(tiny, formatter, prompts[1:], interventions=[edit]), dim=-1
    )
    first = float((base.exp() * (base - edited)).sum())
    assert first > 1e-4 and per_prompt[1] == pytest.approx(first, rel=1e-3)
    mean = completion_kl(tiny, formatter, prompts, rollouts, [edit])
    assert mean.n == 2 and mean.mean == pytest.approx(sum(per_prompt) / 2)


def test_the_kl_pass_gives_the_same_nll_as_scoring_the_rollouts_alone(
    tiny: LoadedModel, formatter: ChatFormatter, tiny_saes
) -> None:
    """Side effects take the arm's CE from the KL's forward pass: it must be the number
    `completion_nll` gives (an empty rollout: inf), and the KL must not change."""
    from refusal_lens.evaluation.side_effects import completion_kl_and_nll, completion_kl_per_prompt
    from refusal_lens.interventions import EditLatents
    from refusal_lens.teacher_forcing import completion_nll

    edit = EditLatents(tiny_saes, tuple((1, i) for i in range(0, 256, 5)), "set", 6.0)
    prompts = ["Write a poem about the sea.", "Name a color.", "Say hi to a long-lost friend."]
    rollouts = ["The sea is wide.", "", "Hi there, it has been years!"]
    kl, nll = completion_kl_and_nll(tiny, formatter, prompts, rollouts, [edit], batch_size=2)
    alone = completion_nll(tiny, formatter, prompts, rollouts, interventions=[edit])
    assert nll[1] == alone[1] == math.inf
    assert [nll[0], nll[2]] == pytest.approx([alone[0], alone[2]], rel=1e-4)
    assert nll[0] != pytest.approx(completion_nll(tiny, formatter, prompts[:1], rollouts[:1])[0])
    assert kl == completion_kl_per_prompt(tiny, formatter, prompts, rollouts, [edit], batch_size=2)


def test_samples_show_every_judges_verdict_disputed_answers_first() -> None:
    from refusal_lens.benchmark import harmful_samples, harmful_table

    def row(judge: str, jailbroken: list, refused: list, degenerate: list) -> dict:
        return {
            "condition": "ours",
            "method": "ours",
            "protocol": "heldout",
            "dataset": "advbench",
            "judge": judge,
            "judge_spec": judge,
            "refused": refused,
            "jailbroken": jailbroken,
            "degenerate": degenerate,
            "categories": [None] * 5,
            "prompts": [f"p{i}" for i in range(5)],
            "completions": ["", "Sure, step one: do it.", "I can't help.", "A lecture.", "Okay."],
        }

    rows = [
        row(
            "substring",
            [False, True, False, True, True],
            [False, False, True, False, False],
            ["empty", None, None, None, None],
        ),
        row(
            "learned",
            [False, True, False, False, True],
            [None] * 5,
            ["empty", None, None, None, None],
        ),
    ]
    samples = harmful_samples(rows, per_cell=2)
    assert len(samples) == 1 and samples[0]["disputed"] == 1 and samples[0]["n"] == 5
    items = samples[0]["items"]
    assert 3 in [i["index"] for i in items]  # the one answer the judges disagree on
    lecture = next(i for i in items if i["index"] == 3)
    assert lecture["verdicts"] == {"substring": "not refused", "learned": "did not comply"}
    everything = harmful_samples(rows, per_cell=5)[0]["items"]
    assert everything[0]["verdicts"]["substring"] == "degenerate (empty)"
    table = harmful_table([{**r, "setting": None} for r in rows])
    assert [t["degenerate"] for t in table] == [1, 1]


def test_pooled_rows_join_every_benchmark_of_a_condition_and_judge() -> None:
    from refusal_lens.benchmark import POOLED, harmful_table, pooled_rows

    def row(condition: str, dataset: str, jailbroken: list[bool]) -> dict:
        n = len(jailbroken)
        return {
            "condition": condition,
            "method": condition,
            "protocol": "-",
            "dataset": dataset,
            "judge": "substring",
            "judge_spec": "substring",
            "refused": [not j for j in jailbroken],
            "jailbroken": jailbroken,
            "degenerate": [None] * n,
            "categories": [None] * n,
        }

    rows = [
        row("base", "a", [False, False]),
        row("base", "b", [True, False, False]),
        row("direction", "a", [True, True]),
        row("direction", "b", [True, True, False]),
        row("only-a", "a", [True]),
    ]
    pooled = pooled_rows(rows)
    assert [(p["condition"], p["dataset"], len(p["jailbroken"])) for p in pooled] == [
        ("base", POOLED, 5),
        ("direction", POOLED, 5),
    ]
    table = {(t["condition"], t["dataset"]): t for t in harmful_table(rows + pooled)}
    assert table[("direction", POOLED)]["jailbreak_rate"]["mean"] == pytest.approx(0.8)
    assert table[("direction", POOLED)]["jailbreak_rate"]["difference"] == pytest.approx(0.6)
