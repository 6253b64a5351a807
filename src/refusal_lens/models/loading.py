"""Load a chat model as a plain `transformers` model, whatever its source.

Sources: a registered alias (GGUF shipped in PyPI packages: parts found through importlib,
concatenated, checked by sha256, converted once to a safetensors HF folder in the cache), a
local `.gguf` file (converted and cached the same way), a local HF folder, or an HF hub id.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
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
from ..runs import exclusive
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
        # Measured by bench/dtype_speed.py: bfloat16 is the fast path on a GPU and on a CPU with
        # bfloat16 instructions (AVX512-BF16 or AMX: about 2x fp32 for prefill and 2.5x for
        # decoding); elsewhere fp32 GEMMs beat emulated bfloat16.
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (x86 AVX512-BF16 or AMX-BF16, read from
    /proc/cpuinfo; False where that file is missing, as on macOS)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def contiguous_head_inputs(model: torch.nn.Module) -> None:
    """Make the LM head's input contiguous before its matmul.

    `logits_to_keep` hands the head a strided slice (`hidden[:, -1:]`); for such an input
    PyTorch's CPU matmul expands the weight to one copy per row and runs a batched matmul,
    which for Qwen's 151,936 x 896 head costs 0.45 s per call in float32 instead of 0.11 s, and
    9 s in bfloat16 instead of 0.03 s (`bench/dtype_speed.py` measures the model both ways).
    """
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Module):
        head.register_forward_pre_hook(_contiguous_first)


def _contiguous_first(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if args and isinstance(args[0], torch.Tensor) and not _row_major(args[0]):
        return (args[0].clone(memory_format=torch.contiguous_format), *args[1:])
    return args


def _row_major(x: torch.Tensor) -> bool:
    """Whether `x` has row-major strides, size-1 dimensions included. `is_contiguous` ignores
    the stride of a size-1 dimension, so one row's slice of a longer sequence
    (`[1, 1, d]` with strides `(T*d, d, 1)`) passes it, yet still sends the matmul down the
    expanded-weight path (0.5 s per call for the default model's head in bfloat16)."""
    expected, step = [], 1
    for size in reversed(x.shape):
        expected.append(step)
        step *= size
    return x.stride() == tuple(reversed(expected))


SPREAD = "balanced"  # the device name of a model spread over every visible GPU


def resolve_device(device: str) -> torch.device:
    """The device a model loads on; `balanced` (layers spread over every visible GPU by
    accelerate's device map) resolves to the first GPU, where inputs go."""
    if device == SPREAD:
        if not torch.cuda.is_available():
            raise UserError(
                "--device balanced spreads a model over GPUs, and no CUDA GPU is visible; use "
                "--device cpu"
            )
        return torch.device("cuda", 0)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise UserError(
            f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or balanced"
        ) from exc
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
        # safetensors only: a pickled checkpoint (pytorch_model.bin) is never unpickled
        placement = {"device_map": SPREAD} if device == SPREAD else {}
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, use_safetensors=True, **placement
        )
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"could not load model {name!r} from {folder}: {_first_line(exc)}") from exc
    if device != SPREAD:  # a spread model's layers stay where the device map put them
        model.to(target)
    model.eval()
    model.requires_grad_(False)
    contiguous_head_inputs(model)
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
    if path.is_file() and path.suffix.lower() == ".gguf":
        check_gguf_header(path)
        digest = _file_sha256_cached(path, cache)
        return str(_converted_gguf(path, digest, cache)), digest, f"gguf:{path.resolve()}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{path} is a folder but has no config.json; point at an HF model folder"
            )
        check_safetensors_folder(path)
        return str(path), _folder_sha256(path, cache), f"folder:{path.resolve()}"
    if path.exists():
        raise UserError(f"{path} is neither a .gguf file nor an HF model folder")
    if path.suffix.lower() in MODEL_FILE_SUFFIXES or name.startswith((".", "/", "~")):
        raise UserError(
            f"model file or folder {name!r} does not exist; check the path (or pass a registered "
            "alias, see `refusal-lens models`)"
        )
    if name.count("/") == 1:
        return _hub_model(name)
    raise UserError(
        f"unknown model alias {name!r}; registered: {', '.join(registered_names())} "
        "(or pass an HF hub id like Qwen/Qwen2.5-0.5B-Instruct, a local HF folder or a .gguf file)"
    )


def _packaged_model(spec: ModelSpec, cache: Path) -> tuple[str, str, str]:
    src = spec.source
    converted = cache / "models" / f"{spec.name}-{src.sha256[:12]}"
    if not _conversion_done(converted, src.sha256):
        converted.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(converted.with_name(converted.name + ".lock")):  # one conversion at once
            if not _conversion_done(converted, src.sha256):
                gguf = _assemble_parts(src, cache / "models" / src.gguf_name)
                _convert_unlocked(gguf, converted, src.sha256)
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
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
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
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):  # a marker cut by a crash: convert again
        return False
    return isinstance(data, dict) and data.get("gguf_sha256") == digest


def _converted_gguf(path: Path, digest: str, cache: Path) -> Path:
    converted = cache / "models" / f"{path.stem}-{digest[:12]}"
    if not _conversion_done(converted, digest):
        _convert(path, converted, digest)
    return converted


GGUF_MAGIC = b"GGUF"
GGUF_HEADER_BYTES = 24  # magic, version (uint32), tensor count and metadata count (uint64 each)


