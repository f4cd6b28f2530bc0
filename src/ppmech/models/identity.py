"""What a model is (its identity, recorded with every run, calibration and steering result) and the
loaded model handed around."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["LoadedModel", "ModelIdentity"]


@dataclass(frozen=True)
class ModelIdentity:
    """What a run, a calibration or a steering result was made with.

    Attributes:
        spec: the model as the user named it.
        source: resolved file, directory or hub id.
        source_hash: SHA-256 of the GGUF file; for a local directory, of its
            config and weight files; for a hub id, of the id and the loaded revision.
        weights: ``pretrained`` or ``random``.
        seed: the init seed for random weights, else ``None``.
        model_type: ``config.model_type``.
        num_parameters: parameter count.
        num_layers, hidden_size, vocab_size: shape of the network.
        max_context: positions the model supports.
        tokenizer_hash: SHA-256 of the tokenizer's vocabulary.
        dtype: compute dtype of the weights.
    """

    spec: str
    source: str
    source_hash: str
    weights: str
    seed: int | None
    model_type: str
    num_parameters: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_context: int
    tokenizer_hash: str
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        """A short string that differs whenever the network's weights differ."""
        seed = "" if self.seed is None else f"-seed{self.seed}"
        return f"{self.source_hash[:16]}-{self.weights}{seed}-{self.dtype}"


@dataclass
class LoadedModel:
    """A causal LM ready for recording, with its tokenizer and identity."""

    model: Any  # transformers.PreTrainedModel, in eval mode
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    identity: ModelIdentity

    @property
    def max_context(self) -> int:
        return self.identity.max_context

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device
