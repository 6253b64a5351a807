"""Models: registry of aliases, loading (PyPI-shipped GGUF, hub, folders), chat formatting."""

from ..settings import DEFAULT_MODEL
from .chat import ChatFormatter, EncodedBatch, conversation, turns
from .loading import LoadedModel, load_model
from .registry import REGISTRY, ModelSpec, find_spec, registered_names

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "ChatFormatter",
    "EncodedBatch",
    "LoadedModel",
    "ModelSpec",
    "conversation",
    "find_spec",
    "load_model",
    "registered_names",
    "turns",
]
