"""Bad input, command by command: exit code 2, exactly one line on stderr starting with
`error:`, no traceback, and (where it matters) no work done and no file written first.

Each case builds its bad input on disk (tiny random model, tiny SAE set, latent set,
direction, results store, prompt files, configs) and runs the command in process through
`refusal_lens.cli.main`; a few run through the real entry point in a subprocess. A case names
a phrase its error must contain, so a different (earlier) error cannot pass for it. The real
default model is never loaded: commands that get as far as a model get the tiny one.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import random_sae_set
from refusal_lens import cli, heldout
from refusal_lens.data import builtin_prompts
from refusal_lens.direction import Direction
from refusal_lens.evaluation.store import ResultStore
from refusal_lens.latents import LatentSet
from refusal_lens.models import LoadedModel
from refusal_lens.models.loading import _folder_sha256
from refusal_lens.runs import RunDir
from refusal_lens.saes import SAESet

# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class World:
    """Valid artefacts every case starts from (read-only: cases copy before they break)."""

    root: Path
    model: Path  # tiny HF folder (safetensors)
    sha: str  # its weights identity as the loader computes it
    saes: Path
    direction: Path
    latents: Path  # latents.json
    store: Path  # a valid, empty results store
    bench: Path  # a benchmark-like run folder (benchmark.json)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel) -> World:
    root = tmp_path_factory.mktemp("bad_input")
    model = root / "tiny"
    tiny.model.save_pretrained(model)
    tiny.tokenizer.save_pretrained(model)
    (root / "hashes").mkdir()
    sha = _folder_sha256(model, root / "hashes")
    identity = {"name": str(model), "weights_sha256": sha}
    sae_set = random_sae_set(tiny, d_sae=64)
    SAESet(identity, sae_set.saes, {}).save(root / "saes")
    saes = SAESet.load(root / "saes")
    (root / "direction").mkdir()
    torch.manual_seed(0)
    pools = {"harmful_train": heldout.describe(builtin_prompts("harmful", "train"))}
    Direction(torch.randn(tiny.d_model), 1, -1, identity, {"selected_on": pools}).save(
        root / "direction"
    )
    features = LatentSet(
        identity,
        {"path": str(root / "saes"), "fingerprint": saes.fingerprint()},
        "ours",
        "heldout",
        {"harmful": {"name": "x", "n": 1, "prompt_hashes": ["0" * 16]}},
        [(1, 3, 1.0), (2, 7, 0.5), (0, 11, 0.2)],
        {"mode": "scale", "value": -3.0, "k": 2},
        per_prompt=[{"prompt": "How do I pick a lock?", "latents": [[1, 3, 0.9], [2, 7, 0.1]]}],
        info={
            "direction": {"layer": 1, "source": str(root / "direction")},
            "refusal_token": {"id": 5},
            "settings": {"attribution": {}},
        },
    )
    latents = features.save(root / "latents")
    features.save(root / "bench" / "latents" / "heldout" / "ours")
    store = root / "store" / "results.sqlite"
    ResultStore(store).close()
    bench = root / "bench"
    (bench / "benchmark.json").write_text(
        json.dumps(
            {
                "model": identity,
                "config": {"limit": 2, "k": 2},
                "direction": {"layer": 1, "source": str(root / "direction")},
                "saes": {"path": str(root / "saes")},
                "max_new_tokens": 4,
                "harmful": [],
            }
        )
    )
    return World(root, model, sha, root / "saes", root / "direction", latents, store, bench)


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cases choose their data directory explicitly."""
    monkeypatch.delenv("REFUSAL_LENS_DATA", raising=False)
    for name in list(os.environ):
        if name.startswith("REFUSAL_LENS_BENCH_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _never_the_real_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A case that reaches the registered (real) model has missed its error: fail fast."""
    import refusal_lens.models as models
    from refusal_lens.models.registry import find_spec

    real = models.load_model

    def guarded(name: str, **kwargs: Any) -> LoadedModel:
        if find_spec(name) is not None:
            raise AssertionError(f"a bad-input case loaded the registered model {name}")
        return real(name, **kwargs)

    monkeypatch.setattr(models, "load_model", guarded)


# --------------------------------------------------------------------------- builders


class Env:
    """What a case builder gets: the valid world, a fresh folder, small file writers."""

    def __init__(self, world: World, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.w, self.tmp, self.monkeypatch = world, tmp, monkeypatch

    @property
    def model(self) -> list[str]:
        return ["--model", str(self.w.model)]

    def write(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)

    def json(self, name: str, data: Any) -> str:
        return self.write(name, json.dumps(data))

    def blocked(self, name: str = "out") -> str:
        """A path no one can create, root included: its parent is a regular file."""
        self.write("a-file", "not a folder")
        return str(self.tmp / "a-file" / name)

    def empty_data(self) -> str:
        folder = self.tmp / "data"
        folder.mkdir(exist_ok=True)
        return str(folder)

    # ---- broken copies of the valid artefacts

    def saes(self, edit: Callable[[Path], None]) -> str:
        folder = self.tmp / "saes"
        shutil.copytree(self.w.saes, folder)
        edit(folder)
        return str(folder)

    def sae_cfg(self, change: Callable[[dict], Any]) -> str:
        def edit(folder: Path) -> None:
            cfg = folder / "resid_post.1" / "cfg.json"
            data = json.loads(cfg.read_text())
            result = change(data)
            cfg.write_text(json.dumps(data if result is None else result))

        return self.saes(edit)

    def sae_index(self, change: Callable[[dict], Any]) -> str:
        def edit(folder: Path) -> None:
            index = folder / "saeset.json"
            data = json.loads(index.read_text())
            result = change(data)
            index.write_text(json.dumps(data if result is None else result))

        return self.saes(edit)

    def sae_weights(self, change: Callable[[dict[str, torch.Tensor]], None]) -> str:
        def edit(folder: Path) -> None:
            weights = folder / "resid_post.1" / "sae_weights.safetensors"
            tensors = load_file(weights)
            change(tensors)
            save_file(tensors, str(weights))

        return self.saes(edit)

    def features(self, change: Callable[[dict], Any]) -> str:
        data = json.loads(self.w.latents.read_text())
        result = change(data)
        return self.json("latents/latents.json", data if result is None else result)

    def direction(self, change: Callable[[dict], Any] | None = None, tensor: Any = None) -> str:
        folder = self.tmp / "direction"
        shutil.copytree(self.w.direction, folder)
        if change is not None:
            data = json.loads((folder / "direction.json").read_text())
            result = change(data)
            (folder / "direction.json").write_text(json.dumps(data if result is None else result))
        if tensor is not None:
            if isinstance(tensor, bytes):
                (folder / "direction.safetensors").write_bytes(tensor)
            else:
                save_file(tensor, str(folder / "direction.safetensors"))
        return str(folder)

    def intervention(self, data: Any) -> list[str]:
        return [
            "refusal-rate",
            *self.model,
            "--dataset",
            "builtin_harmful_test",
            "--intervention",
            self.json("intervention.json", data),
        ]

    def edit_latents(self, **changes: Any) -> list[str]:
        data = {
            "kind": "edit_latents",
            "saes": {"path": str(self.w.saes)},
            "latents": [[1, 3]],
            "mode": "scale",
            "value": 0.0,
        }
        data.update(changes)
        return self.intervention({k: v for k, v in data.items() if v is not _DROP})

    def steer(self, latents: str, *extra: str) -> list[str]:
        return [
            "steer",
            *self.model,
            "--latents",
            latents,
            "--dataset",
            "builtin_harmless_test",
            "--limit",
            "1",
            *extra,
        ]

    def bench(self, *extra: str, command: str = "benchmark") -> list[str]:
        out = ["--out", str(self.tmp / "run")]
        return [command, *self.model, *extra, *out]

    def analysis(self, name: str, *extra: str) -> list[str]:
        return [
            name,
            *self.model,
            "--saes",
            str(self.w.saes),
            "--latents",
            str(self.w.latents),
            "--direction",
            str(self.w.direction),
            "--out",
            str(self.tmp / name),
            "--quick",
            *extra,
        ]


_DROP = object()


def _gguf(valid_header: bool, body: bytes) -> bytes:
    header = b"GGUF" + struct.pack("<IQQ", 3, 10, 5) if valid_header else b""
    return header + body


def _cut_gguf(env: Env) -> str:
    """A real GGUF (written by the gguf package), cut in half."""
    gguf = pytest.importorskip("gguf")
    path = env.tmp / "whole.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(16)
    for index in range(8):
        writer.add_tensor(f"blk.0.t{index}", torch.zeros(64, 64).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    return env.write("cut.gguf", data[: len(data) // 40])


def _pickle_only_model(env: Env) -> str:
    """An HF folder whose only weights are a pickle that, if ever unpickled, makes a folder."""
    folder = env.tmp / "pickled"
    folder.mkdir()
    shutil.copy(env.w.model / "config.json", folder / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (env.w.model / name).exists():
            shutil.copy(env.w.model / name, folder / name)
    marker = env.tmp / "UNPICKLED"

    class Trap:
        def __reduce__(self) -> tuple:
            return (os.mkdir, (str(marker),))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Trap()))
    return str(folder)


def _foreign_sqlite(env: Env) -> str:
    path = env.tmp / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE things (x INTEGER)")
    return str(path)


def _paragraphs() -> str:
    """Generic text: enough long paragraphs that its held-out split is not empty."""
    return "\n\n".join(f"Paragraph {i}: " + "plain words " * 30 for i in range(60))


def _toml(env: Env, text: str | bytes) -> str:
    return env.write("bench.toml", text)


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Env], list[str]]
    needle: str  # a phrase the one error line must contain


def _steer_features(change: Callable[[dict], Any]) -> Callable[[Env], list[str]]:
    return lambda e: e.steer(e.features(change))


def _eval_saes(make: Callable[[Env], str]) -> Callable[[Env], list[str]]:
    return lambda e: ["eval-saes", make(e), *e.model]


def _rate_direction(make: Callable[[Env], str]) -> Callable[[Env], list[str]]:
    return lambda e: [
        "refusal-rate",
        *e.model,
        "--dataset",
        "builtin_harmful_test",
        "--limit",
        "1",
        "--ablate-direction",
        make(e),
    ]


# harmful and harmless sets that need no data directory (no hub fallback is ever tried)
BUILTIN = ("--set", "datasets=builtin_harmful_test", "--set", "harmless=builtin_harmless_test")


def _set(item: str, needle: str, command: str = "benchmark") -> Case:
    return Case(
        f"{command}-set-{item}",
        lambda e: e.bench(*BUILTIN, "--set", item, command=command),
        needle,
    )


def _prompts(name: str, content: str | bytes, needle: str, column: str | None = None) -> Case:
    def build(e: Env) -> list[str]:
        argv = ["refusal-rate", *e.model, "--dataset", e.write(name, content)]
        return argv + (["--column", column] if column else [])

    return Case(f"prompts-{name}-{needle[:12]}", build, needle)


def _nan_weights(tensors: dict[str, torch.Tensor]) -> None:
    tensors["W_dec"][0, 0] = float("nan")


def _inf_weights(tensors: dict[str, torch.Tensor]) -> None:
    tensors["b_enc"][3] = float("inf")


def _del(key: str, inside: str | None = None) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        (data if inside is None else data[inside]).pop(key)

    return change


def _put(key: str, value: Any) -> Callable[[dict], None]:
    return lambda data: data.__setitem__(key, value)


def _put_in(outer: str, key: str, value: Any) -> Callable[[dict], None]:
    return lambda data: data[outer].__setitem__(key, value)


CASES: list[Case] = [
    # ---- models: safetensors only, files that are not (whole) models
    Case(
        "model-pickle-only",
        lambda e: [
            "refusal-rate",
            "--model",
            _pickle_only_model(e),
            "--dataset",
            "builtin_harmful",
        ],
        "pickled",
    ),
    Case(
        "model-no-weights",
        lambda e: [
            "generate",
            "--model",
            e.json("noweights/config.json", {"model_type": "qwen2"}).rsplit("/", 1)[0],
            "--dataset",
            "builtin_harmful",
            "--output",
            str(e.tmp / "o.jsonl"),
        ],
        "no .safetensors",
    ),
    Case(
        "gguf-4-bytes",
        lambda e: [
            "refusal-rate",
            "--model",
            e.write("m.gguf", b"GGUF"),
            "--dataset",
            "builtin_harmful",
        ],
        "truncated",
    ),
    Case(
        "gguf-100kb-zeros",
        lambda e: [
            "refusal-rate",
            "--model",
            e.write("m.gguf", bytes(100_000)),
            "--dataset",
            "builtin_harmful",
        ],
        "not a GGUF file",
    ),
    Case(
        "gguf-100kb-garbage-after-header",
        lambda e: [
            "refusal-rate",
            "--model",
            e.write("m.gguf", _gguf(True, os.urandom(100_000))),
            "--dataset",
            "builtin_harmful",
        ],
        "truncated or corrupt",
    ),
    Case(
        "gguf-100kb-zero-body",
        lambda e: [
            "generate",
            "--model",
            e.write("m.gguf", _gguf(True, bytes(100_000))),
            "--dataset",
            "builtin_harmful",
            "--output",
            str(e.tmp / "o.jsonl"),
        ],
        "truncated or corrupt",
    ),
    Case(
        "gguf-cut-in-the-middle",
        lambda e: ["refusal-rate", "--model", _cut_gguf(e), "--dataset", "builtin_harmful"],
        "truncated or corrupt",
    ),
    Case(
        "gguf-bad-version",
        lambda e: [
            "refusal-rate",
            "--model",
            e.write("m.gguf", b"GGUF" + struct.pack("<IQQ", 99, 1, 1) + bytes(64)),
            "--dataset",
            "builtin_harmful",
        ],
        "version 99",
    ),
    Case(
        "gguf-missing-file",
        lambda e: ["refusal-rate", "--model", "nowhere.gguf", "--dataset", "builtin_harmful"],
        "does not exist",
    ),
    Case(
        "gguf-missing-in-folder",
        lambda e: [
            "refusal-rate",
            "--model",
            "models/nowhere.gguf",
            "--dataset",
            "builtin_harmful",
        ],
        "does not exist",
    ),
    Case(
        "model-missing-relative-folder",
        lambda e: ["refusal-rate", "--model", "./no/such/folder", "--dataset", "builtin_harmful"],
        "does not exist",
    ),
    Case(
        "model-unknown-alias",
        lambda e: ["refusal-rate", "--model", "gpt-17", "--dataset", "builtin_harmful"],
        "unknown model alias",
    ),
    Case(
        "model-folder-without-config",
        lambda e: [
            "refusal-rate",
            "--model",
            e.write("empty/readme.txt", "x").rsplit("/", 1)[0],
            "--dataset",
            "builtin_harmful",
        ],
        "no config.json",
    ),
    Case(
        "model-a-text-file",
        lambda e: [
            "refusal-rate",
            "--model",
            e.write("m.txt", "hi"),
            "--dataset",
            "builtin_harmful",
        ],
        "neither a .gguf file",
    ),
    Case(
        "model-bad-dtype",
        lambda e: ["refusal-rate", *e.model, "--dtype", "float8", "--dataset", "builtin_harmful"],
        "unknown dtype",
    ),
    Case(
        "model-bad-device",
        lambda e: ["refusal-rate", *e.model, "--device", "tpu:9", "--dataset", "builtin_harmful"],
        "unknown device",
    ),
    # ---- the parser: one line too
    Case("parser-unknown-command", lambda e: ["frobnicate"], "invalid choice"),
    Case(
        "parser-limit-zero",
        lambda e: ["refusal-rate", "--dataset", "x", "--limit", "0"],
        "must be a positive integer",
    ),
    Case(
        "parser-limit-word",
        lambda e: ["generate", "--dataset", "x", "--output", "o", "--limit", "ten"],
        "must be a positive integer",
    ),
    Case(
        "parser-coeff-nan",
        lambda e: ["refusal-rate", "--dataset", "x", "--coeff", "nan"],
        "finite number",
    ),
    Case(
        "parser-kl-threshold-inf",
        lambda e: ["direction", "--out", "o", "--kl-threshold", "inf"],
        "finite number",
    ),
    Case(
        "parser-steer-scale-word",
        lambda e: ["steer", "--latents", "l", "--dataset", "d", "--scale", "big"],
        "must be a number",
    ),
    Case(
        "parser-results-table",
        lambda e: ["results", str(e.w.store), "--table", "nosuch"],
        "invalid choice",
    ),
    Case(
        "parser-method",
        lambda e: ["find-latents", "--out", "o", "--method", "magic"],
        "invalid choice",
    ),
    Case("parser-missing-required", lambda e: ["refusal-rate"], "required"),
    Case(
        "parser-from-position-word",
        lambda e: ["steer", "--latents", "l", "--dataset", "d", "--from-position", "x"],
        "invalid int",
    ),
    # ---- prompt files and datasets
    _prompts("numbers.json", "[1, 2, 3]", "must be strings"),
    _prompts("mixed.json", '["fine", 5]', "not a string"),
    _prompts("booleans.json", "[true, false]", "must be strings"),
    _prompts("number-field.json", '[{"prompt": 5}, {"prompt": "x"}]', "prompts must be strings"),
    _prompts("bool-field.jsonl", '{"prompt": true}\n', "prompts must be strings"),
    _prompts("number-lines.jsonl", "5\n6\n", "must be strings"),
    _prompts("prompts.xlsx", "goal\nx\n", "unsupported prompt file type"),
    _prompts("object.json", '{"prompt": "x"}', "not a list"),
    _prompts("blank.json", "   ", "empty"),
    _prompts("ragged.csv", "goal\na,b\n", "ragged"),
    _prompts("latin1.csv", "goal\ncaf\xe9\n".encode("latin-1"), "not UTF-8"),
    _prompts("table.csv", "goal\nhello\n", "no column 'prompt'", column="prompt"),
    _prompts("broken.jsonl", '{"prompt": "x"\n', "not valid JSONL"),
    Case(
        "dataset-unknown-name",
        lambda e: ["refusal-rate", *e.model, "--dataset", "nosuchset"],
        "unknown dataset",
    ),
    Case(
        "dataset-missing-file",
        lambda e: ["refusal-rate", *e.model, "--dataset", "prompts/missing.csv"],
        "does not exist",
    ),
    Case(
        "dataset-a-folder",
        lambda e: ["generate", *e.model, "--dataset", str(e.tmp), "--output", "o.jsonl"],
        "is a folder",
    ),
    Case(
        "data-dir-missing",
        lambda e: ["refusal-rate", "--dataset", "advbench", "--data-dir", str(e.tmp / "nope")],
        "does not exist",
    ),
    Case(
        "data-dir-a-file",
        lambda e: ["refusal-rate", "--dataset", "advbench", "--data-dir", e.write("f", "x")],
        "is a file",
    ),
    # ---- --intervention files: every kind, every field typed
    Case("intervention-no-kind", lambda e: e.intervention({"layer": 1}), "'kind' is missing"),
    Case(
        "intervention-unknown-kind",
        lambda e: e.intervention({"kind": "zap"}),
        "unknown intervention kind",
    ),
    Case(
        "intervention-kind-number",
        lambda e: e.intervention({"kind": 3}),
        "kind must be a string",
    ),
    Case(
        "intervention-ablate-no-direction",
        lambda e: e.intervention({"kind": "ablate_direction"}),
        "'direction' is missing",
    ),
    Case(
        "intervention-add-layer-string",
        lambda e: e.intervention(
            {"kind": "add_direction", "layer": "1", "direction": {"values": [0.0] * 64}}
        ),
        "layer must be an integer",
    ),
    Case(
        "intervention-add-coeff-string",
        lambda e: e.intervention(
            {"kind": "add_direction", "layer": 1, "coeff": "big", "direction": {"values": [1.0]}}
        ),
        "coeff must be a finite number",
    ),
    Case(
        "intervention-add-negative-layer",
        lambda e: e.intervention(
            {"kind": "add_direction", "layer": -1, "direction": {"values": [1.0]}}
        ),
        "layer must be an integer >= 0",
    ),
    Case(
        "intervention-values-strings",
        lambda e: e.intervention({"kind": "ablate_direction", "direction": {"values": ["a"]}}),
        "direction",
    ),
    Case(
        "intervention-values-empty",
        lambda e: e.intervention({"kind": "ablate_direction", "direction": {"values": []}}),
        "direction",
    ),
    Case(
        "intervention-values-nan",
        lambda e: (
            e.write("i.json", '{"kind": "ablate_direction", "direction": {"values": [NaN]}}')
            and [
                "refusal-rate",
                *e.model,
                "--dataset",
                "builtin_harmful",
                "--intervention",
                str(e.tmp / "i.json"),
            ]
        ),
        "direction",
    ),
    Case(
        "intervention-direction-file-missing",
        lambda e: e.intervention(
            {"kind": "ablate_direction", "direction": {"file": str(e.tmp / "none.safetensors")}}
        ),
        "does not exist",
    ),
    Case(
        "intervention-direction-file-garbage",
        lambda e: e.intervention(
            {"kind": "ablate_direction", "direction": {"file": e.write("d.safetensors", b"xx")}}
        ),
        "unreadable",
    ),
    Case(
        "intervention-direction-file-changed",
        lambda e: e.intervention(
            {
                "kind": "ablate_direction",
                "direction": {
                    "file": str(e.w.direction / "direction.safetensors"),
                    "sha256": "0" * 64,
                },
            }
        ),
        "not the one this intervention was written with",
    ),
    Case("intervention-edit-pair", lambda e: e.edit_latents(latents=[[1]]), "latents[0]"),
    Case("intervention-edit-value", lambda e: e.edit_latents(value="x"), "value must be"),
    Case("intervention-edit-mode", lambda e: e.edit_latents(mode="multiply"), "mode must be"),
    Case(
        "intervention-edit-positions",
        lambda e: e.edit_latents(positions="middle"),
        "positions must be",
    ),
    Case("intervention-edit-no-saes", lambda e: e.edit_latents(saes=_DROP), "'saes' is missing"),
    Case(
        "intervention-edit-saes-path-number",
        lambda e: e.edit_latents(saes={"path": 3}),
        "saes.path must be",
    ),
    Case(
        "intervention-edit-latent-string",
        lambda e: e.edit_latents(latents=[[1, "3"]]),
        "latents[0][1]",
    ),
    Case(
        "intervention-edit-missing-layer",
        lambda e: e.edit_latents(latents=[[7, 3]]),
        "edits layer 7",
    ),
    Case(
        "intervention-edit-latent-too-big",
        lambda e: e.edit_latents(latents=[[1, 640]]),
        "edits latent 640",
    ),
    Case(
        "intervention-edit-sinks-string",
        lambda e: e.edit_latents(edit_sinks="yes"),
        "edit_sinks must be true or false",
    ),
    Case(
        "intervention-edit-from-position-negative",
        lambda e: e.edit_latents(from_position=-2),
        "from_position",
    ),
    Case(
        "intervention-not-json",
        lambda e: [
            "generate",
            "--dataset",
            "builtin_harmful",
            "--output",
            str(e.tmp / "o.jsonl"),
            "--intervention",
            e.write("i.json", "{oops"),
        ],
        "not valid JSON",
    ),
    Case("intervention-a-string", lambda e: e.intervention("ablate"), "no intervention objects"),
    Case("intervention-empty-list", lambda e: e.intervention([]), "no intervention objects"),
    Case(
        "intervention-missing-file",
        lambda e: [
            "refusal-rate",
            "--dataset",
            "builtin_harmful",
            "--intervention",
            str(e.tmp / "nope.json"),
        ],
        "does not exist",
    ),
    Case(
        "intervention-second-of-two-bad",
        lambda e: e.intervention(
            [
                {"kind": "ablate_direction", "direction": {"values": [1.0]}},
                {"kind": "add_direction"},
            ]
        ),
        "intervention 2",
    ),
    # ---- directions
    Case(
        "direction-model-a-string",
        _rate_direction(lambda e: e.direction(_put("model", "qwen"))),
        "model must be an object",
    ),
    Case(
        "direction-layer-string",
        _rate_direction(lambda e: e.direction(_put("layer", "1"))),
        "layer must be an integer",
    ),
    Case(
        "direction-no-position",
        _rate_direction(lambda e: e.direction(_del("position"))),
        "'position' is missing",
    ),
    Case(
        "direction-json-a-list",
        _rate_direction(lambda e: e.direction(lambda d: [1, 2])),
        "must be an object",
    ),
    Case(
        "direction-json-broken",
        _rate_direction(
            lambda e: (
                e.direction()
                and e.write("direction/direction.json", "{")
                and str(e.tmp / "direction")
            )
        ),
        "not valid JSON",
    ),
    Case(
        "direction-tensor-garbage",
        _rate_direction(lambda e: e.direction(tensor=b"\x00" * 40)),
        "unreadable",
    ),
    Case(
        "direction-tensor-nan",
        _rate_direction(
            lambda e: e.direction(tensor={"direction": torch.full((64,), float("nan"))})
        ),
        "NaN",
    ),
    Case(
        "direction-tensor-2d",
        _rate_direction(lambda e: e.direction(tensor={"direction": torch.zeros(2, 64)})),
        "not a vector",
    ),
    Case(
        "direction-tensor-other-key",
        _rate_direction(lambda e: e.direction(tensor={"vector": torch.zeros(64)})),
        "no 'direction' tensor",
    ),
    Case(
        "direction-folder-empty",
        _rate_direction(lambda e: e.write("dir/x", "") and str(e.tmp / "dir")),
        "no direction in",
    ),
    Case(
        "direction-other-weights",
        _rate_direction(lambda e: e.direction(_put_in("model", "weights_sha256", "f" * 64))),
        "(weights ffffffffffff...), not",
    ),
    # ---- SAE sets: cfg.json, saeset.json, weights
    Case("sae-d_in-string", _eval_saes(lambda e: e.sae_cfg(_put("d_in", "64"))), "d_in must be"),
    Case(
        "sae-cfg-json-string",
        _eval_saes(lambda e: e.sae_cfg(lambda d: "just a string")),
        "must be an object",
    ),
    Case(
        "sae-dtype-unknown",
        _eval_saes(lambda e: e.sae_cfg(_put("dtype", "float8"))),
        "dtype must be one of",
    ),
    Case("sae-no-d_sae", _eval_saes(lambda e: e.sae_cfg(_del("d_sae"))), "'d_sae' is missing"),
    Case("sae-k-negative", _eval_saes(lambda e: e.sae_cfg(_put("k", -1))), "k must be"),
    Case("sae-k-float", _eval_saes(lambda e: e.sae_cfg(_put("k", 2.5))), "k must be"),
    Case(
        "sae-apply-b-dec-string",
        _eval_saes(lambda e: e.sae_cfg(_put("apply_b_dec_to_input", "yes"))),
        "apply_b_dec_to_input must be true or false",
    ),
    Case(
        "sae-metadata-list",
        _eval_saes(lambda e: e.sae_cfg(_put("metadata", [1]))),
        "metadata must be",
    ),
    Case(
        "sae-architecture-unknown",
        _eval_saes(lambda e: e.sae_cfg(_put("architecture", "gated"))),
        "not supported",
    ),
    Case(
        "sae-cfg-broken-json",
        _eval_saes(lambda e: e.saes(lambda f: (f / "resid_post.1" / "cfg.json").write_text("{,"))),
        "not valid JSON",
    ),
    Case(
        "sae-cfg-not-utf8",
        _eval_saes(
            lambda e: e.saes(lambda f: (f / "resid_post.1" / "cfg.json").write_bytes(b"\xff\xfe{"))
        ),
        "not UTF-8",
    ),
    Case("saeset-no-points", _eval_saes(lambda e: e.sae_index(_del("points"))), "'points'"),
    Case(
        "saeset-points-numbers",
        _eval_saes(lambda e: e.sae_index(_put("points", [1, 2]))),
        "points[0]",
    ),
    Case(
        "saeset-points-empty",
        _eval_saes(lambda e: e.sae_index(_put("points", []))),
        "points must be a non-empty list",
    ),
    Case(
        "saeset-points-repeated",
        _eval_saes(lambda e: e.sae_index(_put("points", ["resid_post.1", "resid_post.1"]))),
        "twice",
    ),
    Case(
        "saeset-model-string",
        _eval_saes(lambda e: e.sae_index(_put("model", "tiny"))),
        "model must be an object",
    ),
    Case("saeset-a-list", _eval_saes(lambda e: e.sae_index(lambda d: [d])), "must be an object"),
    Case("sae-weights-nan", _eval_saes(lambda e: e.sae_weights(_nan_weights)), "NaN"),
    Case("sae-weights-inf", _eval_saes(lambda e: e.sae_weights(_inf_weights)), "NaN or infinite"),
    Case(
        "sae-weights-truncated",
        _eval_saes(
            lambda e: e.saes(
                lambda f: (f / "resid_post.1" / "sae_weights.safetensors").write_bytes(b"\x08")
            )
        ),
        "corrupt or truncated",
    ),
    Case(
        "sae-weights-shape",
        _eval_saes(lambda e: e.sae_weights(lambda t: t.__setitem__("b_dec", torch.zeros(3)))),
        "has shape",
    ),
    Case(
        "sae-weights-missing-tensor",
        _eval_saes(lambda e: e.sae_weights(lambda t: t.pop("W_enc"))),
        "lacks the tensor",
    ),
    Case(
        "sae-set-missing",
        lambda e: ["eval-saes", str(e.tmp / "none"), *e.model],
        "no SAE set",
    ),
    Case(
        "sae-eval-bad-layers",
        lambda e: ["eval-saes", str(e.w.saes), *e.model, "--layers", "x"],
        "bad layer list",
    ),
    # ---- latent sets (latents.json)
    Case("features-k-string", _steer_features(_put_in("intervention", "k", "5")), "k must be"),
    Case(
        "features-value-string",
        _steer_features(_put_in("intervention", "value", "big")),
        "intervention.value must be a finite number",
    ),
    Case(
        "features-mode-unknown",
        _steer_features(_put_in("intervention", "mode", "double")),
        "intervention.mode",
    ),
    Case(
        "features-model-string",
        _steer_features(_put("model", "tiny")),
        "model must be an object",
    ),
    Case(
        "features-hash-blank",
        _steer_features(_put_in("model", "weights_sha256", "")),
        "weights_sha256 must be a non-empty string",
    ),
    Case(
        "features-hash-missing",
        _steer_features(_del("weights_sha256", inside="model")),
        "'model.weights_sha256' is missing",
    ),
    Case(
        "features-layer-string",
        _steer_features(lambda d: d["latents"][0].__setitem__("layer", "1")),
        "latents[0].layer",
    ),
    Case(
        "features-score-string",
        _steer_features(lambda d: d["latents"][1].__setitem__("score", "high")),
        "latents[1].score",
    ),
    Case(
        "features-protocol-unknown",
        _steer_features(_put("protocol", "sometimes")),
        "protocol must be one of",
    ),
    Case(
        "features-per-prompt-row",
        _steer_features(lambda d: d["per_prompt"][0].__setitem__("latents", [[1, 2]])),
        "per_prompt[0].latents[0]",
    ),
    Case(
        "features-fingerprint-missing",
        _steer_features(_del("fingerprint", inside="saes")),
        "'saes.fingerprint' is missing",
    ),
    Case(
        "features-a-list",
        _steer_features(lambda d: [d]),
        "must be an object",
    ),
    Case(
        "features-broken-json",
        lambda e: e.steer(e.write("latents.json", '{"model": ')),
        "not valid JSON",
    ),
    Case(
        "features-missing",
        lambda e: e.steer(str(e.tmp / "nope" / "latents.json")),
        "no latent set",
    ),
    Case(
        "features-other-weights-same-name",
        _steer_features(_put_in("model", "weights_sha256", "e" * 64)),
        "has weights",
    ),
    Case(
        "features-k-too-big",
        lambda e: e.steer(str(e.w.latents), "--k", "50"),
        "ranks 3 latents",
    ),
    Case(
        "features-retain-broken",
        lambda e: e.steer(str(e.w.latents), "--retain", e.features(_put("latents", "many"))),
        "latents must be a list",
    ),
    Case(
        "validate-attribution-info-bad",
        lambda e: [
            "validate-attribution",
            *e.model,
            "--latents",
            e.features(lambda d: d["info"]["refusal_token"].__setitem__("id", "five")),
        ],
        "info.refusal_token.id",
    ),
    Case(
        "latent-cards-k-too-big",
        lambda e: [
            "latent-cards",
            *e.model,
            "--latents",
            str(e.w.latents),
            "--k",
            "9",
            "--out",
            str(e.tmp / "cards"),
        ],
        "asked for the top 9",
    ),
    Case(
        "compare-broken-set",
        lambda e: ["compare", e.features(_del("method")), "--out", str(e.tmp / "c"), *e.model],
        "'method' is missing",
    ),
    # ---- settings: benchmark, run and the analyses, before any stage
    _set("datasets=nosuchset", "unknown dataset"),
    _set("limit=0", "limit must be positive"),
    _set("induce_values=nan", "not a finite number"),
    _set("xstest_limit=-5", "negative"),
    _set("n_induce=-1", "negative"),
    _set("n_induce=0", "n_induce must be positive"),
    _set("judges=nosuchjudge", "unknown judge"),
    _set("judges=substring,substring", "repeated"),
    _set("methods=magic", "unknown method"),
    _set("k=abc", "not a valid int"),
    _set("nosuchsetting=1", "unknown setting"),
    _set("scale=inf", "not a finite number"),
    _set("capabilities.limit=-1", "negative"),
    _set("rollout_tokens=0", "rollout_tokens must be positive"),
    _set("harmless=nosuchset", "unknown dataset"),
    _set("datasets=nosuchset", "unknown dataset", command="run"),
    _set("harmless=./my_harmless.csv", "does not exist", command="run"),
    _set("limit=0", "limit must be positive", command="run"),
    Case(
        "benchmark-harmless-typo-with-data-dir",
        lambda e: e.bench(
            "--data-dir",
            e.empty_data(),
            "--set",
            "datasets=builtin_harmful_test",
            "--set",
            "harmless=alpacca",
        ),
        "unknown dataset 'alpacca'",
    ),
    Case(
        "benchmark-generic-text-typo",
        lambda e: e.bench(
            "--data-dir",
            e.empty_data(),
            "--set",
            "datasets=builtin_harmful_test",
            "--set",
            "harmless=builtin_harmless_test",
            "--set",
            "generic_text=gutenbrg",
        ),
        "unknown mixture source",
    ),
    Case(
        "run-dataset-typo-with-data-dir",
        lambda e: e.bench("--data-dir", e.empty_data(), "--set", "datasets=advbnch", command="run"),
        "unknown dataset 'advbnch'",
    ),
    Case(
        "benchmark-direction-missing",
        lambda e: e.bench(*BUILTIN, "--direction", str(e.tmp / "nodir")),
        "no direction in",
    ),
    Case(
        "benchmark-saes-missing",
        lambda e: e.bench(*BUILTIN, "--saes", str(e.tmp / "nos")),
        "no SAE set",
    ),
    Case(
        "benchmark-env-limit-zero",
        lambda e: e.monkeypatch.setenv("REFUSAL_LENS_BENCH_LIMIT", "0") or e.bench(),
        "limit must be positive",
    ),
    Case(
        "benchmark-toml-not-utf8",
        lambda e: e.bench("--config", _toml(e, b"[benchmark]\nlimit = 3 # \xff\n")),
        "not UTF-8",
    ),
    Case(
        "benchmark-toml-broken",
        lambda e: e.bench("--config", _toml(e, "[benchmark\nlimit = 3\n")),
        "not valid TOML",
    ),
    Case(
        "benchmark-toml-wrong-type",
        lambda e: e.bench("--config", _toml(e, '[benchmark]\nlimit = "ten"\n')),
        "not a valid int",
    ),
    Case(
        "benchmark-toml-missing",
        lambda e: e.bench("--config", str(e.tmp / "none.toml")),
        "does not exist",
    ),
    Case(
        "run-toml-outside-table",
        lambda e: e.bench("--config", _toml(e, "limit = 3\n"), command="run"),
        "belong in a [benchmark] table",
    ),
    Case(
        "categories-common-fraction-nan",
        lambda e: e.analysis("categories", "--set", "common_fraction=nan"),
        "not a finite number",
    ),
    Case(
        "categories-dataset-typo",
        lambda e: e.analysis("categories", "--dataset", "strongrject"),
        "unknown dataset",
    ),
    Case(
        "categories-judge-typo",
        lambda e: e.analysis(
            "categories", "--dataset", "builtin_harmful", "--set", "judge=substrng"
        ),
        "unknown judge",
    ),
    Case(
        "minimal-keep-inf",
        lambda e: e.analysis("minimal", "--set", "keep=inf"),
        "not a finite number",
    ),
    Case(
        "minimal-test-dataset-typo",
        lambda e: e.analysis(
            "minimal", "--set", "dataset=builtin_harmful", "--set", "test_dataset=jbb"
        ),
        "unknown dataset 'jbb'",
    ),
    Case(
        "defend-val-fraction-one",
        lambda e: e.analysis(
            "defend", "--harm-latents", str(e.w.latents), "--set", "val_fraction=1"
        ),
        "val_fraction is in (0, 1)",
    ),
    Case(
        "defend-source-missing-file",
        lambda e: e.analysis(
            "defend", "--harm-latents", str(e.w.latents), "--source", str(e.tmp / "attacks.csv")
        ),
        "unknown adversarial source",
    ),
    Case(
        "defend-without-harm-latents",
        lambda e: e.analysis("defend"),
        "pass --harm-latents",
    ),
    Case(
        "probes-n-train-negative",
        lambda e: e.analysis("probes", "--set", "n_train=-3"),
        "negative",
    ),
    Case(
        "probes-source-missing-file",
        lambda e: e.analysis("probes", "--source", str(e.tmp / "attacks.jsonl")),
        "unknown adversarial source",
    ),
    Case(
        "circuits-clamp-nan",
        lambda e: e.analysis("circuits", "--set", "clamp_value=nan"),
        "not a finite number",
    ),
    Case(
        "circuits-dataset-typo",
        lambda e: e.analysis(
            "circuits", "--set", "dataset=harmfull", "--harm-latents", str(e.w.latents)
        ),
        "unknown dataset 'harmfull'",
    ),
    Case(
        "jailbreaks-source-typo",
        lambda e: e.analysis("jailbreaks", "--source", "sufixes"),
        "unknown jailbreak source",
    ),
    Case(
        "jailbreaks-broken-latents",
        lambda e: [
            *e.analysis("jailbreaks", "--source", "suffixes"),
            "--latents",
            e.features(_put("selected_on", [1])),
        ],
        "selected_on must be",
    ),
    Case(
        "analyze-only-typo",
        lambda e: ["analyze", str(e.w.bench), *e.model, "--only", "categoris"],
        "unknown analysis",
    ),
    Case(
        "analyze-not-a-run",
        lambda e: ["analyze", str(e.tmp), *e.model],
        "no benchmark.json",
    ),
    # ---- outputs: checked before any work, model included (a bogus model proves the order)
    Case(
        "out-refusal-rate-under-file",
        lambda e: [
            "refusal-rate",
            "--model",
            "/no/such/model.gguf",
            "--dataset",
            "builtin_harmful",
            "--out",
            e.blocked(),
        ],
        "is a file, not a folder",
    ),
    Case(
        "out-refusal-rate-proc",
        lambda e: [
            "refusal-rate",
            "--model",
            "/no/such/model.gguf",
            "--dataset",
            "builtin_harmful",
            "--out",
            "/proc/refusal-lens-test/run",
        ],
        "--out",
    ),
    Case(
        "out-generate-under-file",
        lambda e: [
            "generate",
            "--model",
            "/no/such/model.gguf",
            "--dataset",
            "builtin_harmful",
            "--output",
            e.blocked("o.jsonl"),
        ],
        "--output",
    ),
    Case(
        "out-generate-proc",
        lambda e: [
            "generate",
            "--model",
            "/no/such/model.gguf",
            "--dataset",
            "builtin_harmful",
            "--output",
            "/proc/refusal-lens-test.jsonl",
        ],
        "--output",
    ),
    Case(
        "out-generate-overwrites-input",
        lambda e: [
            "generate",
            "--model",
            "/no/such/model.gguf",
            "--dataset",
            e.write("p.jsonl", '"hello"\n'),
            "--output",
            str(e.tmp / "p.jsonl"),
        ],
        "is an input",
    ),
    Case(
        "out-benchmark-under-file",
        lambda e: [
            "benchmark",
            "--model",
            "/no/such/model.gguf",
            *BUILTIN,
            "--out",
            e.blocked(),
        ],
        "is a file, not a folder",
    ),
    Case(
        "out-direction-under-file",
        lambda e: ["direction", "--model", "/no/such/model.gguf", "--out", e.blocked()],
        "is a file, not a folder",
    ),
    Case(
        "out-direction-is-a-file",
        lambda e: ["direction", "--model", "/no/such/model.gguf", "--out", e.write("f", "x")],
        "not a folder",
    ),
    Case(
        "out-run-under-file",
        lambda e: [
            "run",
            "--model",
            "/no/such/model.gguf",
            "--data-dir",
            e.empty_data(),
            "--set",
            "datasets=builtin_harmful_test",
            "--set",
            "harmless=builtin_harmless_test",
            "--set",
            "generic_text=" + e.write("g.txt", _paragraphs()),
            "--set",
            "xstest_limit=0",
            "--set",
            "judges=substring",
            "--set",
            "agreement_limit=0",
            "--set",
            "capabilities.tasks=",
            "--saes",
            str(e.w.saes),
            "--direction",
            str(e.w.direction),
            "--out",
            e.blocked(),
        ],
        "is a file, not a folder",
    ),
    Case(
        "out-train-saes-under-file",
        lambda e: [
            "train-saes",
            "--model",
            "/no/such/model.gguf",
            "--layers",
            "1",
            "--out",
            e.blocked(),
        ],
        "is a file, not a folder",
    ),
    Case(
        "out-train-saes-activations-under-file",
        lambda e: [
            "train-saes",
            "--model",
            "/no/such/model.gguf",
            "--out",
            str(e.tmp / "s"),
            "--activations",
            e.blocked(),
        ],
        "--activations",
    ),
    Case(
        "out-train-saes-no-out-with-flags",
        lambda e: ["train-saes", "--model", "/no/such/model.gguf", "--layers", "1"],
        "pass --out",
    ),
    Case(
        "out-eval-saes-under-file",
        lambda e: [
            "eval-saes",
            str(e.w.saes),
            "--model",
            "/no/such/model.gguf",
            "--out",
            e.blocked(),
        ],
        "is a file, not a folder",
    ),
    Case(
        "out-find-latents-under-file",
        lambda e: ["find-latents", "--model", "/no/such/model.gguf", "--out", e.blocked()],
        "is a file, not a folder",
    ),
    Case(
        "out-latent-cards-under-file",
        lambda e: [
            "latent-cards",
            "--model",
            "/no/such/model.gguf",
            "--latents",
            str(e.w.latents),
            "--out",
            e.blocked(),
        ],
        "is a file, not a folder",
    ),
    Case(
        "out-compare-under-file",
        lambda e: [
            "compare",
            str(e.w.latents),
            "--model",
            "/no/such/model.gguf",
            "--datasets",
            "builtin_harmful_test",
            "--harmless-kl",
            "builtin_harmless_test",
            "--out",
            e.blocked(),
        ],
        "is a file, not a folder",
    ),
    Case(
        "out-steer-under-file",
        lambda e: [
            "steer",
            "--model",
            "/no/such/model.gguf",
            "--latents",
            str(e.w.latents),
            "--dataset",
            "builtin_harmless_test",
            "--out",
            e.blocked(),
        ],
        "is a file, not a folder",
    ),
    Case(
        "out-validate-attribution-missing-folder",
        lambda e: [
            "validate-attribution",
            "--model",
            "/no/such/model.gguf",
            "--latents",
            str(e.w.latents),
            "--out",
            e.blocked("v.json"),
        ],
        "is a file",
    ),
    Case(
        "out-categories-under-file",
        lambda e: [
            *e.analysis("categories", "--dataset", "builtin_harmful"),
            "--out",
            e.blocked(),
            "--model",
            "/no/such/model.gguf",
        ],
        "is a file, not a folder",
    ),
    Case(
        "out-results-is-a-folder",
        lambda e: ["results", str(e.w.store), "--out", str(e.tmp)],
        "is a folder",
    ),
    Case(
        "out-results-is-the-store",
        lambda e: [
            "results",
            str(e.w.store),
            "--out",
            str(e.w.store),
        ],
        "is an input",
    ),
    Case(
        "out-results-under-file",
        lambda e: ["results", str(e.w.store), "--out", e.blocked("rows.csv")],
        "is a file",
    ),
    Case(
        "out-judge-agreement-under-file",
        lambda e: ["judge-agreement", "--judge", "substring", "--out", e.blocked()],
        "is a file, not a folder",
    ),
    # ---- results stores: read-only, must be a store
    Case("results-empty-file", lambda e: ["results", e.write("r.sqlite", b"")], "is empty"),
    Case(
        "results-text-file",
        lambda e: ["results", e.write("r.sqlite", "hello, I am text\n" * 20)],
        "not a refusal-lens results store",
    ),
    Case(
        "results-foreign-sqlite",
        lambda e: ["results", _foreign_sqlite(e)],
        "not a refusal-lens results store",
    ),
    Case("results-missing", lambda e: ["results", str(e.tmp / "none")], "no results store"),
    Case(
        "results-where-unknown-column",
        lambda e: ["results", str(e.w.store), "--where", "colour=red"],
        "no column 'colour'",
    ),
    Case(
        "results-where-not-pair",
        lambda e: ["results", str(e.w.store), "--where", "colour"],
        "not COLUMN=VALUE",
    ),
    # ---- report
    Case("report-no-benchmark", lambda e: ["report", str(e.tmp)], "no benchmark.json"),
    Case(
        "report-agreement-missing",
        lambda e: ["report", str(e.w.bench), "--agreement", str(e.tmp / "a.json")],
        "--agreement",
    ),
    Case(
        "report-benchmark-broken",
        lambda e: ["report", e.write("b/benchmark.json", "{").rsplit("/", 1)[0]],
        "not valid JSON",
    ),
    Case(
        "report-benchmark-model-string",
        lambda e: [
            "report",
            e.json(
                "b/benchmark.json",
                {**json.loads(e.w.bench.joinpath("benchmark.json").read_text()), "model": "tiny"},
            ).rsplit("/", 1)[0],
        ],
        "model must be an object",
    ),
    Case(
        "report-agreement-rows-wrong",
        lambda e: [
            "report",
            str(e.w.bench),
            "--agreement",
            e.json("a.json", {"rows": [{"judge": {"name": "s"}, "dataset": "x", "n": "ten"}]}),
        ],
        "rows[0]",
    ),
    # ---- judges and judge agreement
    Case(
        "judge-agreement-unknown-judge",
        lambda e: ["judge-agreement", "--judge", "oracle", "--out", str(e.tmp / "j")],
        "unknown judge",
    ),
    Case(
        "judge-agreement-unknown-option",
        lambda e: ["judge-agreement", "--judge", "substring:strict=1", "--out", str(e.tmp / "j")],
        "no option strict",
    ),
    Case(
        "judge-agreement-unknown-set",
        lambda e: ["judge-agreement", "--sets", "mmlu", "--out", str(e.tmp / "j")],
        "unknown labelled set",
    ),
    Case(
        "judge-agreement-no-data",
        lambda e: ["judge-agreement", "--judge", "substring", "--out", str(e.tmp / "j")],
        "data directory",
    ),
    # ---- judging a file, training the learned judge
    Case(
        "judge-missing-file",
        lambda e: ["judge", str(e.tmp / "none.jsonl"), "--out", str(e.tmp / "j")],
        "does not exist",
    ),
    Case(
        "judge-file-without-response",
        lambda e: [
            "judge",
            e.write("p.csv", "prompt,answer\nhow,sure\n"),
            "--out",
            str(e.tmp / "j"),
        ],
        "needs columns prompt and response",
    ),
    Case(
        "judge-file-number-response",
        lambda e: [
            "judge",
            e.write("p.jsonl", '{"prompt": "how", "response": 5}\n'),
            "--out",
            str(e.tmp / "j"),
        ],
        "must be strings",
    ),
    Case(
        "judge-file-bad-label",
        lambda e: [
            "judge",
            e.write("p.jsonl", '{"prompt": "how", "response": "sure", "label": "perhaps"}\n'),
            "--out",
            str(e.tmp / "j"),
        ],
        "label 'perhaps'",
    ),
    Case(
        "judge-first-token",
        lambda e: [
            "judge",
            e.write("p.jsonl", '{"prompt": "how", "response": "sure"}\n'),
            "--judge",
            "first-token",
            "--out",
            str(e.tmp / "j"),
        ],
        "not a given completion",
    ),
    Case(
        "judge-out-under-file",
        lambda e: [
            "judge",
            e.write("p.jsonl", '{"prompt": "how", "response": "sure"}\n'),
            "--judge",
            "substring",
            "--out",
            e.blocked(),
        ],
        "--out",
    ),
    Case(
        "judge-learned-bad-threshold",
        lambda e: [
            "judge",
            e.write("p.jsonl", '{"prompt": "how", "response": "sure"}\n'),
            "--judge",
            "learned:threshold=high",
            "--out",
            str(e.tmp / "j"),
        ],
        "bad value",
    ),
    Case(
        "train-judge-epochs-word",
        lambda e: ["train-judge", "--set", "epochs=two"],
        "epochs",
    ),
    Case(
        "train-judge-zero-epochs",
        lambda e: ["train-judge", "--set", "epochs=0"],
        "out of range",
    ),
    Case(
        "train-judge-unknown-setting",
        lambda e: ["train-judge", "--set", "layers=3"],
        "unknown setting",
    ),
    Case(
        "train-judge-missing-labels",
        lambda e: ["train-judge", "--set", f"train_sets={e.tmp / 'none.csv'}"],
        "does not exist",
    ),
    Case(
        "train-judge-no-data",
        lambda e: ["train-judge"],
        "data directory",
    ),
    # ---- other flags that only the command can check
    Case(
        "compare-induce-values-without-set",
        lambda e: [
            "compare",
            str(e.w.latents),
            *e.model,
            "--datasets",
            "builtin_harmful_test",
            "--harmless-kl",
            "",
            "--induce-values",
            "4",
            "--out",
            str(e.tmp / "c"),
        ],
        "--induce-on",
    ),
    Case(
        "compare-induce-values-words",
        lambda e: ["compare", str(e.w.latents), "--induce-values", "a,b", "--out", str(e.tmp)],
        "comma-separated numbers",
    ),
    Case(
        "compare-nothing",
        lambda e: ["compare", "--out", str(e.tmp / "c")],
        "nothing to compare",
    ),
    Case(
        "compare-dataset-typo",
        lambda e: ["compare", str(e.w.latents), "--datasets", "advbnch", "--out", str(e.tmp)],
        "unknown dataset 'advbnch'",
    ),
    Case(
        "find-latents-search-ks-words",
        lambda e: ["find-latents", "--out", str(e.tmp / "f"), "--search-ks", "a,b"],
        "--search-ks",
    ),
    Case(
        "find-latents-search-scales-nan",
        lambda e: ["find-latents", "--out", str(e.tmp / "f"), "--search-scales=nan"],
        "finite",
    ),
    Case(
        "find-latents-direction-broken",
        lambda e: [
            "find-latents",
            "--out",
            str(e.tmp / "f"),
            "--direction",
            e.direction(_put("layer", -4)),
        ],
        "layer must be an integer >= 0",
    ),
    Case(
        "find-latents-train-typo",
        lambda e: ["find-latents", "--out", str(e.tmp / "f"), "--train", "harmfull_train"],
        "unknown dataset",
    ),
    Case(
        "steer-per-prompt-with-retain",
        lambda e: e.steer(str(e.w.latents), "--per-prompt", "--retain", str(e.w.latents)),
        "cannot be combined",
    ),
    Case(
        "steer-harmless-kl-typo",
        lambda e: e.steer(str(e.w.latents), "--harmless-kl", "alpacca"),
        "unknown dataset",
    ),
    Case(
        "train-saes-layers-backwards",
        lambda e: ["train-saes", "--layers", "5-2", "--out", str(e.tmp / "s")],
        "names no layer",
    ),
    Case(
        "train-saes-width-zero",
        lambda e: ["train-saes", "--width", "0x", "--out", str(e.tmp / "s")],
        "--width must be positive",
    ),
    Case(
        "train-saes-tokens-word",
        lambda e: ["train-saes", "--tokens", "lots", "--out", str(e.tmp / "s")],
        "bad count",
    ),
    Case(
        "train-saes-mixture-typo",
        lambda e: ["train-saes", "--mixture", "gutenbreg=1", "--out", str(e.tmp / "s")],
        "unknown mixture source",
    ),
    Case(
        "train-saes-lr-zero",
        lambda e: ["train-saes", "--lr", "0", "--out", str(e.tmp / "s")],
        "--lr must be positive",
    ),
    Case(
        "direction-prune-fraction",
        lambda e: ["direction", "--out", str(e.tmp / "d"), "--prune-layer-fraction", "1.5"],
        "--prune-layer-fraction",
    ),
    Case(
        "direction-dataset-typo",
        lambda e: ["direction", "--out", str(e.tmp / "d"), "--harmful-train", "harmfull"],
        "unknown dataset",
    ),
    # ---- playground: nothing to play with, a folder that is no run, bad sets and judges
    Case("playground-nothing", lambda e: ["playground", *e.model], "pass a run folder"),
    Case(
        "playground-not-a-run",
        lambda e: ["playground", str(e.tmp)],
        "not a finished benchmark run",
    ),
    Case(
        "playground-latents-not-json",
        lambda e: ["playground", "--latents", e.write("l/latents.json", "{oops")],
        "latents.json",
    ),
    Case(
        "playground-unknown-judge",
        lambda e: [
            "playground",
            "--direction",
            str(e.tmp),
            "--judges",
            "oracle",
        ],
        "oracle",
    ),
]


def _ids() -> list[str]:
    return [case.id for case in CASES]


def test_the_cases_are_many_distinct_and_cover_every_command(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(CASES) >= 100
    assert len(set(_ids())) == len(CASES)
    commands = set()
    for index, case in enumerate(CASES):
        folder = tmp_path / str(index)
        folder.mkdir()
        commands.add(case.build(Env(world, folder, monkeypatch))[0])
    listings = {"models", "datasets", "judges"}  # take no input
    assert commands >= set(cli.COMMANDS) - listings, set(cli.COMMANDS) - listings - commands


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's own errors exit
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, needle: str) -> None:
    assert "Traceback" not in out + err, err
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and lines[0].strip() != "error:", err
    assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("case", CASES, ids=_ids())
def test_bad_input_is_one_line(
    case: Case,
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths a case names stay inside its folder
    argv = case.build(Env(world, tmp_path, monkeypatch))
    capsys.readouterr()
    code, out, err = run_cli(argv, capsys)
    assert_one_line_error(code, out, err, case.needle)


# --------------------------------------------------------------------------- side effects


def test_pickled_weights_are_never_unpickled(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    env = Env(world, tmp_path, monkeypatch)
    folder = _pickle_only_model(env)
    argv = ["refusal-rate", "--model", folder, "--dataset", "builtin_harmful"]
    code, out, err = run_cli(argv, capsys)
    assert_one_line_error(code, out, err, "pickled")
    assert not (tmp_path / "UNPICKLED").exists()


def test_the_compliance_judge_never_unpickles_its_embedder(
    world: World, tmp_path: Path, shared_data: Path, capsys
) -> None:
    folder = tmp_path / "embedder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": 1}))
    argv = [
        "judge-agreement",
        "--model",
        str(world.model),
        "--judge",
        f"compliance:embedder={folder}",
        "--sets",
        "xstest",
        "--limit",
        "2",
        "--data-dir",
        str(shared_data),
        "--out",
        str(tmp_path / "judges"),
    ]
    code, out, err = run_cli(argv, capsys)
    assert_one_line_error(code, out, err, "pickled weights")


def test_results_never_writes_into_the_users_file(tmp_path: Path, capsys) -> None:
    for content in (b"", b"just some text\n"):
        path = tmp_path / "mine.sqlite"
        path.write_bytes(content)
        code, out, err = run_cli(["results", str(path)], capsys)
        assert_one_line_error(code, out, err, str(path))
        assert path.read_bytes() == content
        assert not path.with_name("mine.sqlite-wal").exists()


def test_results_reads_a_valid_store_read_only(world: World, tmp_path: Path, capsys) -> None:
    store = tmp_path / "results.sqlite"
    shutil.copy(world.store, store)
    before = store.read_bytes()
    code, out, err = run_cli(["results", str(store), "--format", "json"], capsys)
    assert code == 0 and json.loads(out) == [], err
    assert store.read_bytes() == before


def test_bad_input_leaves_no_output_behind(world: World, tmp_path: Path, capsys) -> None:
    """A setting typo fails before the run folder gets a manifest or a store."""
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["benchmark", "--model", str(world.model), "--set", "datasets=nosuch", "--out", str(out)],
        capsys,
    )
    assert_one_line_error(code, "", err, "unknown dataset")
    assert not out.exists()


