"""Models: registry of aliases, loading (PyPI-shipped GGUF, hub, folders), chat formatting."""

from ..settings import DEFAULT_MODEL
from .chat import ChatFormatter, EncodedBatch
from .loading import LoadedModel, load_model
from .registry import REGISTRY, ModelSpec, find_spec, registered_names

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "ChatFormatter",
    "EncodedBatch",
    "LoadedModel",
    "ModelSpec",
    "find_spec",
    "load_model",
    "registered_names",
]
