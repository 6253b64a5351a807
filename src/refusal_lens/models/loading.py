"""Load a chat model as a plain `transformers` model, whatever its source.

Sources: a registered alias (GGUF shipped in PyPI packages: parts found through importlib,
concatenated, checked by sha256, converted once to a safetensors HF folder in the cache), a
local `.gguf` file (converted and cached the same way), a local HF folder, or an HF hub id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..errors import UserError
from ..settings import cache_dir
from .registry import ModelSpec, PackagedGGUF, find_spec, registered_names

log = logging.getLogger(__name__)

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_CHUNK = 1 << 24


@dataclass
class LoadedModel:
    """A model, its tokenizer and its identity (recorded in every run manifest)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    weights_sha256: str
    source: str

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights_sha256": self.weights_sha256,
            "source": self.source,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # Measured by bench/dtype_speed.py: on CPU float32 beats bfloat16 (PyTorch's CPU bf16
        # kernels lose to fp32 GEMMs here), on GPU bfloat16 is the fast path.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but no CUDA GPU is visible; use --device cpu")
    return resolved


def load_model(
    name: str,
    *,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    cache: str | Path | None = None,
) -> LoadedModel:
    """Load `name` (alias, hub id, local HF folder or .gguf file) ready for hooks, in eval mode."""
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    folder, identity, source = _materialise(name, cache_dir(cache))
    log.info("loading %s from %s", name, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"could not load model {name!r} from {folder}: {_first_line(exc)}") from exc
    model.to(target)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    spec = find_spec(name)
    return LoadedModel(model, tokenizer, spec.name if spec else name, identity, source)


def _materialise(name: str, cache: Path) -> tuple[str, str, str]:
    """Return (folder or hub id for from_pretrained, weights identity, source description)."""
    spec = find_spec(name)
    if spec is not None:
        return _packaged_model(spec, cache)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = _file_sha256_cached(path, cache)
        return str(_converted_gguf(path, digest, cache)), digest, f"gguf:{path.resolve()}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{path} is a folder but has no config.json; point at an HF model folder"
            )
        return str(path), _folder_sha256(path, cache), f"folder:{path.resolve()}"
    if path.exists():
        raise UserError(f"{path} is neither a .gguf file nor an HF model folder")
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return _hub_model(name)
    raise UserError(
        f"unknown model alias {name!r}; registered: {', '.join(registered_names())} "
        "(or pass an HF hub id like Qwen/Qwen2.5-0.5B-Instruct, a local HF folder or a .gguf file)"
    )


def _packaged_model(spec: ModelSpec, cache: Path) -> tuple[str, str, str]:
    src = spec.source
    converted = cache / "models" / f"{spec.name}-{src.sha256[:12]}"
    if not _conversion_done(converted, src.sha256):
        gguf = _assemble_parts(src, cache / "models" / src.gguf_name)
        _convert(gguf, converted, src.sha256)
        if gguf.parent == cache / "models":
            gguf.unlink(missing_ok=True)
    return str(converted), src.sha256, f"pypi-gguf:{src.gguf_name}"


def _part_paths(src: PackagedGGUF) -> list[Path]:
    paths = []
    for index, module in enumerate(src.modules, start=1):
        found = importlib.util.find_spec(module)
        if found is None or found.origin is None:
            raise UserError(
                f"model weights package {module!r} is not installed; run: {src.pip_install}"
            )
        paths.append(Path(found.origin).parent / src.member.format(index=index))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(
            f"model weights file {missing[0]} is missing; reinstall with: {src.pip_install}"
        )
    return paths


def _assemble_parts(src: PackagedGGUF, out: Path) -> Path:
    parts = _part_paths(src)
    if len(parts) == 1:  # a whole GGUF inside one package: read it in place
        _check_sha256(parts[0], src.sha256, src.pip_install)
        return parts[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    tmp = out.with_suffix(".partial")
    with tmp.open("wb") as sink:
        for part in parts:
            with part.open("rb") as chunk_file:
                while chunk := chunk_file.read(_CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)
    if digest.hexdigest() != src.sha256:
        tmp.unlink()
        raise UserError(
            f"assembled GGUF has sha256 {digest.hexdigest()[:12]}..., expected "
            f"{src.sha256[:12]}...; reinstall the parts: {src.pip_install}"
        )
    tmp.replace(out)
    return out


def _check_sha256(path: Path, expected: str, fix: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise UserError(f"{path} has sha256 {actual[:12]}..., expected {expected[:12]}...; {fix}")


def _conversion_done(folder: Path, digest: str) -> bool:
    marker = folder / "refusal_lens_source.json"
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("gguf_sha256") == digest


def _converted_gguf(path: Path, digest: str, cache: Path) -> Path:
    converted = cache / "models" / f"{path.stem}-{digest[:12]}"
    if not _conversion_done(converted, digest):
        _convert(path, converted, digest)
    return converted


def _convert(gguf: Path, out: Path, digest: str) -> None:
    """Dequantize a GGUF once and save it as a float32 safetensors HF folder (exact weights)."""
    log.warning("converting %s to an HF folder in %s (once; about a minute)", gguf.name, out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (OSError, ValueError, ImportError) as exc:
        raise UserError(f"could not read GGUF {gguf}: {_first_line(exc)}") from exc
    # transformers refuses to save a model that came through a quantizer; the weights are
    # already dequantized to dense tensors, so dropping the quantizer is safe.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "refusal_lens_source.json").write_text(
        json.dumps({"gguf": gguf.name, "gguf_sha256": digest}, indent=2)
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


def _hub_model(hub_id: str) -> tuple[str, str, str]:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
        )
    except Exception as exc:  # the hub client raises many types; all mean "not available"
        raise UserError(
            f"model {hub_id!r} could not be fetched from the HF hub ({_first_line(exc)[:200]}); "
            "check the id and the network, or pass a local folder / .gguf file"
        ) from exc
    revision = Path(folder).name
    return folder, f"hub:{hub_id}@{revision}", f"hub:{hub_id}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_sha256_cached(path: Path, cache: Path) -> str:
    """sha256 of a big file, remembered by (path, size, mtime) so reruns do not rehash."""
    index_file = cache / "file_hashes.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in index:
        index[key] = _sha256(path)
        tmp = index_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, index_file)
    return str(index[key])


def _folder_sha256(folder: Path, cache: Path) -> str:
    """Identity of a local HF folder: sha256 over its config and weight files' hashes."""
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    for path in [folder / "config.json", *files]:
        digest.update(path.name.encode())
        digest.update(_file_sha256_cached(path, cache).encode())
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
