"""The paper's mechanics as pure functions over arrays. No model inside.

Conventions (paper §2.1, App. A; issue #2). For one trajectory of ``T`` generated
tokens, step ``t = 0`` is the token produced from the last prompt position; at
step ``t`` token ``x_t`` is produced from the post-final-norm hidden state
``h_t``:

* potential       ``V_t = -ln p_{x_t}(h_t)``                  (nats, all t)
* velocity        ``v_t = h_t - h_{t-1}``                     (t >= 1)
* log-kinetic     ``K_t = ln(½‖v_t‖²)``                       (t >= 1)
* log-energy      ``H_t = K_t + V_t``, ``E_t = exp(H_t)``     (t >= 1)
* log-Lagrangian  ``L_t = K_t - V_t``; action ``S = Σ_{t>=1} L_t``
* entropy         ``-Σ_j p_j(h_t) ln p_j(h_t)``               (nats)

:func:`step_terms` is the one place the per-step terms are read off a model's logits
(log-softmax in float32, the chosen token's log-probability, the entropy): the
recorder, steered generation, the monitor's stream and the per-layer lens call it.

``K`` is ``-inf`` where ``‖v_t‖ = 0`` (an exact repeat of the hidden state).
These functions return it as ``-inf``; :mod:`ppmech.statistics` counts and
excludes such steps so they never become NaN in a statistic. Step 0 has no
velocity; its K, H and L are NaN ("undefined"), never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import NDArray

F64 = NDArray[np.float64]


def step_speed_squared(h_prev: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``‖h - h_prev‖²`` over the last axis, in float64.

    Args:
        h_prev, h: ``[..., d]`` states one step apart.

    Returns:
        ``[...]`` float64.
    """
    return (h.double() - h_prev.double()).pow(2).sum(-1)


def speed_squared(hidden: torch.Tensor) -> torch.Tensor:
    """``‖h_t - h_{t-1}‖²`` along the time axis, computed in float64.

    Args:
        hidden: ``[..., T, d]`` hidden states.

    Returns:
        ``[..., T]`` float64; entry 0 is NaN (no previous state).
    """
    h = hidden.double()
    out = torch.full(h.shape[:-1], float("nan"), dtype=torch.float64, device=h.device)
    out[..., 1:] = step_speed_squared(h[..., :-1, :], h[..., 1:, :])
    return out


Arr = TypeVar("Arr", F64, torch.Tensor)


def _f64(x: Arr) -> Arr:
    """``x`` as float64, a tensor staying a tensor (on its device) and anything else a NumPy array."""
    if isinstance(x, torch.Tensor):
        return x.double()
    return np.asarray(x, dtype=np.float64)


def kinetic(speed_sq: Arr) -> Arr:
    """The kinetic energy ``½‖v‖²`` from squared speeds."""
    return 0.5 * _f64(speed_sq)


def log_kinetic(speed_sq: Arr) -> Arr:
    """``K = ln(½‖v‖²)`` from squared speeds; ``-inf`` where the speed is 0, NaN stays NaN."""
    k = kinetic(speed_sq)
    if isinstance(k, torch.Tensor):
        return torch.log(k)
    with np.errstate(divide="ignore"):
        return np.log(k)


def potential(logp: Arr) -> Arr:
    """``V = -ln p`` from the log-probability of the realised token (nats)."""
    return -_f64(logp)


def log_energy(k: Arr, v: Arr) -> Arr:
    """``H = K + V``."""
    return _f64(k) + _f64(v)


def lagrangian(k: F64, v: F64) -> F64:
    """``L = K - V`` (paper Def. C.1)."""
    return np.asarray(k, dtype=np.float64) - np.asarray(v, dtype=np.float64)


def action(lagr: F64) -> float:
    """``S = Σ_t L_t`` over the finite steps (NaN and ±inf steps are skipped)."""
    arr = np.asarray(lagr, dtype=np.float64)
    return float(arr[np.isfinite(arr)].sum())


