"""The readout (final norm → unembedding → bias/scale/soft-cap) against each model's own logits."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from ppmech.engine.hooks import FINAL_NORM, capture, resid_post
from ppmech.errors import PPMechError
from ppmech.models.architectures import ARCHITECTURES, arch_spec, readout
from ppmech.models.identity import LoadedModel
from ppmech.models.loading import load_model

IDS = torch.tensor([[504, 3458, 282, 4649, 314, 7042, 30, 378, 1345]])


def _check_readout_matches_logits(lm: LoadedModel) -> None:
    model = lm.model
    with capture(model, [FINAL_NORM]) as store, torch.no_grad():
        logits = model(input_ids=IDS, logits_to_keep=IDS.shape[1]).logits
    h = store[FINAL_NORM][0]
    ours = readout(model).logits(h)
    torch.testing.assert_close(ours, logits.float(), atol=2e-4, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text", "gpt2"])
def test_tiny_architectures(arch: str, tiny_model_dir: Callable[[str], str]) -> None:
    lm = load_model(tiny_model_dir(arch))
    assert lm.identity.model_type == arch
    _check_readout_matches_logits(lm)


def test_soft_capping_is_applied(tiny_model_dir: Callable[[str], str]) -> None:
    lm = load_model(tiny_model_dir("gemma3_text"))
    r = readout(lm.model)
    assert r.softcap == 30.0 and not r.is_affine
    assert r.logits(torch.randn(4, r.hidden_size) * 1e4).abs().max() <= 30.0


def test_smollm2_readout(smollm2: LoadedModel) -> None:
    r = readout(smollm2.model)
    assert r.is_affine and r.bias is None and r.weight.shape == (49152, 576)
    _check_readout_matches_logits(smollm2)


@pytest.mark.slow
def test_gemma3_readout(gemma3: LoadedModel) -> None:
    assert gemma3.identity.model_type == "gemma3_text"
    _check_readout_matches_logits(gemma3)


def test_unknown_architecture_fails_loudly() -> None:
    class Odd(nn.Module):
        class config:
            model_type = "mamba"

    with pytest.raises(PPMechError, match="unsupported architecture 'mamba'"):
        arch_spec(Odd())
    assert "llama" in ARCHITECTURES


def test_layer_hooks_capture_and_are_removed(smollm2: LoadedModel) -> None:
    model = smollm2.model
    before = sum(len(m._forward_hooks) for m in model.modules())
    with capture(model, [resid_post(0), resid_post(29), FINAL_NORM]) as store, torch.no_grad():
        model(input_ids=IDS)
    assert store[resid_post(0)][0].shape == (1, IDS.shape[1], 576)
    # The final norm of the last block's output is the state the unembedding reads.
    normed = model.model.norm(store[resid_post(29)][0])
    torch.testing.assert_close(normed, store[FINAL_NORM][0])
    assert sum(len(m._forward_hooks) for m in model.modules()) == before
    with pytest.raises(PPMechError, match="out of range"), capture(model, [resid_post(30)]):
        pass
    assert sum(len(m._forward_hooks) for m in model.modules()) == before
