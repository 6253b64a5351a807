"""Sparse autoencoders: architectures, SAELens-format IO, activation collection, training,
evaluation."""

from .activations import ActivationCache, TokenMask, cache_from_tensors, collect_activations
from .architectures import (
    SAE_CLASSES,
    BatchTopKSAE,
    JumpReluSAE,
    ReluSAE,
    SAEConfig,
    SparseAutoencoder,
    TopKSAE,
    build_sae,
    register_sae_class,
)
from .io import from_saelens, load_gemma_scope_npz, load_pretrained, load_sae, save_sae
from .sets import SAESet
from .training import TrainConfig, train_saes

__all__ = [
    "SAE_CLASSES",
    "ActivationCache",
    "BatchTopKSAE",
    "JumpReluSAE",
    "ReluSAE",
    "SAEConfig",
    "SAESet",
    "SparseAutoencoder",
    "TokenMask",
    "TopKSAE",
    "TrainConfig",
    "build_sae",
    "cache_from_tensors",
    "collect_activations",
    "from_saelens",
    "load_gemma_scope_npz",
    "load_pretrained",
    "load_sae",
    "register_sae_class",
    "save_sae",
    "train_saes",
]
