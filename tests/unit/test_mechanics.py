"""The mechanics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import torch

from ppmech.mechanics import (
    action,
    energy_terms,
    entropy_from_logprobs,
    lagrangian,
    log_energy,
    log_kinetic,
    potential,
    speed_squared,
    step_speed_squared,
    step_terms,
)


def test_speed_squared_by_hand() -> None:
    h = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [0.0, 0.0]])
    s = speed_squared(h).numpy()
    assert math.isnan(s[0])
    np.testing.assert_array_equal(s[1:], [25.0, 0.0, 25.0])
    assert s.dtype == np.float64


def test_speed_squared_batched_matches_rows() -> None:
    h = torch.randn(3, 5, 7)
    batched = speed_squared(h)
    for row in range(3):
        torch.testing.assert_close(batched[row], speed_squared(h[row]), equal_nan=True)


def test_energy_terms_by_hand() -> None:
    # ½‖v‖² = 8 → K = ln 8; p = 1/4 → V = ln 4; H = ln 32; E = 32; L = ln 2.
    terms = energy_terms(np.array([np.nan, 16.0]), np.array([math.log(0.5), math.log(0.25)]))
    assert math.isnan(terms["K"][0]) and math.isnan(terms["H"][0])
    assert terms["V"][0] == math.log(2)  # V is defined at step 0, K is not
    assert math.isclose(terms["K"][1], math.log(8))
    assert math.isclose(terms["V"][1], math.log(4))
    assert math.isclose(terms["H"][1], math.log(32))
    assert math.isclose(terms["E"][1], 32.0)
    assert math.isclose(terms["L"][1], math.log(2))


def test_zero_velocity_is_minus_infinity_not_nan() -> None:
    k = log_kinetic(np.array([0.0, 2.0]))
    assert np.isneginf(k[0]) and k[1] == 0.0


def test_potential_and_lagrangian_signs() -> None:
    v = potential(np.array([-2.0]))
    assert v[0] == 2.0
    assert lagrangian(np.array([5.0]), v)[0] == 3.0


def test_action_skips_undefined_steps() -> None:
    assert action(np.array([np.nan, 1.0, -np.inf, 2.5])) == 3.5


def test_entropy_uniform_and_point_mass() -> None:
    uniform = torch.log_softmax(torch.zeros(2, 8), dim=-1)
    torch.testing.assert_close(entropy_from_logprobs(uniform), torch.full((2,), math.log(8)))
    point = torch.log_softmax(torch.tensor([[0.0, -1e9, -1e9]]), dim=-1)
    assert entropy_from_logprobs(point).item() == 0.0


def test_one_step_kinetic_term_on_tensors() -> None:
    """The streaming/steering path: ``K = ln(½‖h - h_prev‖²)`` of one step, on float64 tensors."""
    sq = step_speed_squared(torch.zeros(2), torch.tensor([3.0, 4.0]))
    assert sq.dtype == torch.float64 and float(sq) == 25.0
    assert float(log_kinetic(sq)) == math.log(12.5)
    assert float(log_kinetic(step_speed_squared(torch.ones(2), torch.ones(2)))) == float("-inf")
    # Tensor and array paths agree, and H = K + V with V = -ln p.
    k = log_kinetic(torch.tensor([2.0, 8.0], dtype=torch.float64))
    assert k.tolist() == log_kinetic(np.array([2.0, 8.0])).tolist() == [0.0, math.log(4.0)]
    assert log_energy(k, potential(torch.tensor([-1.0, -2.0]))).tolist() == [1.0, math.log(4.0) + 2.0]


def test_step_terms_by_hand() -> None:
    # p = (1/4, 1/2, 1/4): ln p_1 = -ln 2; entropy = 2 * (1/4) ln 4 + (1/2) ln 2 = 1.5 ln 2.
    logits = torch.tensor([[0.0, math.log(2.0), 0.0], [7.0, 7.0 + math.log(2.0), 7.0]])
    terms = step_terms(logits, torch.tensor([1, 0]))
    assert terms.logprobs.dtype == torch.float32 and terms.logprobs.shape == (2, 3)
    np.testing.assert_allclose(terms.logp.numpy(), [-math.log(2.0), -math.log(4.0)], rtol=1e-6)
    np.testing.assert_allclose(terms.surprisal.numpy(), [math.log(2.0), math.log(4.0)], rtol=1e-6)
    np.testing.assert_allclose(terms.entropy.numpy(), [1.5 * math.log(2.0)] * 2, rtol=1e-6)
    assert terms.tokens.tolist() == [1, 0]


def test_step_terms_take_the_log_softmax_in_float32() -> None:
    logits = torch.tensor([[0.0, 0.69314718, 0.0]], dtype=torch.bfloat16)
    terms = step_terms(logits, torch.tensor([1]))
    assert terms.logp.dtype == torch.float32 and terms.entropy.dtype == torch.float32
    # bfloat16 rounds ln 2 to 0.69140625: the float32 log-softmax of that value, exactly.
    expected = 0.69140625 - math.log(2.0 + math.exp(0.69140625))
    assert abs(float(terms.logp[0]) - expected) < 1e-6
