"""Named hook points on a model's forward pass: read them, and optionally write them.

Hook names say what they capture:

* ``final_norm`` — the output of the final norm: the hidden state ``h_t`` the
  unembedding reads (the paper's "layer-normed residual stream").
* ``resid_post.{i}`` — the residual stream after decoder block ``i`` (0-based),
  before any final norm.

:func:`capture` is a context manager; hooks are always removed in ``finally``.
A *patch* is the write side (used by steering): a callable that receives the
state at the newest position, ``[B, d]``, and returns a replacement (or ``None``
to leave it); the rest of the forward pass, KV cache included, then sees the
replacement, with gradients flowing into it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ppmech.errors import PPMechError
from ppmech.models.architectures import decoder_layers, final_norm

FINAL_NORM = "final_norm"

#: ``state [B, d] at the newest position -> replacement [B, d]`` (or ``None``: leave it).
Patch = Callable[[torch.Tensor], torch.Tensor | None]


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


def _replace_newest(output: Any, new_last: torch.Tensor) -> Any:
    """``output`` with its first tensor's newest position replaced by ``new_last`` ``[B, d]``."""
    hidden = _first_tensor(output)
    new = torch.cat([hidden[:, :-1, :], new_last[:, None, :].to(hidden.dtype)], dim=1)
    if isinstance(output, torch.Tensor):
        return new
    return (new, *output[1:])


class Switch:
    """Turns long-lived hooks on only while their owner runs the model.

    The compiled decode path keeps its hooks registered for as long as its engine
    lives (a new registration would retrace the compiled step). Gated by a switch,
    those hooks do nothing while anyone else runs the same model: they neither
    keep tensors alive nor sit in another ``torch.compile`` trace (transformers'
    compiled ``generate``), where a growing store would retrace at every step.
    """

    def __init__(self) -> None:
        self.on = False

    @contextlib.contextmanager
    def enabled(self) -> Iterator[None]:
        self.on = True
        try:
            yield
        finally:
            self.on = False


@contextlib.contextmanager
def capture(
    model: nn.Module,
    names: list[str],
    patches: Mapping[str, Patch | None] | None = None,
    switch: Switch | None = None,
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the forward outputs of the named points while the block runs.

    Args:
        model: the model.
        names: hook points to record.
        patches: hook points that may be written, read *live* at every forward
            (mutate the mapping between forwards; a ``None`` entry patches nothing).
        switch: if given, the hooks act only while it is on (see :class:`Switch`).

    Yields:
        ``{name: [tensor per forward call]}``, each tensor ``[B, L, d]``, detached
        (after any patch).
    """
    store: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    live = patches if patches is not None else {}
    handles = []
    try:
        for name in dict.fromkeys([*names, *live]):
            module = hook_module(model, name)

            def hook(_m: nn.Module, _i: Any, output: Any, _name: str = name) -> Any:
                if switch is not None and not switch.on:
                    return None
                fn = live.get(_name)
                if fn is not None:
                    new_last = fn(_first_tensor(output)[:, -1, :])
                    if new_last is not None:
                        output = _replace_newest(output, new_last)
                if _name in store:
                    store[_name].append(_first_tensor(output).detach())
                return output if fn is not None else None

            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for handle in handles:
            handle.remove()
