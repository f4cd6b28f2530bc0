"""The one place that knows model architectures.

Each supported ``model_type`` is listed explicitly with where its decoder
layers, final norm and unembedding live, and how its logits are post-processed
(bias, multiplicative scaling, soft-capping). An unknown architecture fails
loudly rather than being guessed at.

:class:`Readout` is the map ``h -> logits`` from the *post-final-norm* hidden
state, i.e. the state the unembedding reads. It is what the mechanics call
``h_t`` and what steering moves. ``tests/integration/test_architectures.py``
checks it against each model's own logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ppmech.errors import PPMechError


@dataclass(frozen=True)
class ArchSpec:
    """Where the pieces of a causal LM live, as dotted attribute paths.

    Attributes:
        layers: the ``nn.ModuleList`` of decoder blocks.
        final_norm: the norm applied to the residual stream before unembedding.
        unembed: the ``nn.Linear`` that maps hidden states to logits.
        logit_scale_attr: config attribute multiplied into the logits (Cohere).
        logit_divisor_attr: config attribute the logits are divided by (Granite).
        softcap_attr: config attribute of the final ``cap * tanh(z / cap)``
            soft-capping (Gemma 2 and later), if any.
    """

    layers: str
    final_norm: str
    unembed: str = "lm_head"
    logit_scale_attr: str | None = None
    logit_divisor_attr: str | None = None
    softcap_attr: str | None = None


_LLAMA_LIKE = ArchSpec(layers="model.layers", final_norm="model.norm")
_GEMMA_LIKE = ArchSpec(layers="model.layers", final_norm="model.norm", softcap_attr="final_logit_softcapping")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "gemma": _GEMMA_LIKE,
    "gemma2": _GEMMA_LIKE,
    "gemma3_text": _GEMMA_LIKE,
    "granite": ArchSpec(layers="model.layers", final_norm="model.norm", logit_divisor_attr="logits_scaling"),
    "cohere": ArchSpec(layers="model.layers", final_norm="model.norm", logit_scale_attr="logit_scale"),
    "gpt2": ArchSpec(layers="transformer.h", final_norm="transformer.ln_f"),
    "gpt_neox": ArchSpec(
        layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", unembed="embed_out"
    ),
}


def arch_spec(model: nn.Module) -> ArchSpec:
    """Look up the :class:`ArchSpec` of ``model`` by its ``config.model_type``.

    Raises:
        PPMechError: the architecture is not in :data:`ARCHITECTURES`.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise PPMechError(
            f"unsupported architecture '{model_type}'",
            f"ppmech knows {known}; add an entry to ppmech.models.architectures.ARCHITECTURES",
        )
    return ARCHITECTURES[model_type]


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule`` with a clear error if the architecture moved a piece."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise PPMechError(
            f"model of type {type(model).__name__} has no submodule '{path}'",
            "its architecture entry in ppmech.models.architectures is out of date",
        ) from exc


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, bottom to top."""
    layers = get_submodule(model, arch_spec(model).layers)
    assert isinstance(layers, nn.ModuleList)
    return layers


def final_norm(model: nn.Module) -> nn.Module:
    """The norm whose output the unembedding reads."""
    return get_submodule(model, arch_spec(model).final_norm)


@dataclass
class Readout:
    """The map from the post-final-norm hidden state to logits.

    ``logits(h) = softcap(scale * (h @ weight.T + bias))`` where
    ``softcap(z) = cap * tanh(z / cap)`` when the model soft-caps.
    All computation is float32, whatever the model's dtype.

    Attributes:
        weight: unembedding matrix ``W``, shape ``[V, d]``, float32.
        bias: unembedding bias, shape ``[V]``, float32, or ``None``.
        scale: multiplier applied to ``W h + b`` (1.0 for most models).
        softcap: the soft-capping constant, or ``None``.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float = 1.0
    softcap: float | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    @property
    def is_affine(self) -> bool:
        """True when logits are affine in ``h`` (no soft-capping)."""
        return self.softcap is None

    def affine(self, h: torch.Tensor) -> torch.Tensor:
        """``W h + b``, the logits before scale and soft-cap; ``[..., d]`` -> ``[..., V]`` float32."""
        return torch.nn.functional.linear(h.float(), self.weight, self.bias)

    def finish(self, z: torch.Tensor) -> torch.Tensor:
        """Scale and soft-cap pre-logits ``z = W h + b`` (or any point on a line of them).

        Steering evaluates many points ``z0 + α·dz`` on one line of pre-logits, where
        ``z`` is affine in the step; this is the rest of the readout.
        """
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap is not None:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits for hidden states ``h`` of shape ``[..., d]``; returns ``[..., V]`` float32."""
        return self.finish(self.affine(h))

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """Float32 log-softmax of :meth:`logits`, shape ``[..., V]``."""
        return torch.log_softmax(self.logits(h), dim=-1)


def readout(model: nn.Module) -> Readout:
    """Build the :class:`Readout` of ``model`` from its architecture entry."""
    spec = arch_spec(model)
    head = get_submodule(model, spec.unembed)
    if not isinstance(head, nn.Linear):
        raise PPMechError(
            f"unembedding '{spec.unembed}' is a {type(head).__name__}, not a Linear layer",
            "its architecture entry in ppmech.models.architectures is out of date",
        )
    config = model.config
    scale = 1.0
    if spec.logit_scale_attr is not None:
        scale *= float(getattr(config, spec.logit_scale_attr, 1.0) or 1.0)
    if spec.logit_divisor_attr is not None:
        scale /= float(getattr(config, spec.logit_divisor_attr, 1.0) or 1.0)
    softcap = None
    if spec.softcap_attr is not None:
        cap = getattr(config, spec.softcap_attr, None)
        softcap = float(cap) if cap else None
    bias = head.bias.detach().float() if head.bias is not None else None
    return Readout(weight=head.weight.detach().float(), bias=bias, scale=scale, softcap=softcap)
