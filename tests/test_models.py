from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import refusal_lens.models.loading as loading
from conftest import make_model
from refusal_lens.errors import UserError
from refusal_lens.models import ChatFormatter, LoadedModel, find_spec, load_model
from refusal_lens.models.registry import PackagedGGUF, require_spec


def test_registry_aliases() -> None:
    assert find_spec("qwen2.5-coder-0.5b-instruct").name == "qwen2.5-coder-0.5b-instruct"
    assert find_spec("QWEN05").name == "qwen2.5-coder-0.5b-instruct"
    assert find_spec("qwen15").name == "qwen2.5-coder-1.5b-instruct"
    assert find_spec("smollm2").name == "smollm2-135m-instruct"
    assert find_spec("nope") is None
    with pytest.raises(UserError, match="unknown model alias") as info:
        require_spec("nope")
    assert "\n" not in str(info.value)


def test_unknown_model_is_one_line_error() -> None:
    with pytest.raises(UserError, match="unknown model alias 'not-a-model'") as info:
        load_model("not-a-model", device="cpu")
    assert "\n" not in str(info.value)


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install 'refusal-lens\[qwen15\]'") as info:
        load_model("qwen15", device="cpu")
    assert "\n" not in str(info.value)


def test_parts_are_concatenated_in_order_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = [tmp_path / f"p{i}.bin" for i in range(3)]
    for i, part in enumerate(parts):
        part.write_bytes(bytes([i]) * 1000)
    whole = b"".join(p.read_bytes() for p in parts)
    src = PackagedGGUF(("a", "b", "c"), "x", "m.gguf", hashlib.sha256(whole).hexdigest(), "pip x")
    monkeypatch.setattr(loading, "_part_paths", lambda _src: parts)
    out = loading._assemble_parts(src, tmp_path / "out" / "m.gguf")
    assert out.read_bytes() == whole
    bad = PackagedGGUF(("a", "b", "c"), "x", "m.gguf", "0" * 64, "pip x")
    with pytest.raises(UserError, match="expected 000000000000"):
        loading._assemble_parts(bad, tmp_path / "out2" / "m.gguf")
    assert not (tmp_path / "out2" / "m.gguf").exists()


def test_local_hf_folder_loads_with_identity(tiny: LoadedModel, tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    loaded = load_model(str(folder), dtype="float32", device="cpu")
    assert loaded.n_layers == tiny.n_layers and loaded.dtype == torch.float32
    assert loaded.tokenizer.padding_side == "left"
    assert len(loaded.weights_sha256) == 64
    again = load_model(str(folder), dtype="bfloat16", device="cpu")
    assert again.weights_sha256 == loaded.weights_sha256 and again.dtype == torch.bfloat16
    ids = ChatFormatter(loaded.tokenizer).encode(["hello"])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(input_ids=ids.input_ids).logits,
            tiny.model(input_ids=ids.input_ids).logits,
            atol=1e-5,
            rtol=1e-5,
        )


def test_bad_model_paths(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no config\.json"):
        load_model(str(tmp_path / "empty"), device="cpu")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match=r"neither a \.gguf file"):
        load_model(str(tmp_path / "weights.bin"), device="cpu")
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf")
    with pytest.raises(UserError, match="not a GGUF file") as info:
        load_model(str(tmp_path / "broken.gguf"), device="cpu")
    assert "\n" not in str(info.value)


def test_dtype_and_device_errors() -> None:
    with pytest.raises(UserError, match="unknown dtype"):
        load_model("qwen05", dtype="float8", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            load_model("qwen05", device="cuda")


def test_conversion_marker_must_match(tmp_path: Path) -> None:
    folder = tmp_path / "conv"
    folder.mkdir()
    (folder / "refusal_lens_source.json").write_text(json.dumps({"gguf_sha256": "abc"}))
    assert loading._conversion_done(folder, "abc")
    assert not loading._conversion_done(folder, "def")


def test_unreachable_hub_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(*_args: object, **_kwargs: object) -> str:
        raise OSError("Name or service not known\nsecond line of a long trace")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match="could not be fetched from the HF hub") as info:
        load_model("Qwen/Qwen2.5-0.5B-Instruct", device="cpu")
    assert "\n" not in str(info.value) and "Name or service not known" in str(info.value)


@pytest.mark.parametrize("kind", ["qwen2", "llama", "gemma2"])
def test_a_shared_header_gives_the_logits_of_the_whole_batch(kind: str) -> None:
    """The header run once and shared (KV cache, padding between header and prompt) scores
    every row as the whole left-padded batch does, plain and under direction interventions."""
    from refusal_lens.interventions import AblateDirection, AddDirection, apply
    from refusal_lens.models.prefix import SharedHeader

    lm = make_model(kind, seed=3)
    formatter = ChatFormatter(lm.tokenizer)
    texts = ["Write a poem about the sea.", "Explain how to hack a computer right now.", "Hi"]
    batch = formatter.encode(texts)
    direction = torch.randn(lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    for edits in ([], [AblateDirection(direction)], [AddDirection(direction, 1, 4.0)]):
        header = SharedHeader(lm, formatter)
        split = header.split(batch)
        assert split is not None and split[0].shape[1] == batch.input_ids.shape[1] - len(
            formatter.pre_instruction_ids
        )
        with torch.no_grad(), apply(lm.model, edits):
            whole = lm.model(**batch.forward_kwargs(), logits_to_keep=1).logits[:, -1]
            shared = header.last_logits(*split)
            again = header.last_logits(*split)  # the header's cache is reused unchanged
        torch.testing.assert_close(shared, whole, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(again, shared)


def test_a_row_without_the_header_is_not_split(tiny: LoadedModel) -> None:
    from refusal_lens.models.prefix import SharedHeader, position_independent

    formatter = ChatFormatter(tiny.tokenizer)
    batch = formatter.encode(["Write a poem about the sea."])
    batch.input_ids[0, -3] = tiny.tokenizer.pad_token_id  # still fine: header intact
    assert SharedHeader(tiny, formatter).split(batch) is not None
    batch.input_ids[0, 1] = tiny.tokenizer.pad_token_id  # header changed
    assert SharedHeader(tiny, formatter).split(batch) is None
    assert position_independent([]) and not position_independent([object()])


def test_the_head_reads_a_row_major_input_even_for_one_row_of_a_sequence() -> None:
    """`logits_to_keep=1` on one sequence hands the head `[1, 1, d]` with the sequence's
    strides: `is_contiguous` passes it, the CPU matmul still expands the weight per row."""
    lm = make_model("qwen2")
    seen: list[tuple[int, ...]] = []
    loading.contiguous_head_inputs(lm.model)
    head = lm.model.get_output_embeddings()
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].stride()))
    ids = torch.randint(0, 100, (1, 7))
    with torch.no_grad():
        kept = lm.model(input_ids=ids, logits_to_keep=1).logits
        full = lm.model(input_ids=ids).logits
    d = lm.model.config.hidden_size
    assert seen[0] == (d, d, 1)  # not (7 * d, d, 1)
    assert torch.allclose(kept[:, -1], full[:, -1], atol=1e-6)
    assert loading._row_major(torch.zeros(2, 3)) and not loading._row_major(torch.zeros(3, 2).t())
