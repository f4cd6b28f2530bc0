"""Named capture points on a model's forward pass.

Hook names say what they capture:

* ``final_norm`` — the output of the final norm: the hidden state ``h_t`` the
  unembedding reads (the paper's "layer-normed residual stream").
* ``resid_post.{i}`` — the residual stream after decoder block ``i`` (0-based),
  before any final norm.

:func:`capture` is a context manager; hooks are always removed in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ppmech.errors import PPMechError
from ppmech.models.architectures import decoder_layers, final_norm

FINAL_NORM = "final_norm"


def resid_post(layer: int) -> str:
    """Hook name of the residual stream after decoder block ``layer``."""
    return f"resid_post.{layer}"


def hook_module(model: nn.Module, name: str) -> nn.Module:
    """The module whose forward output a hook name refers to."""
    if name == FINAL_NORM:
        return final_norm(model)
    if name.startswith("resid_post."):
        layers = decoder_layers(model)
        try:
            index = int(name.split(".", 1)[1])
        except ValueError:
            index = -1
        if not 0 <= index < len(layers):
            raise PPMechError(
                f"layer index {name.split('.', 1)[1]} is out of range",
                f"use 0..{len(layers) - 1} (the model has {len(layers)} decoder layers)",
            )
        return layers[index]
    raise PPMechError(f"unknown hook point '{name}'", "use final_norm or resid_post.<layer>")


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"hook output of type {type(output).__name__} holds no tensor")


@contextlib.contextmanager
def capture(model: nn.Module, names: list[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the forward outputs of the named points while the block runs.

    Yields:
        ``{name: [tensor per forward call]}``, each tensor ``[B, L, d]``, detached.
    """
    store: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = []
    try:
        for name in names:
            module = hook_module(model, name)

            def hook(_m: nn.Module, _i: Any, output: Any, _name: str = name) -> None:
                store[_name].append(_first_tensor(output).detach())

            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for handle in handles:
            handle.remove()
