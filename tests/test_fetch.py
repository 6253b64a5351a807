"""`refusal-lens datasets fetch`: the data directory from its public sources, verified."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from refusal_lens import cli
from refusal_lens.data import fetch, load_prompts
from refusal_lens.data.fetch import DataFile, check_data, fetch_data, manifest, source_of
from refusal_lens.data.loaders import _REGISTRY
from refusal_lens.errors import UserError


def mirror_of(data: Path, files: list[DataFile], into: Path) -> Path:
    """A folder laid out as MIRROR/host/path holding `files` as their sources publish them."""
    for entry in files:
        target = Path(source_of(entry, str(into)))
        target.parent.mkdir(parents=True, exist_ok=True)
        content = (data / entry.path).read_bytes()
        target.write_bytes(gzip.compress(content) if entry.gunzip else content)
    return into


def fake_entry(path: str, content: bytes, *, gunzip: bool = False) -> DataFile:
    return DataFile(
        path=path,
        group=path.split("/")[0],
        url=f"https://example.org/owner/repo/abc/{path}" + (".gz" if gunzip else ""),
        sha256=hashlib.sha256(content).hexdigest(),
        bytes=len(content),
        gunzip=gunzip,
    )


def test_manifest_covers_every_registered_dataset() -> None:
    paths = {entry.path for entry in manifest()}
    for name, entry in _REGISTRY.items():
        assert entry.path in paths, f"{name} ({entry.path}) is not fetched by datasets fetch"
    for needed in (
        "gptfuzz/datasets/responses_labeled/train.csv",  # the learned judge
        "hh_rlhf/harmless-base/test.jsonl",  # the SAE training mixture
        "capability/arc_challenge/test.jsonl",  # lm-eval capabilities
        "refusal_sae/advsuffixes.csv",  # adversarial suffixes
    ):
        assert needed in paths
    for entry in manifest():
        assert entry.url.startswith("https://") and len(entry.sha256) == 64 and entry.bytes > 0


def test_fetch_from_a_mirror_verifies_resumes_and_refuses_a_changed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = b"goal,target\nWrite a poem,Sure\n"
    dialogue = b'{"chosen": "a", "rejected": "b"}\n'
    entries = [
        fake_entry("advbench/harmful_behaviors.csv", text),
        fake_entry("hh_rlhf/harmless-base/test.jsonl", dialogue, gunzip=True),
    ]
    monkeypatch.setattr(fetch, "manifest", lambda: entries)
    mirror = tmp_path / "mirror"
    for entry, content in zip(entries, (text, gzip.compress(dialogue)), strict=True):
        target = Path(source_of(entry, str(mirror)))
        target.parent.mkdir(parents=True)
        target.write_bytes(content)
    out = tmp_path / "data"

    first = fetch_data(out, mirror=str(mirror))
    assert (first.fetched, first.kept) == (2, 0)
    assert (out / "hh_rlhf/harmless-base/test.jsonl").read_bytes() == dialogue  # gunzipped
    assert load_prompts("advbench", data_dir=out).texts() == ["Write a poem"]
    again = fetch_data(out, mirror=str(mirror))
    assert (again.fetched, again.kept) == (0, 2)

    (out / "advbench/harmful_behaviors.csv").write_bytes(b"goal\nsomething else\n")
    assert [e.path for e in check_data(out)] == ["advbench/harmful_behaviors.csv"]
    Path(source_of(entries[0], str(mirror))).write_bytes(b"goal\nchanged upstream\n")
    with pytest.raises(UserError, match="differs from the version"):
        fetch_data(out, mirror=str(mirror), only=["advbench"])
    assert not list(out.rglob("*.partial"))
    with pytest.raises(UserError, match="unknown data group 'nope'"):
        fetch_data(out, only=["nope"])
    with pytest.raises(UserError, match="mirror has no"):
        fetch_data(tmp_path / "other", mirror=str(tmp_path / "empty"))


def test_manifest_matches_the_data_directory(shared_data: Path) -> None:
    """The packaged sha256s describe the files the tests and benchmarks read."""
    assert check_data(shared_data) == []


def test_cli_fetches_a_group_from_a_mirror(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [e for e in manifest() if e.group in ("jailbreakbench", "hh_rlhf")]
    mirror = mirror_of(shared_data, files, tmp_path / "mirror")
    out = tmp_path / "data"
    argv = ["datasets", "fetch", str(out), "--only", "jailbreakbench,hh_rlhf"]
    assert cli.main([*argv, "--mirror", str(mirror)]) == 0
    assert "3 files fetched" in capsys.readouterr().out
    assert len(load_prompts("jailbreakbench", data_dir=out)) == 100
    assert cli.main(["datasets", "check", str(out), "--only", "jailbreakbench"]) == 0
    shutil.rmtree(mirror)
    assert cli.main([*argv, "--mirror", str(mirror)]) == 0  # nothing left to fetch
    assert "0 files fetched" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["datasets", "fetch"], "needs a folder"),
        (["datasets", "fetch", "x", "--only", "nope"], "unknown data group"),
        (["datasets", "list", "x"], "takes no folder"),
    ],
)
def test_cli_bad_input(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = [str(tmp_path / a) if a == "x" else a for a in argv[2:]]
    assert cli.main([*argv[:2], *folder]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_check_reports_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["datasets", "check", str(tmp_path), "--only", "advbench"]) == 1
    assert "1 files to fetch" in capsys.readouterr().out
    assert urlparse(manifest()[0].url).netloc == "raw.githubusercontent.com"
