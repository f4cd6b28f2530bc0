"""Jacobian steering on real models: directions, steered generation, the KV cache, the judge."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from ppmech.corpus import special_prefix
from ppmech.engine.hooks import FINAL_NORM, capture
from ppmech.engine.recorder import Recorder
from ppmech.engine.sampling import Decoding
from ppmech.errors import PPMechError
from ppmech.models.architectures import readout
from ppmech.models.identity import LoadedModel
from ppmech.models.loading import load_model
from ppmech.steering.algorithm import SteeringConfig, analytic_direction, autograd_direction, steer
from ppmech.steering.generation import steered_generation
from ppmech.steering.judges.base import JudgeItem
from ppmech.steering.judges.reference import ReferenceLMJudge

PROMPT = "The capital of France is"


def last_states(lm: LoadedModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_t`` and ``h_{t-1}`` at the end of each text, ``[B, d]`` each."""
    last, prev = [], []
    for text in texts:
        ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad(), capture(lm.model, [FINAL_NORM]) as store:
            lm.model(input_ids=ids, logits_to_keep=1)
        states = store[FINAL_NORM][0].float()
        last.append(states[0, -1])
        prev.append(states[0, -2])
    return torch.stack(last), torch.stack(prev)


def prompt_ids(lm: LoadedModel, text: str = PROMPT) -> list[int]:
    return special_prefix(lm.tokenizer) + lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def token_ids(lm: LoadedModel, text: str) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_analytic_direction_equals_autograd_on_smollm2(smollm2: LoadedModel) -> None:
    h, _ = last_states(smollm2, ["The cat sat on the", "In 1905 Albert Einstein"])
    read = readout(smollm2.model)
    assert read.is_affine
    targets = torch.tensor(token_ids(smollm2, " mat")[:1] + token_ids(smollm2, " published")[:1])
    ga = analytic_direction(read, h, targets)
    gb = autograd_direction(read.log_probs, h, targets)
    # Float32 sums over 49k vocabulary rows: agree to 1e-4 absolute on entries of order 1.
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-4)
    assert float(torch.nn.functional.cosine_similarity(ga, gb).min()) > 0.99999


def test_steering_smollm2_states_reaches_eta_and_reports_energy(smollm2: LoadedModel) -> None:
    h, h_prev = last_states(smollm2, ["The cat sat on the", "In 1905 Albert Einstein"])
    read = readout(smollm2.model)
    targets = torch.tensor(token_ids(smollm2, " banana")[:1] + token_ids(smollm2, " ate")[:1])
    result = steer(read, h, targets, SteeringConfig(eta=0.5), h_prev=h_prev)
    assert result.method == "analytic"
    assert bool(result.reached.all())
    assert bool((result.p_before < 0.5).all())
    assert bool((result.delta_norm > 0).all())
    # ΔH is recomputed from the steered state: finite, and it matches its definition.
    lp_st = read.log_probs(result.hidden)
    lp_nat = read.log_probs(h)
    x_nat, x_st = lp_nat.argmax(-1), lp_st.argmax(-1)
    assert torch.equal(x_st, targets)  # p >= 0.5 makes the target the argmax
    k = lambda a: torch.log(0.5 * (a.double() - h_prev.double()).pow(2).sum(-1))  # noqa: E731
    expected = (k(result.hidden) - lp_st.gather(-1, x_st[:, None])[:, 0].double()) - (
        k(h) - lp_nat.gather(-1, x_nat[:, None])[:, 0].double()
    )
    torch.testing.assert_close(result.delta_H, expected)


@pytest.mark.slow
def test_soft_capped_architecture_steers_by_autograd(tiny_model_dir: Callable[[str], str]) -> None:
    lm = load_model(tiny_model_dir("gemma3_text"))
    read = readout(lm.model)
    assert not read.is_affine
    h, _ = last_states(lm, ["The cat sat on the"])
    result = steer(read, h, torch.tensor([123]), SteeringConfig(eta=0.3))
    assert result.method == "autograd"
    assert float(result.p_after[0]) > float(result.p_before[0])


@pytest.mark.slow
def test_final_layer_steered_generation_emits_the_targets(smollm2: LoadedModel) -> None:
    target = token_ids(smollm2, " a small village")
    pair = steered_generation(smollm2, [prompt_ids(smollm2)], [target], len(target) + 2)
    natural = Recorder(smollm2, Decoding()).record([prompt_ids(smollm2)], len(target) + 2)
    # The natural trace is the ordinary greedy recording.
    assert torch.equal(pair.natural.token_ids, natural.token_ids)
    steered = pair.steered
    assert steered.token_ids[0, : len(target)].tolist() == target
    assert (steered.p_target_after[0, : len(target)] >= 0.5).all()
    assert (steered.target_ids[0, len(target) :] == -1).all()
    assert torch.isnan(steered.delta_norm[0, len(target) :]).all()


@pytest.mark.slow
def test_final_layer_steering_leaves_the_kv_cache_alone(smollm2: LoadedModel) -> None:
    """Steering h_t after the final norm changes only the emitted token: the next step's
    distribution equals plain recording of the prompt plus that token."""
    target = token_ids(smollm2, " Madrid")[:1]
    pair = steered_generation(smollm2, [prompt_ids(smollm2)], [target], 2)
    x0 = int(pair.steered.token_ids[0, 0])
    assert x0 == target[0]
    plain = Recorder(smollm2, Decoding()).record([[*prompt_ids(smollm2), x0]], 1)
    assert int(plain.token_ids[0, 0]) == int(pair.steered.token_ids[0, 1])
    assert float(plain.logp[0, 0]) == pytest.approx(float(pair.steered.logp[0, 1]), abs=1e-4)


