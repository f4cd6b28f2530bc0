"""The recorder on the real embedded model: batching, padding, decoding modes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from ppmech.corpus import load_documents, select_prompts
from ppmech.engine.decoder import left_pad
from ppmech.engine.recorder import Recorder
from ppmech.engine.sampling import Decoding
from ppmech.errors import PPMechError
from ppmech.mechanics import energy_terms
from ppmech.models.architectures import readout
from ppmech.models.identity import LoadedModel
from ppmech.models.loading import load_model


@pytest.fixture(scope="module")
def prompts(smollm2: LoadedModel) -> list[list[int]]:
    chosen = select_prompts(load_documents("wiki-en"), smollm2.tokenizer, n=4, context_tokens=40, seed=11)
    # Different lengths so that batching needs left padding.
    return [p.ids[: 25 + 5 * i] for i, p in enumerate(chosen)]


def _kv(record: object, row: int) -> dict[str, np.ndarray]:
    return energy_terms(record.speed_sq[row].numpy(), record.logp[row].double().numpy())  # type: ignore[attr-defined]


def test_left_pad_positions() -> None:
    ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_batched_equals_one_at_a_time(smollm2: LoadedModel, prompts: list[list[int]]) -> None:
    recorder = Recorder(smollm2, Decoding())
    batched = recorder.record(prompts, new_tokens=12)
    for row, prompt in enumerate(prompts):
        single = recorder.record([prompt], new_tokens=12)
        assert torch.equal(single.token_ids[0], batched.token_ids[row])
        a, b = _kv(single, 0), _kv(batched, row)
        np.testing.assert_allclose(a["K"][1:], b["K"][1:], atol=1e-3)
        np.testing.assert_allclose(a["V"], b["V"], atol=1e-3)


@pytest.mark.parametrize("arch", ["gemma3_text", "gpt2", "qwen2"])
def test_batched_equals_single_on_other_architectures(
    arch: str, tiny_model_dir: Callable[[str], str], prompts: list[list[int]]
) -> None:
    lm = load_model(tiny_model_dir(arch))
    recorder = Recorder(lm, Decoding())
    batched = recorder.record(prompts, new_tokens=6)
    for row, prompt in enumerate(prompts):
        single = recorder.record([prompt], new_tokens=6)
        assert torch.equal(single.token_ids[0], batched.token_ids[row])
        np.testing.assert_allclose(_kv(single, 0)["K"][1:], _kv(batched, row)["K"][1:], atol=1e-3)
        np.testing.assert_allclose(_kv(single, 0)["V"], _kv(batched, row)["V"], atol=1e-3)


def test_greedy_is_the_argmax_and_matches_teacher_forcing(
    smollm2: LoadedModel, prompts: list[list[int]]
) -> None:
    greedy = Recorder(smollm2, Decoding(), keep_hidden=True).record(prompts[:2], new_tokens=10)
    teacher = Recorder(smollm2, Decoding(strategy="teacher"), keep_hidden=True).record(
        prompts[:2], new_tokens=10, targets=[greedy.token_ids[i].tolist() for i in range(2)]
    )
    assert torch.equal(teacher.token_ids, greedy.token_ids)
    torch.testing.assert_close(teacher.logp, greedy.logp, atol=1e-4, rtol=0)
    assert teacher.hidden is not None and greedy.hidden is not None
    torch.testing.assert_close(teacher.hidden, greedy.hidden, atol=1e-4, rtol=1e-4)
    # Greedy emits the argmax of the readout of h_t, and logp is that token's log-probability.
    lp = readout(smollm2.model).log_probs(greedy.hidden.to(smollm2.device)).cpu()
    assert torch.equal(lp.argmax(-1), greedy.token_ids.cpu())
    chosen = lp.gather(-1, greedy.token_ids.cpu()[..., None])[..., 0]
    torch.testing.assert_close(chosen, greedy.logp.float().cpu(), atol=1e-4, rtol=0)
    # So its surprisal -ln p_max is the min-entropy, which never exceeds the Shannon entropy.
    assert (-greedy.logp.float() <= greedy.entropy.float() + 1e-4).all()


def test_sampling_is_seeded_per_trajectory(smollm2: LoadedModel, prompts: list[list[int]]) -> None:
    recorder = Recorder(smollm2, Decoding(strategy="sample", temperature=1.0, top_k=50, top_p=0.95))
    together = recorder.record(prompts[:3], new_tokens=8, seeds=[1, 2, 3])
    alone = recorder.record([prompts[1]], new_tokens=8, seeds=[2])
    again = recorder.record(prompts[:3], new_tokens=8, seeds=[1, 2, 3])
    assert torch.equal(together.token_ids[1], alone.token_ids[0])
    assert torch.equal(together.token_ids, again.token_ids)
    other = recorder.record(prompts[:3], new_tokens=8, seeds=[7, 8, 9])
    assert not torch.equal(together.token_ids, other.token_ids)


def test_top_k_one_is_greedy(smollm2: LoadedModel, prompts: list[list[int]]) -> None:
    greedy = Recorder(smollm2, Decoding()).record(prompts[:2], new_tokens=6)
    top1 = Recorder(smollm2, Decoding(strategy="sample", top_k=1)).record(prompts[:2], new_tokens=6)
    assert torch.equal(greedy.token_ids, top1.token_ids)


def test_stop_at_eos_truncates(smollm2: LoadedModel, prompts: list[list[int]]) -> None:
    # A finished assistant turn without its closing <|im_end|>: the model ends it next.
    turn = smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."}],
        tokenize=True,
    )["input_ids"][:-2]
    stopping = Recorder(smollm2, Decoding(stop_at_eos=True))
    record = stopping.record([list(turn), prompts[0]], new_tokens=8)
    assert record.lengths == [1, 8]
    assert int(record.token_ids[0, 0]) in stopping.eos_ids
    assert (record.token_ids[0, 1:] == -1).all() and torch.isnan(record.logp[0, 1:]).all()
    assert torch.isnan(record.speed_sq[0, 1:]).all()
    # Without stopping, the same row runs on for all 8 steps.
    assert Recorder(smollm2, Decoding()).record([list(turn)], new_tokens=8).lengths == [8]


def test_bad_decoding_and_context(smollm2: LoadedModel) -> None:
    with pytest.raises(PPMechError, match="temperature"):
        Decoding(strategy="sample", temperature=0.0)
    with pytest.raises(PPMechError, match="`top_p`"):
        Decoding(strategy="sample", top_p=1.5)
    with pytest.raises(PPMechError, match="exceeds the model's 8192 positions"):
        Recorder(smollm2, Decoding()).record([[1] * 8190], new_tokens=10)