def test_a_cut_jsonl_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.append_jsonl("judges/chunks.jsonl", "k", [{"start": 0}])
    with (tmp_path / "judges" / "chunks.jsonl").open("a") as handle:
        handle.write('{"key": "k", "start": 16, "predic')  # killed mid-write
    run.append_jsonl("judges/chunks.jsonl", "k", [{"start": 16}])
    assert [r["start"] for r in run.read_jsonl("judges/chunks.jsonl", "k")] == [0, 16]
    with (tmp_path / "judges" / "chunks.jsonl").open("a") as handle:
        handle.write('{"key": "k", "start": 32}')  # whole record, newline lost
    run.append_jsonl("judges/chunks.jsonl", "k", [{"start": 48}])
    with (tmp_path / "judges" / "chunks.jsonl").open("a") as handle:
        handle.write("[1, 2")  # a fragment that is not a record
    assert [r["start"] for r in run.read_jsonl("judges/chunks.jsonl", "k")] == [0, 16, 32, 48]


def test_gguf_conversion_uses_a_lock_and_a_private_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from refusal_lens.models import loading

    held: list[Path] = []
    written: list[Path] = []

    class Locked:
        def __init__(self, path: Path) -> None:
            held.append(path)

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    def fake(gguf: Path, out: Path, digest: str) -> None:
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        written.append(tmp)

    monkeypatch.setattr(loading, "exclusive", Locked)
    monkeypatch.setattr(loading, "_convert_unlocked", fake)
    loading._convert(tmp_path / "m.gguf", tmp_path / "models" / "m-abc", "abc")
    assert held == [tmp_path / "models" / "m-abc.lock"]
    assert str(os.getpid()) in written[0].name


# --------------------------------------------------------------------------- the real entry point


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["results", "EMPTY"], "is empty"),
        (
            ["benchmark", "--model", "/no/such/model.gguf", "--set", "limit=0", "--out", "OUT"],
            "limit must be positive",
        ),
        (["refusal-rate", "--dataset", "x", "--limit", "0"], "must be a positive integer"),
    ],
    ids=["results-empty", "benchmark-limit-zero", "parser"],
)
def test_the_installed_entry_point_prints_one_line(
    argv: list[str], needle: str, tmp_path: Path
) -> None:
    (tmp_path / "EMPTY").write_bytes(b"")
    argv = [str(tmp_path / a) if a in ("EMPTY", "OUT") else a for a in argv]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REFUSAL_LENS_BENCH_")}
    done = subprocess.run(
        [sys.executable, "-m", "refusal_lens.cli", *argv],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert_one_line_error(done.returncode, done.stdout, done.stderr, needle)
    assert (tmp_path / "EMPTY").read_bytes() == b""