@pytest.mark.slow
def test_intermediate_layer_steering_enters_the_kv_cache(smollm2: LoadedModel) -> None:
    target = token_ids(smollm2, " Madrid")[:1]
    layer = smollm2.identity.num_layers // 2
    pair = steered_generation(smollm2, [prompt_ids(smollm2)], [target], 2, layer=layer)
    x0 = int(pair.steered.token_ids[0, 0])
    assert x0 == target[0]
    assert float(pair.steered.p_target_after[0, 0]) >= 0.5
    # The next step now differs from feeding the same token without the perturbation.
    plain = Recorder(smollm2, Decoding()).record([[*prompt_ids(smollm2), x0]], 1)
    entropy_plain = float(plain.entropy[0, 0])
    assert abs(entropy_plain - float(pair.steered.entropy[0, 1])) > 1e-3


@pytest.mark.slow
def test_layer_steering_without_work_reproduces_the_natural_trace(smollm2: LoadedModel) -> None:
    """Rows already at η take no step; the trial forwards must leave the cache exactly as it was."""
    natural = Recorder(smollm2, Decoding()).record([prompt_ids(smollm2)], 4)
    greedy = natural.token_ids[0].tolist()
    pair = steered_generation(smollm2, [prompt_ids(smollm2)], [greedy], 4, SteeringConfig(eta=1e-6), layer=5)
    assert pair.steered.token_ids[0].tolist() == greedy
    assert (pair.steered.steer_steps[0] == 0).all()
    torch.testing.assert_close(pair.steered.logp[0], natural.logp[0].double(), atol=1e-4, rtol=0)


def test_natural_and_steered_samplers_filter_identically(smollm2: LoadedModel) -> None:
    """One chooser for both traces: with nothing to steer, the steered trace draws what the natural
    one draws, top-k and top-p included (a sampler that ignored them would wander off)."""
    prompts = [prompt_ids(smollm2), prompt_ids(smollm2, "Water boils at")]
    decoding = Decoding(strategy="sample", temperature=1.5, top_k=4, top_p=0.7)
    nothing = [[-1] * 10, [-1] * 10]
    pair = steered_generation(smollm2, prompts, nothing, 10, decoding=decoding, seeds=[3, 4])
    assert torch.equal(pair.steered.token_ids, pair.natural.token_ids)
    torch.testing.assert_close(pair.steered.logp, pair.natural.logp, atol=1e-4, rtol=0)
    # The filter bites: without top-k/top-p the same seeds draw other tokens at this temperature.
    loose = steered_generation(
        smollm2, prompts, nothing, 10, decoding=Decoding(strategy="sample", temperature=1.5), seeds=[3, 4]
    )
    assert not torch.equal(loose.natural.token_ids, pair.natural.token_ids)
    assert torch.equal(loose.steered.token_ids, loose.natural.token_ids)


def test_layer_out_of_range_is_a_user_error(smollm2: LoadedModel) -> None:
    with pytest.raises(PPMechError, match="out of range"):
        steered_generation(smollm2, [prompt_ids(smollm2)], [[1]], 1, layer=99)


def test_reference_judge_scores_string_logprobs_exactly(smollm2: LoadedModel) -> None:
    judge = ReferenceLMJudge(lm=smollm2)
    context = "The capital of France is Paris. The capital of Germany is"
    strings = [" Berlin", " Schwarzwaldhausen", " the"]
    got = judge.string_logprobs(context, strings)
    tok = smollm2.tokenizer
    ctx = special_prefix(tok) + tok(context, add_special_tokens=False)["input_ids"]
    for s, value in zip(strings, got, strict=True):
        pieces = tok(s, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(smollm2.model(input_ids=torch.tensor([ctx + pieces])).logits.float(), -1)[
                0
            ]
        expected = sum(float(lp[len(ctx) - 1 + j, p]) for j, p in enumerate(pieces))
        assert value == pytest.approx(expected, abs=1e-3)
    assert len(tok(" Schwarzwaldhausen", add_special_tokens=False)["input_ids"]) > 1


def test_reference_judge_prefers_plausible_lists(smollm2: LoadedModel) -> None:
    judge = ReferenceLMJudge(lm=smollm2)
    context = "The capital of France is Paris. The capital of Germany is"
    good = JudgeItem(
        context, [" Berlin", " the", " a", " Munich", " not", " also", " located", " in", " one", " now"]
    )
    bad = JudgeItem(context, ["zx", "qq", "ß", "]]", "ptk", "@@", " wv", "0x", "~~", "ĝ"])
    empty = JudgeItem(context, [])
    s_good, s_bad, s_empty = judge.score([good, bad, empty])
    assert s_good.score is not None and s_bad.score is not None
    assert s_good.score > s_bad.score + 3
    assert 1.0 <= s_bad.score <= 10.0
    assert s_empty.score is None and s_empty.error
    assert "mean_logp=" in s_good.raw
    assert json.dumps(judge.describe())  # provenance is JSON-ready
