"""Named hook points on plain `transformers` models, and hooks as context managers.

Hook points (per decoder layer `l`):
- `resid_pre.l`  : residual stream entering block l (TransformerLens `blocks.l.hook_resid_pre`)
- `resid_post.l` : residual stream after block l, i.e. the output of HF `model.layers[l]`
                   (`blocks.l.hook_resid_post`, `model.layers.l`)
- `attn_out.l`   : output of the attention sub-layer, before it is added to the stream
- `mlp_out.l`    : output of the MLP sub-layer, before it is added to the stream

A hook is `fn(activation, point) -> Tensor | None`: return None to only read, a tensor to
replace the activation. `add_hooks` registers any number of them and removes every one on exit,
even when the body raises. Hooks stay active inside `model.generate`, so an edit applies to the
prompt and to every KV-cached decoding step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import UserError

HOOK_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out")
HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]

_TL_NAME = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)$")
_OUR_NAME = re.compile(r"^(resid_pre|resid_post|attn_out|mlp_out)\.(\d+)$")
_HF_NAME = re.compile(r"^(?:model\.)?layers\.(\d+)$")


@dataclass(frozen=True, order=True)
class HookPoint:
    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.layer}"

    def __str__(self) -> str:
        return self.name


def parse_hook_point(name: str, n_layers: int | None = None) -> HookPoint:
    """Parse `resid_post.12`, `blocks.12.hook_resid_post` or `model.layers.12` (= resid_post)."""
    text = name.strip()
    if match := _OUR_NAME.match(text):
        point = HookPoint(int(match.group(2)), match.group(1))
    elif match := _TL_NAME.match(text):
        point = HookPoint(int(match.group(1)), match.group(2))
    elif match := _HF_NAME.match(text):
        point = HookPoint(int(match.group(1)), "resid_post")
    else:
        raise UserError(
            f"unknown hook point {name!r}; use e.g. resid_post.12, "
            "blocks.12.hook_resid_post or model.layers.12"
        )
    if n_layers is not None:
        check_layer(point.layer, n_layers)
    return point


def check_layer(layer: int, n_layers: int) -> None:
    if not 0 <= layer < n_layers:
        raise UserError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of an HF causal LM (found by shape, not by model family)."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    inner = getattr(model, "model", None)
    if inner is not None and isinstance(getattr(inner, "layers", None), nn.ModuleList):
        return inner.layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise UserError(f"could not find the decoder layers of {type(model).__name__}")


def _sub_module(block: nn.Module, names: Sequence[str], what: str) -> nn.Module:
    for attr in names:
        if isinstance(found := getattr(block, attr, None), nn.Module):
            return found
    raise UserError(f"could not find the {what} sub-layer in {type(block).__name__}")


def _module_for(model: nn.Module, point: HookPoint) -> nn.Module:
    layers = decoder_layers(model)
    check_layer(point.layer, len(layers))
    block = layers[point.layer]
    if point.kind in ("resid_pre", "resid_post"):
        return block
    # Gemma-2/3 normalise each sub-layer's output before adding it to the stream: what is
    # written to the stream is the output of those post-norms.
    sandwich = isinstance(getattr(block, "pre_feedforward_layernorm", None), nn.Module)
    if point.kind == "attn_out":
        if sandwich:
            return _sub_module(block, ("post_attention_layernorm",), "post-attention norm")
        return _sub_module(block, ("self_attn", "attention", "attn"), "attention")
    if sandwich:
        return _sub_module(block, ("post_feedforward_layernorm",), "post-feedforward norm")
    return _sub_module(block, ("mlp", "feed_forward", "ffn"), "MLP")


def _replace_first(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    return (new, *output[1:])


def _first(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _register(model: nn.Module, point: HookPoint, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
    module = _module_for(model, point)
    if point.kind == "resid_pre":

        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                new = fn(args[0], point)
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"], point)
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        new = fn(_first(output), point)
        return None if new is None else _replace_first(output, new)

    return module.register_forward_hook(post_hook)


@contextmanager
def add_hooks(model: nn.Module, hooks: Sequence[tuple[HookPoint, HookFn]]) -> Iterator[None]:
    """Install `(point, fn)` hooks for the duration of the block; always removed on exit."""
    handles = []
    try:
        for point, fn in hooks:
            handles.append(_register(model, point, fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def all_points(n_layers: int, kinds: Sequence[str] = HOOK_KINDS) -> list[HookPoint]:
    return [HookPoint(layer, kind) for layer in range(n_layers) for kind in kinds]


@contextmanager
def record(
    model: nn.Module,
    points: Sequence[HookPoint],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[dict[HookPoint, list[torch.Tensor]]]:
    """Record activations at `points` (detached; `reduce` applied first, e.g. last positions)."""
    store: dict[HookPoint, list[torch.Tensor]] = {point: [] for point in points}

    def reader(act: torch.Tensor, point: HookPoint) -> None:
        store[point].append((reduce(act) if reduce else act).detach())

    with add_hooks(model, [(point, reader) for point in points]):
        yield store
