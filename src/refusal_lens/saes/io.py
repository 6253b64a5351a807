"""SAEs on disk in SAELens' format, Gemma Scope `params.npz`, and SAELens' pretrained registry.

SAELens format: a folder with `cfg.json` and `sae_weights.safetensors` (`W_enc [d_in, d_sae]`,
`b_enc`, `W_dec [d_sae, d_in]`, `b_dec`, `threshold` for JumpReLU). A BatchTopK SAE is saved
as a JumpReLU with its global threshold, which is how BatchTopK SAEs run at inference and how
SAELens saves them; `metadata.trained_as` records the training architecture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import schema
from ..errors import UserError
from .architectures import SAE_CLASSES, SAEConfig, SparseAutoencoder, build_sae

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"


def _saved_architecture(sae: SparseAutoencoder) -> str:
    return "jumprelu" if sae.cfg.architecture == "batchtopk" else sae.cfg.architecture


def save_sae(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write `cfg.json` + `sae_weights.safetensors` (loadable by SAELens' `SAE.load_from_disk`)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    # SAELens reads the nested `metadata` only from configs that declare its 6.x format
    metadata = {"sae_lens_version": SAELENS_FORMAT_VERSION, **cfg.metadata}
    if cfg.architecture == "batchtopk":
        metadata["trained_as"] = "batchtopk"
    data: dict[str, Any] = {
        "architecture": _saved_architecture(sae),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if cfg.architecture == "topk":
        data["k"] = cfg.k
        data["rescale_acts_by_decoder_norm"] = False
    tensors = {name: t.detach().contiguous().cpu() for name, t in sae.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, out / WEIGHTS_FILE)
    (out / CFG_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return out


SAE_DTYPES = ("float32", "float16", "bfloat16", "float64")
_CFG_FIX = "fix the file or save the SAE again (SAELens' cfg.json format)"
# The fields of a SAELens cfg.json this package reads (others are kept, unread).
CFG_SCHEMA = schema.Obj(
    required={"d_in": schema.Int(min=1), "d_sae": schema.Int(min=1)},
    optional={
        "architecture": schema.Str(nonempty=True),
        "k": schema.Maybe(schema.Int(min=1)),
        "apply_b_dec_to_input": schema.Bool(),
        "normalize_activations": schema.Maybe(schema.Str()),
        "dtype": schema.Test(
            lambda v: str(v).removeprefix("torch.") in SAE_DTYPES and isinstance(v, str),
            "one of " + ", ".join(SAE_DTYPES),
        ),
        "metadata": schema.Maybe(schema.Obj()),
        "hook_name": schema.Maybe(schema.Str()),
        "hook_point": schema.Maybe(schema.Str()),
        "model_name": schema.Maybe(schema.Str()),
        "rescale_acts_by_decoder_norm": schema.Bool(),
        "activation_fn_kwargs": schema.Maybe(schema.Obj()),
    },
)


def _read_cfg(folder: Path) -> dict[str, Any]:
    path = folder / CFG_FILE
    if not path.exists():
        raise UserError(f"no SAE at {folder}: {CFG_FILE} is missing (expected SAELens' format)")
    return schema.read_json(path, "SAE config", _CFG_FIX)


def _pre_6_keys(data: dict[str, Any]) -> dict[str, Any]:
    """SAELens < 6 configs: `hook_point` for `hook_name`, TopK as `activation_fn_str`."""
    data = dict(data)
    if "hook_point" in data and "hook_name" not in data:
        data["hook_name"] = data["hook_point"]
    activation = data.get("activation_fn_str") or data.get("activation_fn")
    if activation == "topk" and data.get("architecture", "standard") == "standard":
        data["architecture"] = "topk"
        data.setdefault("k", (data.get("activation_fn_kwargs") or {}).get("k"))
    return data


def config_from_saelens(data: dict[str, Any], origin: str = "SAE config") -> SAEConfig:
    """Our config from a SAELens `cfg.json` (new nested `metadata` or older flat keys); every
    field read is checked for its type first (`origin` names the file in the error)."""
    schema.validate(data, CFG_SCHEMA, origin, _CFG_FIX)
    data = _pre_6_keys(data)
    schema.validate(data, CFG_SCHEMA, origin, _CFG_FIX)  # k may come from activation_fn_kwargs
    architecture = data.get("architecture", "standard")
    if architecture not in SAE_CLASSES:
        raise UserError(
            f"SAE architecture {architecture!r} is not supported; supported: "
            f"{', '.join(SAE_CLASSES)}"
        )
    metadata = dict(data.get("metadata") or {})
    for key in ("model_name", "hook_name", "hook_layer", "context_size", "prepend_bos"):
        if key in data and key not in metadata:
            metadata[key] = data[key]
    normalize = data.get("normalize_activations") or "none"
    if normalize == "expected_average_only_in":
        raise UserError(
            "this SAE uses normalize_activations='expected_average_only_in' without a folded "
            "scaling factor; fold it in SAELens (fold_activation_norm_scaling_factor) and "
            "save again"
        )
    try:
        return SAEConfig(
            architecture=architecture,
            d_in=int(data["d_in"]),
            d_sae=int(data["d_sae"]),
            k=data.get("k"),
            apply_b_dec_to_input=bool(data.get("apply_b_dec_to_input", True)),
            normalize_activations=normalize,
            dtype=str(data.get("dtype", "float32")).removeprefix("torch."),
            metadata=metadata,
        )
    except KeyError as exc:
        raise UserError(f"SAE config lacks the key {exc.args[0]!r}") from exc


def load_sae(folder: str | Path, dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """Load an SAE saved in SAELens' format (by this package or by SAELens)."""
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"no SAE folder at {path}")
    data = _read_cfg(path)
    cfg = config_from_saelens(data, str(path / CFG_FILE))
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise UserError(f"no SAE weights at {weights}")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"{weights} is corrupt or truncated ({str(exc).splitlines()[0]}); download or "
            "train it again"
        ) from exc
    sae = _from_tensors(cfg, tensors, str(weights), dtype)
    if data.get("rescale_acts_by_decoder_norm"):
        fold_decoder_norm(sae)
    return sae


