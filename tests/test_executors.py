"""Executors: the local one is the in-process work of before; a local Ray cluster (2 workers,
1 thread each) gives the same completions, verdicts and measurements, loses nothing when a
worker is killed, and a bad `--executor` is a one-line error before any work."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
import torch

from conftest import random_sae_set
from refusal_lens.benchmark import benchmark_job
from refusal_lens.direction import Direction
from refusal_lens.errors import UserError
from refusal_lens.evaluation.agreement import judge_agreement
from refusal_lens.executors import (
    ExecutorSettings,
    LocalExecutor,
    Replica,
    check_executor,
    make_executor,
    parse_executor,
)
from refusal_lens.judges import JudgeContext, make_judge
from refusal_lens.models import ChatFormatter, LoadedModel, load_model
from refusal_lens.saes.activations import ActivationCache
from refusal_lens.saes.mixture import MixtureSource
from refusal_lens.saes.presets import SAERecipe, train_sae_set
from refusal_lens.saes.training import TrainConfig
from test_benchmark import builtin_pools, tiny_config
from test_judges import write_labelled_data


def test_executor_names_parse_and_bad_ones_are_errors() -> None:
    assert parse_executor("local") == ("local", None)
    assert parse_executor("ray") == ("ray", None)
    assert parse_executor("ray=auto") == ("ray", "auto")
    assert parse_executor("ray=10.0.0.1:6379") == ("ray", "10.0.0.1:6379")
    for bad in ("loca", "ray=", "local=x", "dask"):
        with pytest.raises(UserError, match="is not local, ray or ray=ADDRESS"):
            parse_executor(bad)
    with pytest.raises(UserError, match="judge-workers"):
        ExecutorSettings(judge_workers=-1)
    assert ExecutorSettings(executor="ray", worker_gpus=2).worker_gpus == 2  # spread replicas
    with pytest.raises(UserError, match="takes whole GPUs"):
        ExecutorSettings(executor="ray", worker_gpus=1.5)


def test_a_spread_model_gets_each_sae_on_its_layers_device(tiny: LoadedModel) -> None:
    """A model over several devices (here: layer 1 moved to the meta device, as a device map
    puts layers on other GPUs): each SAE goes where its layer is, and `balanced` without GPUs
    is a one-line error."""
    import copy

    from refusal_lens.hooks import decoder_layers

    model = copy.deepcopy(tiny.model)
    decoder_layers(model)[1].to("meta")
    saes = random_sae_set(tiny).place(model)
    devices = {point.layer: sae.W_enc.device.type for point, sae in saes}
    assert devices[1] == "meta" and all(d == "cpu" for layer, d in devices.items() if layer != 1)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU is visible"):
            load_model("unused", device="balanced")


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UserError, match=r"pip install 'refusal-lens\[ray\]'"):
        check_executor(ExecutorSettings(executor="ray"))


@pytest.mark.parametrize("command", [["run", "--quick"], ["train-saes", "--layers", "1"]])
def test_an_unreachable_cluster_is_a_one_line_error(
    command: list[str],
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from refusal_lens.cli import main

    _ray()
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    out = tmp_path / "run"
    code = main([*command, "--executor", "ray=127.0.0.1:9", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: cannot reach the Ray cluster at 127.0.0.1:9")
    assert not out.exists()


def test_the_local_executor_runs_items_in_order_and_counts_them(
    tiny: LoadedModel, formatter: ChatFormatter
) -> None:
    executor = LocalExecutor(Replica(lm=tiny, formatter=formatter))
    got: list[tuple[int, list[str]]] = []
    items = [{"prompts": ["Write a poem about the sea."]}, {"prompts": ["Hi", "Bake bread."]}]
    executor.map(
        "generate",
        {"max_new_tokens": 3, "interventions": []},
        items,
        lambda i, out: got.append((i, out)),
        desc="test",
        units=[1, 2],
    )
    assert [i for i, _ in got] == [0, 1] and [len(out) for _, out in got] == [1, 2]
    stats = executor.summary()["workers"]["generate"]["local"]
    assert stats["items"] == 2 and stats["units"] == 3
    with pytest.raises(UserError, match="unknown work item kind"):
        executor.map("nothing", {}, [{}], lambda i, out: None, desc="x")


# ----------------------------------------------------------------------------- Ray


def _ray():
    """Ray, or a skip where it is not installed (CI installs the `ray` extra and must run)."""
    if os.environ.get("REFUSAL_LENS_REQUIRE_EXTRAS") == "1":
        import ray

        return ray
    return pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = _ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture()
def saved(tiny: LoadedModel, tmp_path: Path) -> tuple[LoadedModel, str, str]:
    """The tiny model as a folder (what a worker loads), its SAE set and a direction."""
    folder = tmp_path / "model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    lm = load_model(str(folder), device="cpu", dtype="float32")
    saes = tmp_path / "saes"
    random_sae_set(lm).save(saes)
    torch.manual_seed(3)
    (tmp_path / "direction").mkdir()
    Direction(
        torch.randn(lm.d_model) * 4, 1, -1, lm.identity(), {"selected_on": builtin_pools()}
    ).save(tmp_path / "direction")
    return lm, str(saes), str(tmp_path / "direction")


def _rows(db: Path, table: str) -> dict[tuple, tuple]:
    keys = {
        "completions": ("model, saes, intervention, generation, prompt_id", "completion"),
        "verdicts": ("model, saes, intervention, generation, prompt_id, judge", "refused, score"),
        "measurements": ("model, saes, intervention, task, item, metric", "value"),
    }[table]
    with sqlite3.connect(db) as conn:
        rows = conn.execute(f"SELECT {keys[0]}, {keys[1]} FROM {table}").fetchall()
    width = len(keys[0].split(","))
    return {tuple(r[:width]): tuple(r[width:]) for r in rows}


def test_a_ray_benchmark_equals_the_local_one_item_for_item(
    ray_cluster, saved: tuple[LoadedModel, str, str], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    lm, saes, direction = saved
    formatter = ChatFormatter(lm.tokenizer, max_length=256)
    config = tiny_config(saes, direction, share_results=False, batch_size=2)
    local = benchmark_job(lm, formatter, config, tmp_path / "local", data_dir=None, echo=print)
    settings = ExecutorSettings(executor="ray", workers=2, worker_threads=1)
    with make_executor(settings, lm, formatter) as executor:
        remote = benchmark_job(
            lm, formatter, config, tmp_path / "ray", data_dir=None, echo=print, executor=executor
        )
    for table in ("completions", "verdicts"):
        assert _rows(tmp_path / "ray" / "results.sqlite", table) == _rows(
            tmp_path / "local" / "results.sqlite", table
        )
    a = _rows(tmp_path / "local" / "results.sqlite", "measurements")
    b = _rows(tmp_path / "ray" / "results.sqlite", "measurements")
    assert a.keys() == b.keys() and a
    assert all(abs(a[k][0] - b[k][0]) <= 1e-4 * max(1.0, abs(a[k][0])) for k in a)
    assert remote["harmful"] == local["harmful"]
    workers = remote["executor"]["workers"]["generate"]
    assert remote["executor"]["executor"] == "ray" and set(workers) == {"model-0", "model-1"}
    assert (
        sum(w["items"] for w in workers.values())
        == local["executor"]["workers"]["generate"]["local"]["items"]
    )


def test_a_killed_worker_loses_and_repeats_nothing(
    ray_cluster, saved: tuple[LoadedModel, str, str]
) -> None:
    lm, _, _ = saved
    formatter = ChatFormatter(lm.tokenizer, max_length=256)
    prompts = [f"Write poem number {i} about the sea." for i in range(12)]
    items = [{"prompts": [p]} for p in prompts]
    shared = {"max_new_tokens": 24, "interventions": []}
    expected: dict[int, list[str]] = {}
    LocalExecutor(Replica(lm=lm, formatter=formatter)).map(
        "generate", shared, items, lambda i, out: expected.__setitem__(i, out), desc="local"
    )
    settings = ExecutorSettings(executor="ray", workers=2, worker_threads=1)
    got: list[tuple[int, list[str]]] = []
    with make_executor(settings, lm, formatter) as executor:
        victim = executor.pids()[1]

        def keep(index: int, out: list[str]) -> None:
            if not got:  # after the first result, while the other worker holds an item
                os.kill(victim, signal.SIGKILL)
            got.append((index, out))

        executor.map("generate", shared, items, keep, desc="ray")
        stats = executor.summary()["workers"]["generate"]
    assert sorted(i for i, _ in got) == list(range(12))  # each item once
    assert dict(got) == expected
    assert sum(s["retried_elsewhere"] for s in stats.values()) >= 1


def test_a_worker_error_is_the_drivers_error(ray_cluster, saved) -> None:
    lm, _, _ = saved
    formatter = ChatFormatter(lm.tokenizer, max_length=256)
    settings = ExecutorSettings(executor="ray", workers=1)
    with make_executor(settings, lm, formatter) as executor, pytest.raises(UserError):
        executor.map("nothing", {}, [{}], lambda i, out: None, desc="x")


def test_the_manifest_counts_each_workers_items(tmp_path: Path) -> None:
    executor = LocalExecutor(Replica())
    executor.worker("generate", "local").add(4, 2.0)
    summary = executor.summary()
    assert summary == {
        "executor": "local",
        "workers": {
            "generate": {
                "local": {
                    "items": 1,
                    "units": 4,
                    "busy_seconds": 2.0,
                    "units_per_second": 2.0,
                    "retried_elsewhere": 0,
                }
            }
        },
    }
    json.dumps(summary)


def test_attribution_batches_on_workers_equal_the_local_ones(
    ray_cluster, saved: tuple[LoadedModel, str, str], tmp_path: Path
) -> None:
    from refusal_lens.attribution import AttributionSettings, attribute
    from refusal_lens.saes import SAESet

    lm, saes_path, direction_path = saved
    formatter = ChatFormatter(lm.tokenizer, max_length=256)
    saes, direction = SAESet.load(saes_path), Direction.load(direction_path)
    prompts = [f"Explain how to hack computer number {i}." for i in range(5)]
    token = lm.tokenizer("I")["input_ids"][0]
    settings = AttributionSettings(steps=2, batch_size=2)
    local = attribute(lm, formatter, saes, direction, prompts, token, settings=settings)
    with make_executor(ExecutorSettings(executor="ray", workers=2), lm, formatter) as executor:
        remote = attribute(
            lm, formatter, saes, direction, prompts, token, settings=settings,
            out=tmp_path / "parts", executor=executor,
        )  # fmt: skip
        stats = executor.summary()["workers"]["attribute"]
    assert sum(s["items"] for s in stats.values()) == 3  # 5 prompts in batches of 2
    for layer in local.scores:
        torch.testing.assert_close(remote.scores[layer], local.scores[layer], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(remote.node_sums, local.node_sums, rtol=1e-4, atol=1e-6)
    assert len(list((tmp_path / "parts").rglob("batch-*.safetensors"))) == 3  # resumable


def test_an_arm_whose_interventions_cannot_travel_stays_on_the_driver(
    tiny: LoadedModel, formatter: ChatFormatter, tmp_path: Path
) -> None:
    """A per-prompt latent set's `to_dict()` is a key, not the set: its arm runs here, and the
    log says so once; every other arm goes to the executor."""
    from types import SimpleNamespace

    from refusal_lens.evaluation import work
    from refusal_lens.evaluation.store import Condition, ResultStore

    class Elsewhere(LocalExecutor):
        name = "ray"

    said: list[str] = []
    with ResultStore(tmp_path / "results.sqlite") as store:
        ctx = work.Work(
            tiny, formatter, store, {}, (), "gen", 4, 2, said.append,
            Elsewhere(Replica(lm=tiny, formatter=formatter)),
        )  # fmt: skip
        condition = Condition(tiny.weights_sha256, "none", label="x")
        per_prompt = [SimpleNamespace(kind="per_prompt_latents")]
        stays = work.Arm("ours transductive", "ours", "transductive", per_prompt, condition, ())
        goes = work.Arm("base", "base", "-", [], condition, ())
        assert work._executor(ctx, goes) is ctx.executor
        assert work._executor(ctx, stays).name == "local"
        assert work._executor(ctx, stays).name == "local"
        assert said == [
            "ours transductive: its per-prompt interventions run in this process, not on workers"
        ]


def test_train_saes_on_ray_equals_the_local_run(
    ray_cluster, saved: tuple[LoadedModel, str, str], tmp_path: Path, mixture_jsonl: Path
) -> None:
    """Collection batches and layer groups as work items: the same activation shards, and
    the same SAEs (each SAE's start is seeded by its hook point, so a layer group trains it
    as the joint run does; float tolerance covers a worker's other thread count)."""
    lm, _, _ = saved
    formatter = ChatFormatter(lm.tokenizer)
    recipe = SAERecipe(
        layers=(0, 1),
        train=TrainConfig(expansion=4, k=4, batch_size=64, total_tokens=3_200, checkpoint_every=10),
        collect_tokens=900,
        mixture=(MixtureSource(str(mixture_jsonl), 1.0),),
        collect_batch_size=4,
        cache_dtype="float32",
    )
    local = train_sae_set(lm, recipe, tmp_path / "local", progress=False)
    settings = ExecutorSettings(executor="ray", workers=2, worker_threads=1)
    with make_executor(settings, lm, formatter) as executor:
        remote = train_sae_set(lm, recipe, tmp_path / "ray", progress=False, executor=executor)
        workers = executor.summary()["workers"]
    assert set(workers["collect"]) == {"model-0", "model-1"}
    assert sum(w["items"] for w in workers["train_saes"].values()) == 2  # one group per worker

    a = ActivationCache.open(tmp_path / "local" / "activations")
    b = ActivationCache.open(tmp_path / "ray" / "activations")
    assert a.shards == b.shards and a.n_tokens >= 900
    for number in range(len(a.shards)):
        x, y = a.load_shard(number), b.load_shard(number)
        assert torch.equal(x["kinds"], y["kinds"])
        for point in a.points:
            torch.testing.assert_close(x[point], y[point], atol=1e-5, rtol=1e-5)

    assert [p.name for p in remote.points] == [p.name for p in local.points]
    for point, sae in local:
        for name, tensor in sae.state_dict().items():
            torch.testing.assert_close(
                remote[point].state_dict()[name], tensor, atol=1e-4, rtol=1e-4
            )
    assert remote.info["final_stats"].keys() == local.info["final_stats"].keys()
    assert remote.info["executor"]["workers"]["collect"].keys() == {"model-0", "model-1"}
    assert local.info["executor"] == {"executor": "local"}


def test_judge_agreement_on_ray_equals_the_local_one(
    ray_cluster, saved: tuple[LoadedModel, str, str], tmp_path: Path
) -> None:
    """Chunks of labelled answers as work items; the compliance judge, which reads the
    evaluated model, is rebuilt on the workers from its spec."""
    lm, _, _ = saved
    formatter = ChatFormatter(lm.tokenizer)
    write_labelled_data(tmp_path / "data")
    specs = ["substring", "compliance"]
    context = JudgeContext(lm=lm, formatter=formatter)

    def agreement(out: str, executor=None) -> list[dict]:
        judges = {spec: make_judge(spec, context) for spec in specs}
        return judge_agreement(
            judges, ["xstest", "gptfuzz"], tmp_path / out, data_dir=tmp_path / "data",
            executor=executor,
        )  # fmt: skip

    local = agreement("local")
    settings = ExecutorSettings(executor="ray", workers=2, worker_threads=1)
    with make_executor(settings, lm, formatter) as executor:
        remote = agreement("ray", executor)
        workers = executor.summary()["workers"]["verdicts"]
    assert remote == local and len(local) == 4
    assert sum(w["units"] for w in workers.values()) == 2 * 13  # every labelled answer, twice


def test_capabilities_on_ray_equal_the_local_ones(
    ray_cluster, saved: tuple[LoadedModel, str, str], tmp_path: Path
) -> None:
    """Chunks of an lm-eval task as work items, under an intervention that travels as data."""
    pytest.importorskip("lm_eval")
    from refusal_lens.evaluation.capabilities import CapabilityRunner, CapabilitySettings
    from refusal_lens.evaluation.store import Condition, ResultStore
    from refusal_lens.interventions import AddDirection
    from test_capabilities import write_capability_data

    lm, _, _ = saved
    formatter = ChatFormatter(lm.tokenizer)
    root = write_capability_data(tmp_path / "data")
    settings = CapabilitySettings(tasks=("arc_challenge",), limit=None, chunk=1, batch_size=4)
    torch.manual_seed(0)
    push = AddDirection(torch.randn(lm.d_model), layer=1, coeff=8.0)

    def measured(name: str, executor=None) -> dict[tuple, float]:
        with ResultStore(tmp_path / f"{name}.sqlite") as store:
            runner = CapabilityRunner(lm, store, settings, root, tmp_path / name)
            condition = Condition(
                lm.weights_sha256, store.intervention_id([push.to_dict()]), label="add"
            )
            runner.evaluate(condition, [push], executor=executor)
            rows = store.query("measurements", {"intervention": condition.intervention})
        return {(r["task"], r["item"], r["metric"]): r["value"] for r in rows}

    local = measured("local")
    settings_ray = ExecutorSettings(executor="ray", workers=2, worker_threads=1)
    with make_executor(settings_ray, lm, formatter) as executor:
        remote = measured("ray", executor)
        workers = executor.summary()["workers"]["capabilities"]
    assert remote.keys() == local.keys() and len(local) >= 6
    assert all(abs(remote[k] - local[k]) <= 1e-4 for k in local)
    assert set(workers) == {"model-0", "model-1"}


def test_an_analysis_on_ray_equals_the_local_one(
    ray_cluster, saved: tuple[LoadedModel, str, str], tmp_path: Path
) -> None:
    """The minimal-set analysis (its test rows are generations and verdicts of the first-token
    judge, which reads the steered model): the same effects, sets and test rows. Each run has
    its own user cache: the shared store would otherwise hand the second run every result."""
    from refusal_lens.analyses.minimal import MinimalSettings, minimal_job
    from refusal_lens.data import builtin_prompts
    from refusal_lens.latents import LatentSet
    from refusal_lens.saes import SAESet

    lm, saes_path, _ = saved
    formatter = ChatFormatter(lm.tokenizer)
    saes = SAESet.load(saes_path)
    features = LatentSet(
        {"name": lm.name, "weights_sha256": lm.weights_sha256},
        {"path": saes_path, "fingerprint": saes.fingerprint()},
        "ours",
        "heldout",
        {},
        [(1, 3, 1.0), (2, 7, 0.5), (1, 11, 0.2), (2, 30, 0.1)],
        {"mode": "scale", "value": -30.0, "k": 4},
    )
    # a threshold at the median base score: verdicts that differ between prompts and edits
    test = builtin_prompts("harmful", "test").texts()[:8]
    scores = [v.score for v in make_judge("first-token", JudgeContext(lm, formatter)).verdicts(
        test, [""] * len(test))]  # fmt: skip
    settings = MinimalSettings(
        dataset="builtin_harmful_val",
        min_score=-1e9,
        n_prompts=4,
        interactions=2,
        test_dataset="builtin_harmful_test",
        n_test=8,
        judge=f"first-token:threshold={sorted(scores)[4]:.6f}",
        max_new_tokens=3,
    )

    def job(out: str, executor=None) -> dict:
        return minimal_job(
            lm, formatter, saes, features, settings, tmp_path / out, data_dir=None,
            echo=lambda _: None, executor=executor, cache_dir=str(tmp_path / f"cache-{out}"),
        )  # fmt: skip

    local = job("local")
    settings_ray = ExecutorSettings(executor="ray", workers=2, worker_threads=1)
    with make_executor(settings_ray, lm, formatter) as executor:
        remote = job("ray", executor)
        workers = executor.summary()["workers"]
    effects = [json.loads(line)["effect"] for line in (tmp_path / "local" / "effects.jsonl").open()]
    assert len(set(effects)) > 1  # the sets differ in effect: verdicts that can disagree
    for key in ("minimal", "interactions", "test"):
        assert remote[key] == local[key], key
    assert sum(w["items"] for w in workers["generate"].values()) >= len(local["test"])
    assert "verdicts" in workers
    assert len({r["refusal"]["mean"] for r in local["test"]}) > 1