def entropy_from_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of distributions given as log-probabilities ``[..., V]``."""
    lp = logprobs.float()
    p = lp.exp()
    return -(p * torch.where(p > 0, lp, torch.zeros_like(lp))).sum(-1)


@dataclass(frozen=True)
class StepTerms:
    """What one decoding step's distribution gives, all on the logits' device.

    Attributes:
        logprobs: ``[..., V]`` float32, ``ln p(h_t)`` (the log-softmax of the logits).
        logp: ``[...]`` float32, ``ln p_{x_t}(h_t)`` of the chosen token (``V_t = -logp``).
        entropy: ``[...]`` float32, the entropy of ``p(h_t)`` in nats.
        tokens: ``[...]`` int64, the chosen tokens ``x_t``.
    """

    logprobs: torch.Tensor
    logp: torch.Tensor
    entropy: torch.Tensor
    tokens: torch.Tensor

    @property
    def surprisal(self) -> torch.Tensor:
        """``V_t = -ln p_{x_t}(h_t)`` (nats), float32."""
        return -self.logp


def step_terms(logits: torch.Tensor, tokens: torch.Tensor) -> StepTerms:
    """The per-step terms from logits: log-softmax (float32), chosen token's ``ln p``, entropy.

    The logits are the model's own (bias, logit scale and soft-cap included, see
    :func:`ppmech.models.architectures.readout`); the log-softmax is taken in float32
    whatever the model's dtype. The mechanics describe the model, not the sampler: pass
    untempered logits.

    Args:
        logits: ``[..., V]`` logits (any float dtype).
        tokens: ``[...]`` the chosen (or scored) token ids.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    tokens = tokens.to(device=logprobs.device, dtype=torch.long)
    logp = logprobs.gather(-1, tokens[..., None])[..., 0]
    return StepTerms(logprobs=logprobs, logp=logp, entropy=entropy_from_logprobs(logprobs), tokens=tokens)


def energy_terms(speed_sq: F64, logp: F64) -> dict[str, F64]:
    """All per-step terms for one or many trajectories.

    Args:
        speed_sq: ``‖v_t‖²`` with NaN at step 0, shape ``[..., T]``.
        logp: ``ln p_{x_t}(h_t)``, shape ``[..., T]``.

    Returns:
        dict with ``K``, ``V``, ``H``, ``E`` and ``L``, each ``[..., T]`` float64.
    """
    k = log_kinetic(speed_sq)
    v = potential(logp)
    h = log_energy(k, v)
    with np.errstate(over="ignore"):
        e = np.exp(h)
    return {"K": k, "V": v, "H": h, "E": e, "L": lagrangian(k, v)}


def turning_angles(hidden: F64) -> F64:
    """Angle (radians, in ``[0, π]``) between consecutive velocities, in float64.

    The curvature of Hosseini & Fedorenko (NeurIPS 2023): entry ``t`` is the turn
    *at* ``h_t``, the angle between ``v_t = h_t − h_{t−1}`` and
    ``v_{t+1} = h_{t+1} − h_t``, ``arccos(v_t·v_{t+1} / (‖v_t‖‖v_{t+1}‖))``.
    A straight line gives 0, a reversal π.

    Args:
        hidden: ``[..., T, d]`` states ``h_t``.

    Returns:
        ``[..., T]``; defined for ``1 ≤ t ≤ T−2``. Entries 0 and ``T−1`` are NaN
        (one velocity missing), and so is any turn next to a zero or non-finite
        velocity (the angle is undefined there, not 0).
    """
    h = np.asarray(hidden, dtype=np.float64)
    out = np.full(h.shape[:-1], np.nan, dtype=np.float64)
    if h.shape[-2] < 3:
        return out
    v = h[..., 1:, :] - h[..., :-1, :]  # v[..., k] = v_{k+1}
    norm = np.sqrt(np.sum(v * v, axis=-1))
    dot = np.sum(v[..., 1:, :] * v[..., :-1, :], axis=-1)
    den = norm[..., 1:] * norm[..., :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, dot / den, np.nan)
    # Rounding can push |cos| a hair past 1 for (anti)parallel steps.
    out[..., 1:-1] = np.arccos(np.clip(cos, -1.0, 1.0))
    return out