@torch.no_grad()
def fold_decoder_norm(sae: SparseAutoencoder) -> None:
    """SAELens' `rescale_acts_by_decoder_norm` (TopK selects on `pre * ||W_dec_j||` and decodes
    with `W_dec_j / ||W_dec_j||`) folded into the weights: same latents, same output, unit-norm
    decoder rows."""
    norms = sae.W_dec.norm(dim=1).clamp_min(1e-12)
    sae.W_enc.mul_(norms[None, :])
    sae.b_enc.mul_(norms)
    sae.W_dec.div_(norms[:, None])


def _from_tensors(
    cfg: SAEConfig,
    tensors: dict[str, torch.Tensor],
    where: str,
    dtype: torch.dtype | None = None,
) -> SparseAutoencoder:
    if dtype is not None:
        cfg.dtype = str(dtype).removeprefix("torch.")
    sae = build_sae(cfg)
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    expected = {name: tuple(p.shape) for name, p in sae.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise UserError(f"{where} lacks the tensor(s) {', '.join(missing)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise UserError(
                f"{where}: {name} has shape {tuple(tensors[name].shape)}, expected {shape} "
                f"from d_in={cfg.d_in}, d_sae={cfg.d_sae}"
            )
    for name in expected:
        if not torch.isfinite(tensors[name]).all():
            raise UserError(
                f"{where}: {name} holds NaN or infinite values (a diverged or corrupt SAE); "
                "train or download it again"
            )
    sae.load_state_dict({name: tensors[name].to(sae.W_enc.dtype) for name in expected})
    return sae


def load_gemma_scope_npz(
    path: str | Path, hook_name: str | None = None, model_name: str | None = None
) -> SparseAutoencoder:
    """A Gemma Scope `params.npz` (JumpReLU; read with `allow_pickle=False`)."""
    file = Path(path)
    if not file.exists():
        raise UserError(f"no Gemma Scope parameters at {file}")
    try:
        with np.load(file, allow_pickle=False) as params:
            tensors = {name: torch.from_numpy(np.array(params[name])) for name in params.files}
    except (ValueError, OSError) as exc:
        raise UserError(f"{file} is not a readable .npz file ({exc})") from exc
    if "W_enc" not in tensors:
        raise UserError(f"{file} has no W_enc: not a Gemma Scope params.npz")
    d_in, d_sae = tensors["W_enc"].shape
    metadata = {k: v for k, v in (("hook_name", hook_name), ("model_name", model_name)) if v}
    cfg = SAEConfig(
        "jumprelu", int(d_in), int(d_sae), apply_b_dec_to_input=False, metadata=metadata
    )
    return _from_tensors(cfg, {k: v.float() for k, v in tensors.items()}, str(file))


def load_pretrained(release: str, sae_id: str) -> SparseAutoencoder:
    """An SAE from SAELens' pretrained registry (needs the `sae-lens` extra and the hub)."""
    try:
        from sae_lens import SAE
    except ImportError as exc:
        raise UserError(
            "loading pretrained SAEs needs SAELens: pip install 'refusal-lens[sae-lens]'"
        ) from exc
    try:
        loaded = SAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as exc:  # SAELens raises many types for unknown ids / no network
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"SAELens could not load {release}/{sae_id}: {message}") from exc
    sae_obj = loaded[0] if isinstance(loaded, tuple) else loaded
    return from_saelens(sae_obj)


def from_saelens(sae_obj: Any) -> SparseAutoencoder:
    """Convert an in-memory SAELens SAE (any version exposing `cfg.to_dict()`)."""
    data = sae_obj.cfg.to_dict()
    cfg = config_from_saelens(data)
    cfg.dtype = "float32"
    tensors = {name: t.detach().float().cpu() for name, t in sae_obj.state_dict().items()}
    sae = _from_tensors(cfg, tensors, f"SAELens SAE {cfg.metadata.get('hook_name', '')}")
    if data.get("rescale_acts_by_decoder_norm"):
        fold_decoder_norm(sae)
    return sae
