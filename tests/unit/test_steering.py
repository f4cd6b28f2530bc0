"""Algorithm 1 and its pieces on small random readouts: pure, fast, hand-checkable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppmech.errors import PPMechError
from ppmech.models.architectures import Readout
from ppmech.steering.algorithm import (
    SteeringConfig,
    analytic_direction,
    autograd_direction,
    energy_change,
    kl_divergence,
    steer,
)
from ppmech.steering.baselines import baseline_comparison, baseline_table


def make_readout(seed: int, vocab: int = 40, dim: int = 12, softcap: float | None = None) -> Readout:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, dim, generator=gen)
    bias = torch.randn(vocab, generator=gen) * 0.1
    return Readout(weight=weight, bias=bias, scale=1.0, softcap=softcap)


def states(seed: int, batch: int, dim: int, norm: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    h = torch.randn(batch, dim, generator=gen)
    return h / h.norm(dim=-1, keepdim=True) * norm


def test_analytic_direction_by_hand() -> None:
    # V = 2, d = 1, logits z = (h, 0): p_0 = sigmoid(h); d ln p_0/dh = 1 - p_0.
    readout = Readout(weight=torch.tensor([[1.0], [0.0]]), bias=None)
    h = torch.tensor([[0.3]])
    g = analytic_direction(readout, h, torch.tensor([0]))
    assert g.item() == pytest.approx(1 - 1 / (1 + math.exp(-0.3)), rel=1e-6)


def test_analytic_equals_autograd_on_affine_readout() -> None:
    readout = make_readout(0)
    readout = Readout(readout.weight, readout.bias, scale=0.7)  # the logit scale enters the gradient
    h = states(0, 8, 12, 3.0)
    targets = torch.arange(8) * 3
    ga = analytic_direction(readout, h, targets)
    gb = autograd_direction(readout.log_probs, h, targets)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


def test_analytic_refuses_soft_capped_readout() -> None:
    with pytest.raises(PPMechError, match="soft-caps"):
        analytic_direction(make_readout(0, softcap=5.0), states(0, 2, 12, 1.0), torch.tensor([0, 1]))


def test_soft_capped_readout_steers_by_autograd() -> None:
    readout = make_readout(3, softcap=4.0)
    h = states(3, 6, 12, 2.0)
    targets = torch.tensor([1, 5, 9, 13, 17, 21])
    result = steer(readout, h, targets)
    assert result.method == "autograd"
    assert bool((result.p_after >= result.p_before).all())
    assert bool(result.reached.any())


@pytest.mark.parametrize("eta", [0.0, 1.0, 1.5, -0.2])
def test_eta_outside_open_interval_is_refused(eta: float) -> None:
    with pytest.raises(PPMechError, match="`eta`"):
        SteeringConfig(eta=eta)


def test_max_steps_must_be_positive() -> None:
    with pytest.raises(PPMechError, match="`max_steps`"):
        SteeringConfig(max_steps=0)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    norm=st.floats(0.1, 30.0),
    eta=st.floats(0.05, 0.95),
    softcap=st.sampled_from([None, 3.0, 30.0]),
    max_steps=st.integers(1, 20),
)
def test_target_probability_never_decreases_along_the_line_search(
    seed: int, norm: float, eta: float, softcap: float | None, max_steps: int
) -> None:
    readout = make_readout(seed % 7, softcap=softcap)
    h = states(seed, 5, 12, norm)
    targets = torch.tensor([(seed + 7 * i) % 40 for i in range(5)])
    result = steer(readout, h, targets, SteeringConfig(eta=eta, max_steps=max_steps))
    trace = result.p_trace.numpy()
    for row in range(5):
        taken = trace[row][~np.isnan(trace[row])]
        # Every accepted step raises p_{t*} (as computed), and nothing after a stop.
        assert np.all(np.diff(taken) > 0)
        assert len(taken) == int(result.steps[row]) + 1
    assert bool((result.p_after >= result.p_before).all())
    assert bool((result.steps <= max_steps).all())
    assert torch.equal(result.reached, result.p_after >= eta - 1e-12)
    # A row only moves while below η.
    at_start = result.p_before >= eta
    assert bool((result.steps[at_start] == 0).all())
    assert torch.allclose(result.hidden[at_start], h[at_start])


def test_reaches_eta_within_k_steps_on_affine_readout() -> None:
    readout = make_readout(1)
    h = states(1, 16, 12, 2.0)
    targets = torch.arange(16) * 2
    result = steer(readout, h, targets, SteeringConfig(eta=0.5, max_steps=20))
    assert bool(result.reached.all())
    # The bisection keeps the overshoot past η small.
    assert float(result.p_after.max()) < 0.6


def test_negative_target_leaves_row_alone() -> None:
    readout = make_readout(2)
    h = states(2, 3, 12, 1.0)
    result = steer(readout, h, torch.tensor([-1, 4, -1]))
    assert result.steps[0] == 0 and result.steps[2] == 0
    assert torch.equal(result.hidden[0], h[0])
    assert not bool(result.reached[0])


def test_theorem_e1_gradient_direction_has_smallest_step_for_a_given_gain() -> None:
    """For a first-order gain c = g·δh, δh ∥ g needs ‖δh‖ = c/‖g‖; any other direction needs more."""
    readout = make_readout(4)
    h = states(4, 4, 12, 2.0)
    targets = torch.tensor([3, 7, 11, 19])
    g = analytic_direction(readout, h, targets).double()
    c = 0.01
    jac = c / g.norm(dim=-1)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(200, 4, 12, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    along = (u * g).sum(-1).abs()  # first-order gain per unit step along ±u
    other = c / along
    assert bool((other >= jac - 1e-12).all())
    assert float((other / jac).min()) > 1.0
    # The Jacobian step really delivers the first-order gain c (finite difference).
    step = (c / g.norm(dim=-1) ** 2)[:, None] * g
    lp0 = readout.log_probs(h.double().float()).double().gather(-1, targets[:, None])[:, 0]
    lp1 = readout.log_probs((h.double() + step).float()).double().gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(lp1 - lp0, torch.full_like(lp0, c), rtol=2e-2, atol=1e-4)


def test_energy_change_by_hand() -> None:
    h_prev = torch.zeros(1, 2)
    h_nat = torch.tensor([[2.0, 0.0]])  # K = ln(½·4) = ln 2
    h_st = torch.tensor([[0.0, 4.0]])  # K = ln(½·16) = ln 8
    dh = energy_change(
        h_prev,
        h_nat,
        h_st,
        torch.tensor([math.log(0.5)], dtype=torch.float64),
        torch.tensor([math.log(0.8)], dtype=torch.float64),
    )
    expected = (math.log(8) - math.log(0.8)) - (math.log(2) - math.log(0.5))
    assert dh.item() == pytest.approx(expected, rel=1e-12)


def test_kl_divergence_by_hand() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.25, 0.5]], dtype=torch.float64)
    kl = kl_divergence(p.log(), q.log())
    assert kl.item() == pytest.approx(math.log(2), rel=1e-12)
    assert kl_divergence(q.log(), q.log()).item() == pytest.approx(0.0, abs=1e-12)


def test_baselines_reach_the_same_target_probability() -> None:
    readout = make_readout(5, vocab=60, dim=16)
    h = states(5, 12, 16, 3.0)
    h_prev = states(6, 12, 16, 3.0)
    targets = torch.arange(12) * 5
    result = steer(readout, h, targets, h_prev=h_prev)
    long = baseline_comparison(readout, h, targets, result, h_prev=h_prev, seed=0)
    steered = int((result.steps > 0).sum())
    assert set(long["method"]) == {"jacobian", "logit bias", "random direction", "unembedding row"}
    assert (long.groupby("method").size() == steered).all()
    jac = long[long["method"] == "jacobian"].set_index("row")
    for method in ("logit bias", "random direction", "unembedding row"):
        part = long[(long["method"] == method) & long["reached"]].set_index("row")
        np.testing.assert_allclose(part["p_after"], jac.loc[part.index, "p_after"], rtol=1e-3)
        assert (part["kl"] >= 0).all()
    assert long[long["method"] == "logit bias"]["delta_norm"].isna().all()
    assert long[long["method"] == "logit bias"]["reached"].all()
    table = baseline_table(long)
    assert list(table["method"]) == ["jacobian", "logit bias", "random direction", "unembedding row"]
    assert table.loc[0, "median ‖δh‖/jacobian"] == pytest.approx(1.0)