def check_gguf_header(path: Path) -> None:
    """A one-line error for a file that is not a GGUF model or whose header is cut, before any
    hashing or conversion."""
    try:
        with path.open("rb") as handle:
            header = handle.read(GGUF_HEADER_BYTES)
    except OSError as exc:
        raise UserError(f"cannot read GGUF {path}: {exc.strerror or exc}") from None
    if header[:4] != GGUF_MAGIC:
        raise UserError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); pass a "
            ".gguf model file"
        )
    if len(header) < GGUF_HEADER_BYTES:
        raise UserError(
            f"GGUF {path} is truncated ({len(header)} bytes, shorter than its header); "
            "download or copy it again"
        )
    version, n_tensors, n_metadata = struct.unpack("<IQQ", header[4:])
    if version not in (2, 3):
        raise UserError(f"GGUF {path} has format version {version}; only versions 2 and 3 load")
    if n_tensors == 0 or n_tensors > 1_000_000 or n_metadata > 1_000_000:
        raise UserError(
            f"GGUF {path} has a corrupt header ({n_tensors} tensors, {n_metadata} metadata "
            "entries); download or copy it again"
        )


def _convert(gguf: Path, out: Path, digest: str) -> None:
    """Dequantize a GGUF once and save it as a float32 safetensors HF folder (exact weights).

    Two processes converting the same file take turns through a lock next to `out`; each
    writes its own temporary folder, so neither can clobber the other's half-written one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(out.with_name(out.name + ".lock")):
        if _conversion_done(out, digest):  # another process finished it while we waited
            return
        _convert_unlocked(gguf, out, digest)


def _check_gguf_contents(path: Path) -> None:
    """Parse the whole GGUF index (metadata and tensor table; no tensor data is read) so that a
    cut or corrupt file is one line before the conversion starts."""
    check_gguf_header(path)
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UserError("reading .gguf files needs the gguf package: pip install gguf") from None
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the parser raises many types on a cut or corrupt file
        raise UserError(
            f"GGUF {path} is truncated or corrupt ({type(exc).__name__}: {_first_line(exc)}); "
            "download or copy it again"
        ) from None
    if "general.architecture" not in reader.fields:
        raise UserError(
            f"GGUF {path} names no model architecture (general.architecture); it is not a "
            "model file transformers can convert"
        )


def _convert_unlocked(gguf: Path, out: Path, digest: str) -> None:
    _check_gguf_contents(gguf)
    log.warning("converting %s to an HF folder in %s (once; about a minute)", gguf.name, out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except ImportError as exc:
        raise UserError(f"could not read GGUF {gguf}: {_first_line(exc)}") from exc
    except Exception as exc:  # a cut or corrupt GGUF fails inside the parser in many ways
        raise UserError(
            f"could not read GGUF {gguf} ({type(exc).__name__}: {_first_line(exc)}); it is "
            "truncated, corrupt or of an architecture transformers cannot convert"
        ) from exc
    # transformers refuses to save a model that came through a quantizer; the weights are
    # already dequantized to dense tensors, so dropping the quantizer is safe.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "refusal_lens_source.json").write_text(
            json.dumps({"gguf": gguf.name, "gguf_sha256": digest}, indent=2)
        )
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    if not any(Path(folder).glob("*.safetensors")):
        raise UserError(
            f"model {hub_id!r} has no safetensors weights on the hub (pickled .bin weights are "
            "never loaded); use a repository with .safetensors files or a .gguf file"
        )
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
    try:
        index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    except (OSError, ValueError):  # a cut or hand-edited index: start again
        index = {}
    if not isinstance(index, dict):
        index = {}
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if not isinstance(index.get(key), str):
        index[key] = _sha256(path)
        tmp = index_file.with_name(f"{index_file.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, index_file)
    return str(index[key])


MODEL_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_safetensors_folder(folder: Path) -> None:
    """Weights load from safetensors only: a folder with pickled weights alone (a
    pytorch_model.bin) is a one-line error, never `torch.load`."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise UserError(
            f"{folder} has only pickled weights ({', '.join(pickled[:3])}), which refusal-lens "
            "never loads (unpickling runs code); convert them to safetensors (transformers' "
            "save_pretrained in a trusted environment) or pass a .gguf file"
        )
    raise UserError(f"{folder} has no .safetensors weight files; point at a complete HF folder")


def check_no_pickle(folder: Path, what: str) -> None:
    """Every sub-folder of a local model (sentence-transformers keeps modules in sub-folders)
    that holds pickled weights must hold safetensors beside them: the pickles are never read."""
    for directory in sorted({p.parent for p in folder.rglob("*") if p.is_file()}):
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickled and not any(directory.glob("*.safetensors")):
            raise UserError(
                f"the {what} at {folder} has only pickled weights in {directory} "
                f"({', '.join(pickled[:3])}), which refusal-lens never loads (unpickling runs "
                "code); convert them to safetensors (save_pretrained in a trusted environment)"
            )


def _folder_sha256(folder: Path, cache: Path) -> str:
    """Identity of a local HF folder: sha256 over its config and weight files' hashes."""
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors"))
    for path in [folder / "config.json", *files]:
        digest.update(path.name.encode())
        digest.update(_file_sha256_cached(path, cache).encode())
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
