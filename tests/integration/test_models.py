"""Model loading from every kind of source, on real files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ppmech.errors import PPMechError
from ppmech.models import EMBEDDED_MODELS, LoadedModel, cache_root, load_model


def test_embedded_model_is_cached_as_safetensors(smollm2: LoadedModel) -> None:
    source = Path(smollm2.identity.source)
    assert source.parent == cache_root() / "converted"
    assert (source / "COMPLETE").is_file() and (source / "model.safetensors").is_file()
    assert smollm2.identity.num_layers == 30 and smollm2.identity.vocab_size == 49152
    assert smollm2.identity.weights == "pretrained" and smollm2.identity.seed is None


def test_gguf_path_loads_through_the_same_cache(smollm2: LoadedModel) -> None:
    path = EMBEDDED_MODELS["smollm2-135m"].locate()
    lm = load_model(str(path))
    assert lm.identity.source == smollm2.identity.source
    assert lm.identity.source_hash == smollm2.identity.source_hash


def test_random_weights_are_seeded_and_differ_from_pretrained(
    smollm2: LoadedModel, smollm2_random: LoadedModel
) -> None:
    again = load_model("smollm2-135m", weights="random", seed=0)
    other = load_model("smollm2-135m", weights="random", seed=1)
    w0 = smollm2_random.model.model.layers[3].mlp.up_proj.weight
    assert torch.equal(w0, again.model.model.layers[3].mlp.up_proj.weight)
    assert not torch.equal(w0, other.model.model.layers[3].mlp.up_proj.weight)
    assert not torch.equal(w0, smollm2.model.model.layers[3].mlp.up_proj.weight)
    assert smollm2_random.identity.key != smollm2.identity.key
    assert smollm2_random.identity.tokenizer_hash == smollm2.identity.tokenizer_hash


def test_local_directory(tiny_model_dir: Callable[[str], str]) -> None:
    lm = load_model(tiny_model_dir("llama"))
    assert lm.identity.source == tiny_model_dir("llama")
    assert lm.identity.hidden_size == 64


def test_bfloat16_compute(tiny_model_dir: Callable[[str], str]) -> None:
    lm = load_model(tiny_model_dir("llama"), dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "GGUF file not found"),
        (b"PK\x03\x04zip", "not a GGUF file"),
        (b"GGUF" + b"\x00" * 64, "could not read GGUF"),
    ],
)
def test_bad_gguf_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PPMechError, match=message):
        load_model(str(path))
    assert not any((cache_root() / "converted").glob(".*"))  # no staging left behind


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(PPMechError, match="unknown model 'gpt-17'.*smollm2-135m"):
        load_model("gpt-17")


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(PPMechError, match="no config.json"):
        load_model(str(tmp_path))


def test_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hub reads HF_HUB_OFFLINE at import; patch the constant so no network is tried.
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PPMechError, match="could not load model 'nobody/no-such-model'"):
        load_model("nobody/no-such-model")
