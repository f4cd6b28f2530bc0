"""Shared fixtures. Real models are loaded once per session from the ppmech cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from ppmech.models.identity import LoadedModel
from ppmech.models.loading import load_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The embedded SmolLM2-135M-Instruct, pretrained, float32."""
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_random() -> LoadedModel:
    """SmolLM2-135M's architecture with fresh weights (seed 0)."""
    return load_model("smollm2-135m", weights="random", seed=0)


@pytest.fixture(scope="session")
def gemma3() -> LoadedModel:
    """The embedded Gemma-3-270M, pretrained, float32 (first load converts it: ~90 s)."""
    return load_model("gemma3-270m")


TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=256,
    ),
    "qwen2": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=256,
    ),
    "gemma3_text": dict(
        model_type="gemma3_text",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=49152,
        max_position_embeddings=256,
        sliding_window=16,
        final_logit_softcapping=30.0,
    ),
    "gpt2": dict(
        model_type="gpt2",
        n_embd=64,
        n_layer=2,
        n_head=4,
        vocab_size=49152,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=2,
    ),
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """Save a tiny random-config model of an architecture to a local directory.

    Returns a function ``arch -> directory`` usable as a ``load_model`` spec. The
    tokenizer is SmolLM2's, whose 49152 ids match the tiny vocab.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    made: dict[str, str] = {}

    def make(arch: str) -> str:
        if arch not in made:
            smol = load_model("smollm2-135m")
            cfg_kwargs = dict(TINY_CONFIGS[arch])
            model_type = cfg_kwargs.pop("model_type")
            config = AutoConfig.for_model(model_type, **cfg_kwargs)
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            model.save_pretrained(path)
            smol.tokenizer.save_pretrained(path)
            made[arch] = str(path)
        return made[arch]

    return make
