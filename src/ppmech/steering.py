"""Minimal-action Jacobian steering (paper §E, Algorithm 1), batched, and steered generation.

Notation. ``h`` is the state that is moved, ``[B, d]``; each row ``i`` has its own
target token ``t*_i``. A *log-prob map* ``F: [B, d] -> [B, V]`` gives the model's
float32 next-token log-probabilities from ``h``:

* final layer (the paper's case): ``h`` is the post-final-norm state ``h_t`` and
  ``F`` is :meth:`ppmech.architectures.Readout.log_probs`. Where the readout is
  affine (no soft-capping) the direction is the paper's closed form
  ``g = s (W_{t*} - pᵀW)`` (``s`` = the readout's logit scale, 1 for most models);
  otherwise (Gemma's soft-capping) it is ``∇_h ln p_{t*}`` by autograd.
* intermediate layer ``L`` (**beyond the paper**): ``h`` is the residual stream
  after decoder block ``L`` at the newest position; ``F`` runs the blocks above
  ``L``, the final norm and the unembedding, with the KV cache of the earlier
  positions; the direction is by autograd. The steered residual is then written
  into the KV cache, so it shapes later tokens.

Algorithm 1, per row, for ``k = 0 .. K-1``: stop when ``p_{t*}(h_k) >= η``; else
``ĝ = g/‖g‖`` and ``h_{k+1} = h_k + α_k ĝ`` with ``α_k`` from a line search that
only accepts ``ln p_{t*}(h_{k+1}) > ln p_{t*}(h_k)`` (strictly, as computed):

* the first trial is the first-order step that would reach η,
  ``α = (ln η - ln p_{t*}(h_k)) / ‖g‖`` (for affine readouts ``ln p_{t*}`` is
  concave in ``h``, so this never overshoots η);
* trials that do not increase ``p_{t*}`` are halved, up to ``max_backtracks``
  times; a row whose line search finds no increase stops (``stalled``);
* a first trial that is accepted with ``p`` still below η is doubled while
  ``p_{t*}`` keeps increasing and stays below η (``max_expansions`` times), which
  saves steps where ``ln p`` is nearly linear; a doubling that jumps past η is
  shortened by ``bisections`` bisection steps between the last step below η and
  the first above it (every accepted point still has a higher ``p_{t*}``).

Energy change ΔH of a steered step (nats). With ``h_{t-1}`` the previous state,
``h_t`` the natural state, ``ĥ_t`` the steered one, ``x`` the token emitted from the
natural distribution and ``x̂`` the token emitted from the steered one (by default
each distribution's argmax):

``ΔH = [ln(½‖ĥ_t - h_{t-1}‖²) - ln p_x̂(ĥ_t)] - [ln(½‖h_t - h_{t-1}‖²) - ln p_x(h_t)]``

i.e. the log-energy ``H = K + V`` of :mod:`ppmech.mechanics` recomputed with the
steered state and the steered distribution, minus the natural one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ppmech.architectures import Readout, decoder_layers
from ppmech.errors import PPMechError, check_seed
from ppmech.hooks import FINAL_NORM, capture, hook_module, resid_post
from ppmech.mechanics import entropy_from_logprobs, speed_squared
from ppmech.models import LoadedModel, forward_step, load_configured
from ppmech.recording import Decoding, Recorder, left_pad

LogProbFn = Callable[[torch.Tensor], torch.Tensor]
DirectionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LineFactory = Callable[[torch.Tensor, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]

__all__ = [
    "GenerationPair",
    "SteerConfig",
    "SteerRunResult",
    "SteeringConfig",
    "SteeringResult",
    "Trace",
    "analytic_direction",
    "autograd_direction",
    "baseline_comparison",
    "baseline_table",
    "energy_change",
    "energy_comparison",
    "kl_divergence",
    "readout_line",
    "run_steer",
    "steer",
    "steer_states",
    "steered_generation",
    "target_schedule",
    "trace_frame",
]


@dataclass(frozen=True)
class SteeringConfig:
    """Parameters of Algorithm 1.

    Attributes:
        eta: target probability threshold η, in (0, 1).
        max_steps: K, the most gradient steps per state (>= 1).
        max_backtracks: halvings of α tried before a row is declared stalled.
        max_expansions: doublings of an accepted first trial while p stays below η.
        bisections: bisection steps that shorten a doubling that overshot η.
    """

    eta: float = 0.5
    max_steps: int = 20
    max_backtracks: int = 30
    max_expansions: int = 4
    bisections: int = 8

    def __post_init__(self) -> None:
        if not (isinstance(self.eta, float | int) and 0.0 < float(self.eta) < 1.0):
            raise PPMechError(f"--eta must lie strictly between 0 and 1 (got {self.eta})", "use e.g. 0.5")
        if self.max_steps < 1:
            raise PPMechError(f"--max-steps must be >= 1 (got {self.max_steps})", "use e.g. 20")
        if self.max_backtracks < 1 or self.max_expansions < 0 or self.bisections < 0:
            raise PPMechError(
                "max_backtracks must be >= 1, max_expansions and bisections >= 0",
                "use the defaults (30, 4 and 8)",
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SteeringResult:
    """Algorithm 1's outcome for ``B`` states.

    Attributes:
        hidden: ``[B, d]`` float32, the steered states ``ĥ``.
        steps: ``[B]`` int64, accepted steps (0 when ``p`` already reached η or
            the row was not steered).
        delta_norm: ``[B]`` float64, ``‖ĥ - h‖`` (same units as ``h``).
        p_before, p_after: ``[B]`` float64, ``p_{t*}`` before and after.
        reached: ``[B]`` bool, ``p_after >= η``.
        stalled: ``[B]`` bool, the line search found no increase (float32 limit).
        p_trace: ``[B, K+1]`` float64, ``p_{t*}`` after each step, NaN after the row stopped.
        targets: ``[B]`` int64, the targets; negative means "not steered".
        delta_H: ``[B]`` float64, ΔH as in the module docstring (NaN without ``h_prev``).
        emitted_natural, emitted_steered: ``[B]`` int64, the tokens used for ΔH.
        method: ``analytic`` or ``autograd``.
    """

    hidden: torch.Tensor
    steps: torch.Tensor
    delta_norm: torch.Tensor
    p_before: torch.Tensor
    p_after: torch.Tensor
    reached: torch.Tensor
    stalled: torch.Tensor
    p_trace: torch.Tensor
    targets: torch.Tensor
    delta_H: torch.Tensor
    emitted_natural: torch.Tensor
    emitted_steered: torch.Tensor
    method: str

    def frame(self) -> pd.DataFrame:
        """One row per state: target, steps, ‖δh‖, p before/after, reached, stalled, ΔH."""
        return pd.DataFrame(
            {
                "target_id": self.targets.cpu().numpy(),
                "steps": self.steps.cpu().numpy(),
                "delta_norm": self.delta_norm.cpu().numpy(),
                "p_before": self.p_before.cpu().numpy(),
                "p_after": self.p_after.cpu().numpy(),
                "reached": self.reached.cpu().numpy(),
                "stalled": self.stalled.cpu().numpy(),
                "delta_H": self.delta_H.cpu().numpy(),
            }
        )


# --------------------------------------------------------------------------- directions


def analytic_direction(readout: Readout, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``∇_h ln p_{t*}(h) = s (W_{t*} - Σ_j p_j(h) W_j)`` for an affine readout.

    Args:
        readout: an affine readout (``readout.is_affine``).
        h: ``[B, d]`` post-final-norm states.
        targets: ``[B]`` target ids (negative entries give an arbitrary row, unused).

    Returns:
        ``[B, d]`` float32.
    """
    if not readout.is_affine:
        raise PPMechError(
            "the analytic steering direction needs logits affine in h (this model soft-caps)",
            "use the autograd direction",
        )
    p = readout.log_probs(h).exp()
    w = readout.weight
    return readout.scale * (w[targets.clamp_min(0)] - p @ w)


def autograd_direction(log_prob_fn: LogProbFn, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``∇_h ln p_{t*}(h)`` by autograd through ``log_prob_fn``; rows are independent.

    Returns:
        ``[B, d]`` float32.
    """
    with torch.enable_grad():
        x = h.detach().float().clone().requires_grad_(True)
        lp = log_prob_fn(x)
        chosen = lp.gather(-1, targets.clamp_min(0)[:, None])[:, 0]
        (grad,) = torch.autograd.grad(chosen.sum(), x)
    return grad.detach()


# --------------------------------------------------------------------------- energy


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``KL(p‖q) = Σ_j p_j (ln p_j - ln q_j)`` in nats over the whole vocabulary, float64.

    Args:
        logp, logq: ``[..., V]`` log-probabilities.
    """
    lp = logp.double()
    lq = logq.double()
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))
    return terms.sum(-1).clamp_min(0.0)


def energy_change(
    h_prev: torch.Tensor,
    h_natural: torch.Tensor,
    h_steered: torch.Tensor,
    logp_natural: torch.Tensor,
    logp_steered: torch.Tensor,
) -> torch.Tensor:
    """ΔH of a steered step (module docstring), float64 ``[B]``.

    Args:
        h_prev: ``[B, d]`` previous states ``h_{t-1}``.
        h_natural, h_steered: ``[B, d]`` natural and steered ``h_t``.
        logp_natural: ``[B]`` ln p of the token emitted from the natural distribution.
        logp_steered: ``[B]`` ln p of the token emitted from the steered distribution.
    """
    k_nat = torch.log(0.5 * (h_natural.double() - h_prev.double()).pow(2).sum(-1))
    k_st = torch.log(0.5 * (h_steered.double() - h_prev.double()).pow(2).sum(-1))
    return (k_st - logp_steered.double()) - (k_nat - logp_natural.double())


# --------------------------------------------------------------------------- Algorithm 1


def _target_logp(lp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return lp.gather(-1, targets.clamp_min(0)[:, None])[:, 0]


def steer_states(
    h: torch.Tensor,
    targets: torch.Tensor,
    log_prob_fn: LogProbFn,
    config: SteeringConfig,
    direction_fn: DirectionFn | None = None,
    h_prev: torch.Tensor | None = None,
    method: str = "autograd",
    line_fn: LineFactory | None = None,
) -> SteeringResult:
    """Algorithm 1 over a batch of states, each with its own target.

    Args:
        h: ``[B, d]`` states to steer.
        targets: ``[B]`` int64 target ids; a negative id leaves that row alone.
        log_prob_fn: ``[B, d] -> [B, V]`` float32 log-probabilities; always called
            on the full batch (rows that stopped keep their state).
        config: η, K and the line-search limits.
        direction_fn: ``(h, targets) -> [B, d]`` gradient of ``ln p_{t*}``;
            autograd through ``log_prob_fn`` when ``None``.
        h_prev: ``[B, d]`` previous states for ΔH (in the same space as ``h``).
        method: label stored in the result.
        line_fn: ``(h, ĝ) -> (α [B] -> ln p_{t*}(h + α ĝ) [B])``, a cheaper evaluator
            of the line search (see :func:`readout_line`); every step it accepts is
            re-checked with ``log_prob_fn`` and kept only if ``p_{t*}`` increased.
            ``None``: ``log_prob_fn`` on each trial point.
    """
    if h.ndim != 2 or targets.shape != (h.shape[0],):
        raise ValueError(f"h must be [B, d] and targets [B]; got {tuple(h.shape)} and {tuple(targets.shape)}")
    targets = targets.to(device=h.device, dtype=torch.long)
    if direction_fn is None:

        def direction_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return autograd_direction(log_prob_fn, x, t)

    exact_line = line_fn is None
    if line_fn is None:

        def line_fn(x: torch.Tensor, u: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda step: _target_logp(log_prob_fn(x + step[:, None] * u).float(), targets)

    ln_eta = math.log(config.eta)
    steer_row = targets >= 0
    h0 = h.detach().float()
    cur = h0.clone()
    with torch.no_grad():
        lp0 = log_prob_fn(cur).float()
    logp = _target_logp(lp0, targets)
    p_before = logp.double().exp()
    batch = h.shape[0]
    trace = torch.full((batch, config.max_steps + 1), float("nan"), dtype=torch.float64)
    trace[:, 0] = p_before.cpu()
    steps = torch.zeros(batch, dtype=torch.long, device=h.device)
    stalled = torch.zeros(batch, dtype=torch.bool, device=h.device)

    for k in range(config.max_steps):
        active = steer_row & ~stalled & (logp < ln_eta)
        if not bool(active.any()):
            break
        g = direction_fn(cur, targets).float()
        gnorm = g.norm(dim=-1)
        ghat = g / gnorm.clamp_min(1e-30)[:, None]
        # First trial: the first-order step that would reach η.
        alpha = ((ln_eta - logp) / gnorm.clamp_min(1e-30)).clamp_min(0.0)
        new_h, new_logp = cur.clone(), logp.clone()
        pending = active & (gnorm > 0)
        first = torch.zeros_like(pending)
        trial = alpha.clone()
        zero = torch.zeros_like(alpha)
        with torch.no_grad():
            along = line_fn(cur, ghat)
            for attempt in range(config.max_backtracks):
                cand = torch.where(pending[:, None], cur + trial[:, None] * ghat, cur)
                cand_logp = along(torch.where(pending, trial, zero))
                ok = pending & (cand_logp > logp)
                new_h = torch.where(ok[:, None], cand, new_h)
                new_logp = torch.where(ok, cand_logp, new_logp)
                if attempt == 0:
                    first = ok.clone()
                pending = pending & ~ok
                if not bool(pending.any()):
                    break
                trial = torch.where(pending, trial * 0.5, trial)
            # Expansion: only from an accepted first trial that is still below η.
            grow = first & (new_logp < ln_eta)
            below = alpha.clone()  # largest accepted trial with p < η
            trial = alpha * 2.0
            crossed = torch.zeros_like(grow)
            above = torch.zeros_like(alpha)  # a trial with p >= η (where crossed)
            for _ in range(config.max_expansions):
                if not bool(grow.any()):
                    break
                cand = torch.where(grow[:, None], cur + trial[:, None] * ghat, cur)
                cand_logp = along(torch.where(grow, trial, zero))
                ok = grow & (cand_logp > new_logp)
                new_h = torch.where(ok[:, None], cand, new_h)
                new_logp = torch.where(ok, cand_logp, new_logp)
                hit = ok & (cand_logp >= ln_eta)
                crossed = crossed | hit
                above = torch.where(hit, trial, above)
                below = torch.where(ok & ~hit, trial, below)
                grow = ok & ~hit
                trial = trial * 2.0
            # A doubling that jumped past η is pulled back by bisection towards the
            # smallest accepted step with p >= η: the same target, a shorter step.
            for _ in range(config.bisections if bool(crossed.any()) else 0):
                mid = 0.5 * (below + above)
                cand = torch.where(crossed[:, None], cur + mid[:, None] * ghat, cur)
                cand_logp = along(torch.where(crossed, mid, zero))
                good = crossed & (cand_logp >= ln_eta) & (cand_logp > logp)
                new_h = torch.where(good[:, None], cand, new_h)
                new_logp = torch.where(good, cand_logp, new_logp)
                above = torch.where(good, mid, above)
                below = torch.where(crossed & ~good, mid, below)
            if not exact_line:
                # The guarantee is on the model's own log-probabilities, not the evaluator's.
                new_logp = torch.where(active, _target_logp(log_prob_fn(new_h).float(), targets), new_logp)
        moved = active & (new_logp > logp)
        stalled = stalled | (active & ~moved)
        steps = steps + moved.long()
        cur = torch.where(moved[:, None], new_h, cur)
        logp = torch.where(moved, new_logp, logp)
        trace[:, k + 1] = torch.where(
            moved, logp.double().exp(), torch.full_like(p_before, float("nan"))
        ).cpu()

    with torch.no_grad():
        lp_final = log_prob_fn(cur).float()
    logp = _target_logp(lp_final, targets)
    p_after = logp.double().exp()
    emitted_nat = lp0.argmax(-1)
    emitted_st = lp_final.argmax(-1)
    if h_prev is not None:
        delta_h = energy_change(
            h_prev.to(cur.device),
            h0,
            cur,
            lp0.gather(-1, emitted_nat[:, None])[:, 0],
            lp_final.gather(-1, emitted_st[:, None])[:, 0],
        )
    else:
        delta_h = torch.full((batch,), float("nan"), dtype=torch.float64)
    return SteeringResult(
        hidden=cur,
        steps=steps,
        delta_norm=(cur.double() - h0.double()).norm(dim=-1),
        p_before=p_before,
        p_after=p_after,
        reached=steer_row & (logp >= ln_eta),
        stalled=stalled,
        p_trace=trace,
        targets=targets,
        delta_H=delta_h,
        emitted_natural=emitted_nat,
        emitted_steered=emitted_st,
        method=method,
    )


def readout_line(readout: Readout, targets: torch.Tensor) -> LineFactory:
    """Line evaluator for :func:`steer_states` on a readout: ``α -> ln p_{t*}(h + α ĝ)``.

    Before soft-capping the logits are affine along the line,
    ``z(α) = s (W h + b) + α s W ĝ``, so after two matrix products per gradient step
    each trial costs only a soft-cap and a log-softmax over ``[B, V]``.
    """
    targets = targets.clamp_min(0)

    def factory(h: torch.Tensor, u: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        z0 = torch.nn.functional.linear(h.float(), readout.weight, readout.bias)
        dz = torch.nn.functional.linear(u.float(), readout.weight)

        def at(step: torch.Tensor) -> torch.Tensor:
            z = z0 + step[:, None] * dz
            if readout.scale != 1.0:
                z = z * readout.scale
            if readout.softcap is not None:
                z = readout.softcap * torch.tanh(z / readout.softcap)
            return _target_logp(torch.log_softmax(z, dim=-1), targets)

        return at

    return factory


def steer(
    readout: Readout,
    h: torch.Tensor,
    targets: torch.Tensor,
    config: SteeringConfig | None = None,
    h_prev: torch.Tensor | None = None,
    method: str = "auto",
) -> SteeringResult:
    """Algorithm 1 on post-final-norm states (the paper's case).

    Args:
        readout: the model's :class:`~ppmech.architectures.Readout`.
        h: ``[B, d]`` states ``h_t``.
        targets: ``[B]`` target ids (negative: leave the row alone).
        config: η, K, line search (defaults: η = 0.5, K = 20).
        h_prev: ``[B, d]`` the states ``h_{t-1}``, for ΔH.
        method: ``auto`` (analytic where the readout is affine, else autograd),
            ``analytic`` or ``autograd``.
    """
    config = config or SteeringConfig()
    if method == "auto":
        method = "analytic" if readout.is_affine else "autograd"
    direction: DirectionFn | None
    if method == "analytic":

        def direction(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return analytic_direction(readout, x, t)

    elif method == "autograd":
        direction = None
    else:
        raise PPMechError(f"unknown steering method {method!r}", "use auto, analytic or autograd")
    return steer_states(
        h,
        targets,
        readout.log_probs,
        config,
        direction,
        h_prev,
        method,
        line_fn=readout_line(readout, targets),
    )


# --------------------------------------------------------------------------- baselines


def _reach_along(
    readout: Readout,
    h: torch.Tensor,
    u: torch.Tensor,
    targets: torch.Tensor,
    goal_logp: torch.Tensor,
    grid_factor: float = 1.5,
    grid_points: int = 60,
    bisect_iters: int = 40,
) -> torch.Tensor:
    """Smallest step ``s`` on a geometric grid, refined by bisection, with ``ln p_{t*}(h + s u) >= goal``.

    ``u`` is ``[B, d]`` unit directions. The grid starts at ``1e-4 ‖h‖`` and grows by
    ``grid_factor``; the first grid point at or above the goal is bisected against
    the one before it. Rows that never reach the goal on the grid get NaN (along a
    fixed line ``p_{t*}`` can peak below the goal).
    """
    # Logits are affine in the step before soft-capping: z(s) = scale (W h + b + s W u).
    z0 = torch.nn.functional.linear(h.float(), readout.weight, readout.bias)
    dz = torch.nn.functional.linear(u.float(), readout.weight)

    def line_logp(step: torch.Tensor) -> torch.Tensor:
        z = (z0 + step[:, None] * dz) * readout.scale
        if readout.softcap is not None:
            z = readout.softcap * torch.tanh(z / readout.softcap)
        return _target_logp(torch.log_softmax(z, -1), targets)

    base = (h.norm(dim=-1) * 1e-4).clamp_min(1e-8)
    lo = torch.zeros_like(base)
    hi = torch.full_like(base, float("nan"))
    s = base.clone()
    with torch.no_grad():
        for _ in range(grid_points):
            open_rows = torch.isnan(hi)
            if not bool(open_rows.any()):
                break
            lp = line_logp(s)
            hit = open_rows & (lp >= goal_logp)
            hi = torch.where(hit, s, hi)
            lo = torch.where(open_rows & ~hit, s, lo)
            s = s * grid_factor
        found = ~torch.isnan(hi)
        hi_f = torch.where(found, hi, lo)
        for _ in range(bisect_iters):
            mid = 0.5 * (lo + hi_f)
            lp = line_logp(mid)
            up = lp >= goal_logp
            hi_f = torch.where(found & up, mid, hi_f)
            lo = torch.where(found & ~up, mid, lo)
    return torch.where(found, hi_f, torch.full_like(hi_f, float("nan")))


def baseline_comparison(
    readout: Readout,
    h: torch.Tensor,
    targets: torch.Tensor,
    result: SteeringResult,
    h_prev: torch.Tensor | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare Jacobian steering with three baselines at the same target probability.

    For every row, each method is tuned to reach the ``p_{t*}`` that Algorithm 1
    reached (``result.p_after``) from the same state ``h``:

    * ``jacobian``: Algorithm 1 itself (``result``);
    * ``logit bias``: add ``b`` to the target's logit, ``b = ln(p*(1-p)/(p(1-p*)))``
      (closed form; ``h`` does not move, so ‖δh‖ is undefined);
    * ``random direction``: ``h + s u`` with ``u`` a seeded Gaussian unit vector, its
      sign chosen so that ``u·g > 0``;
    * ``unembedding row``: ``h + s W_{t*}/‖W_{t*}‖``.

    ``s`` comes from :func:`_reach_along`. Rows Algorithm 1 did not steer (already
    at η, or a negative target) are dropped.

    Returns:
        long frame: ``row, method, reached, delta_norm, kl, delta_H, p_after``;
        ``kl`` is KL(natural‖steered) over the whole vocabulary (nats), ``delta_H``
        as in the module docstring (NaN without ``h_prev``).
    """
    h = h.detach().float()
    keep = (result.steps > 0).cpu()
    rows = torch.nonzero(keep)[:, 0]
    if rows.numel() == 0:
        return pd.DataFrame(columns=["row", "method", "reached", "delta_norm", "kl", "delta_H", "p_after"])
    dev = h.device
    rows_d = rows.to(dev)
    hb = h[rows_d]
    tb = targets.to(dev)[rows_d]
    goal_logp = result.p_after.to(dev)[rows_d].log().float()
    # A hair below the goal so that float32 round-off does not make a row unreachable.
    goal_logp = goal_logp - 1e-6
    lp_nat = readout.log_probs(hb)
    x_nat = lp_nat.argmax(-1)
    prev = h_prev.detach().float().to(dev)[rows_d] if h_prev is not None else None

    def summarise(
        method: str, lp_new: torch.Tensor, h_new: torch.Tensor | None, reached: torch.Tensor
    ) -> dict:
        x_new = lp_new.argmax(-1)
        kl = kl_divergence(lp_nat, lp_new)
        if prev is not None:
            dh = energy_change(
                prev,
                hb,
                h_new if h_new is not None else hb,
                lp_nat.gather(-1, x_nat[:, None])[:, 0],
                lp_new.gather(-1, x_new[:, None])[:, 0],
            )
        else:
            dh = torch.full((len(rows),), float("nan"), dtype=torch.float64)
        norm = (
            (h_new.double() - hb.double()).norm(dim=-1)
            if h_new is not None
            else torch.full((len(rows),), float("nan"), dtype=torch.float64)
        )
        nan = torch.full_like(kl, float("nan"))
        return {
            "row": rows.numpy(),
            "method": method,
            "reached": reached.cpu().numpy(),
            "delta_norm": torch.where(reached.cpu(), norm.cpu(), nan.cpu()).numpy(),
            "kl": torch.where(reached, kl, nan).cpu().numpy(),
            "delta_H": torch.where(reached, dh.to(dev), nan).cpu().numpy(),
            "p_after": torch.where(reached, _target_logp(lp_new, tb).double().exp(), nan).cpu().numpy(),
        }

    frames = []
    h_jac = result.hidden.to(dev)[rows_d]
    frames.append(
        summarise("jacobian", readout.log_probs(h_jac), h_jac, torch.ones_like(tb, dtype=torch.bool))
    )

    # Logit bias: closed form in the target's logit, whatever the readout.
    p0 = _target_logp(lp_nat, tb).double().exp()
    p_star = result.p_after.to(dev)[rows_d]
    bias = torch.log(p_star * (1 - p0) / (p0 * (1 - p_star))).float()
    logits = readout.logits(hb).clone()
    logits[torch.arange(len(rows), device=dev), tb] += bias
    frames.append(
        summarise("logit bias", torch.log_softmax(logits, -1), None, torch.ones_like(tb, dtype=torch.bool))
    )

    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(hb.shape, generator=gen).to(dev)
    g = (
        analytic_direction(readout, hb, tb)
        if readout.is_affine
        else autograd_direction(readout.log_probs, hb, tb)
    )
    u = u * torch.sign((u * g).sum(-1, keepdim=True)).clamp(min=-1, max=1)
    u = u / u.norm(dim=-1, keepdim=True)
    w = readout.weight[tb]
    w = w / w.norm(dim=-1, keepdim=True)
    for name, direction in (("random direction", u), ("unembedding row", w)):
        s = _reach_along(readout, hb, direction, tb, goal_logp)
        reached = ~torch.isnan(s)
        h_new = hb + torch.nan_to_num(s)[:, None] * direction
        frames.append(summarise(name, readout.log_probs(h_new), h_new, reached))
    return pd.concat([pd.DataFrame(f) for f in frames], ignore_index=True)


def baseline_table(long: pd.DataFrame) -> pd.DataFrame:
    """Summarise :func:`baseline_comparison` in one table.

    Columns: method; ``reached`` (rows that reached the target probability / rows);
    means over each method's reached rows of ‖δh‖, KL(natural‖steered) and ΔH; and
    the median over rows of ``‖δh‖ / ‖δh_jacobian‖`` on the same rows.
    """
    out = []
    jac = long[long["method"] == "jacobian"].set_index("row")["delta_norm"]
    for method, part in long.groupby("method", sort=False):
        ok = part[part["reached"].astype(bool)]
        ratio = (ok.set_index("row")["delta_norm"] / jac.reindex(ok["row"])).dropna()
        out.append(
            {
                "method": method,
                "reached": f"{len(ok)}/{len(part)}",
                "mean ‖δh‖": float(ok["delta_norm"].mean())
                if ok["delta_norm"].notna().any()
                else float("nan"),
                "median ‖δh‖/jacobian": float(ratio.median()) if len(ratio) else float("nan"),
                "mean KL(nat‖steered)": float(ok["kl"].mean()) if len(ok) else float("nan"),
                "mean ΔH": float(ok["delta_H"].mean()) if len(ok) else float("nan"),
            }
        )
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- steered generation


@dataclass
class Trace:
    """One generated trajectory per row, plus steering columns for a steered trace.

    Shapes ``[B, T]``. ``logp`` is ln p of the emitted token under the distribution
    it was drawn from (the steered one for a steered trace); ``speed_sq`` is from the
    post-final-norm states actually read out. Steering columns are NaN/-1 where a
    step was not steered (and always in the natural trace).
    """

    token_ids: torch.Tensor
    logp: torch.Tensor
    entropy: torch.Tensor
    speed_sq: torch.Tensor
    target_ids: torch.Tensor
    steer_steps: torch.Tensor
    delta_norm: torch.Tensor
    p_target_before: torch.Tensor
    p_target_after: torch.Tensor


@dataclass
class GenerationPair:
    """Natural and steered generations from the same prompts."""

    natural: Trace
    steered: Trace
    layer: int | None


class _LayerPatch:
    """Forward hook on decoder block ``L``: captures its output at the newest position,
    or replaces it with a given residual (with gradient flowing to it)."""

    def __init__(self) -> None:
        self.replace: torch.Tensor | None = None
        self.captured: torch.Tensor | None = None

    def __call__(self, _m: torch.nn.Module, _i: Any, output: Any) -> Any:
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        self.captured = hidden[:, -1, :].detach()
        if self.replace is None:
            return None
        new = torch.cat([hidden[:, :-1, :], self.replace[:, None, :].to(hidden.dtype)], dim=1)
        if isinstance(output, torch.Tensor):
            return new
        return (new, *output[1:])


def _rollback(cache: Any) -> None:
    """Remove the newest position from a KV cache and drop any autograd history."""
    cache.crop(-1)
    for layer in getattr(cache, "layers", []):
        for attr in ("keys", "values"):
            value = getattr(layer, attr, None)
            if isinstance(value, torch.Tensor):
                setattr(layer, attr, value.detach())


def _layer_log_prob_fn(
    model: Any,
    patch: _LayerPatch,
    store: dict[str, list[torch.Tensor]],
    step_input: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
) -> LogProbFn:
    """``r -> log p`` through the blocks above ``L``, the final norm and the unembedding.

    Each call runs one cached forward of the newest token with block ``L``'s output
    replaced by ``r`` ``[B, d]``, then rolls the cache back, so trials leave no trace.
    """

    def fn(r: torch.Tensor) -> torch.Tensor:
        patch.replace = r
        try:
            out, c = forward_step(model, step_input, mask, positions, cache)
        finally:
            patch.replace = None
        store[FINAL_NORM].clear()
        _rollback(c)
        return torch.log_softmax(out[:, -1, :].float(), -1)

    return fn


def _empty_trace(batch: int, steps: int) -> Trace:
    def nan() -> torch.Tensor:
        return torch.full((batch, steps), float("nan"), dtype=torch.float64)

    return Trace(
        token_ids=torch.full((batch, steps), -1, dtype=torch.long),
        logp=nan(),
        entropy=nan(),
        speed_sq=nan(),
        target_ids=torch.full((batch, steps), -1, dtype=torch.long),
        steer_steps=torch.zeros((batch, steps), dtype=torch.long),
        delta_norm=nan(),
        p_target_before=nan(),
        p_target_after=nan(),
    )


def _choose(lp: torch.Tensor, decoding: Decoding, generators: list[torch.Generator] | None) -> torch.Tensor:
    if decoding.strategy != "sample" or generators is None:
        return lp.argmax(-1)
    probs = torch.softmax(lp / decoding.temperature, -1)
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])


def steered_generation(
    lm: LoadedModel,
    prompts: list[list[int]],
    schedule: list[list[int]],
    new_tokens: int,
    config: SteeringConfig | None = None,
    layer: int | None = None,
    decoding: Decoding | None = None,
    seeds: list[int] | None = None,
) -> GenerationPair:
    """Generate from each prompt twice, naturally and with Jacobian steering.

    Args:
        lm: the model.
        prompts: token ids per prompt.
        schedule: per prompt, the target id for each step (``schedule[i][t]``);
            a negative id or a step past the list's end is not steered.
        new_tokens: steps to generate.
        config: Algorithm 1's parameters.
        layer: ``None`` steers ``h_t`` after the final norm (the paper); an index
            ``L`` steers the residual after block ``L`` (beyond the paper), so the
            change enters the KV cache.
        decoding: ``greedy`` (default) or ``sample`` (temperature only), applied to
            the natural and to the steered distribution alike.
        seeds: per-row sampling seeds (``sample`` only).
    """
    config = config or SteeringConfig()
    decoding = decoding or Decoding()
    if decoding.strategy == "teacher":
        raise PPMechError("steered generation cannot use teacher decoding", "use greedy or sample")
    if len(schedule) != len(prompts):
        raise PPMechError("one target schedule per prompt is needed", "pass as many schedules as prompts")
    model = lm.model
    if layer is not None:
        hook_module(model, resid_post(layer))  # one-line error for an index out of range
    recorder = Recorder(lm, decoding)
    recorder.check_length(max(len(p) for p in prompts), new_tokens)
    batch = len(prompts)
    sched = torch.full((batch, new_tokens), -1, dtype=torch.long)
    for row, targets in enumerate(schedule):
        n = min(len(targets), new_tokens)
        if n:
            sched[row, :n] = torch.tensor(targets[:n], dtype=torch.long)

    natural = _empty_trace(batch, new_tokens)
    rec = recorder.record(prompts, new_tokens, seeds=seeds)
    natural.token_ids[:] = rec.token_ids
    natural.logp[:] = rec.logp.double()
    natural.entropy[:] = rec.entropy.double()
    natural.speed_sq[:] = rec.speed_sq

    steered = _steered_trace(lm, prompts, sched, new_tokens, config, layer, decoding, seeds, recorder.pad_id)
    return GenerationPair(natural=natural, steered=steered, layer=layer)


def _steered_trace(
    lm: LoadedModel,
    prompts: list[list[int]],
    sched: torch.Tensor,
    new_tokens: int,
    config: SteeringConfig,
    layer: int | None,
    decoding: Decoding,
    seeds: list[int] | None,
    pad_id: int,
) -> Trace:
    from ppmech.architectures import readout as get_readout

    model = lm.model
    device = lm.device
    read = get_readout(model)
    batch = len(prompts)
    trace = _empty_trace(batch, new_tokens)
    generators = None
    if decoding.strategy == "sample":
        seeds = seeds if seeds is not None else list(range(batch))
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    ids, mask, positions = (t.to(device) for t in left_pad(prompts, pad_id))
    states = torch.empty((batch, new_tokens, read.hidden_size), dtype=torch.float32)
    cache = None
    # Prefill all but the last prompt token, so every step feeds exactly one token
    # and a trial evaluation can be rolled back by cropping one cache position.
    if ids.shape[1] > 1:
        with torch.no_grad():
            _, cache = forward_step(model, ids[:, :-1], mask[:, :-1], positions[:, :-1], None)
    step_input, step_pos = ids[:, -1:], positions[:, -1:]
    patch = _LayerPatch()
    handle = decoder_layers(model)[layer].register_forward_hook(patch) if layer is not None else None
    try:
        with capture(model, [FINAL_NORM]) as store:
            for t in range(new_tokens):
                targets = sched[:, t].to(device)
                patch.replace = None
                with torch.no_grad():
                    logits, new_cache = forward_step(model, step_input, mask, step_pos, cache)
                h_nat = store[FINAL_NORM][-1][:, -1, :].float()
                store[FINAL_NORM].clear()
                steer_now = bool((targets >= 0).any())
                if not steer_now:
                    cache = new_cache
                    h_t = h_nat
                    lp = torch.log_softmax(logits[:, -1, :].float(), -1)
                elif layer is None:
                    cache = new_cache
                    res = steer(read, h_nat, targets, config)
                    h_t = res.hidden
                    lp = read.log_probs(h_t)
                else:
                    _rollback(new_cache)
                    cache = new_cache
                    r_nat = patch.captured
                    assert r_nat is not None

                    fn = _layer_log_prob_fn(model, patch, store, step_input, mask, step_pos, cache)
                    res = steer_states(r_nat.float(), targets, fn, config, method="autograd")
                    patch.replace = res.hidden
                    with torch.no_grad():
                        logits, cache = forward_step(model, step_input, mask, step_pos, cache)
                    patch.replace = None
                    h_t = store[FINAL_NORM][-1][:, -1, :].float()
                    store[FINAL_NORM].clear()
                    lp = torch.log_softmax(logits[:, -1, :].float(), -1)
                if steer_now:
                    on = (targets >= 0).cpu()
                    nan = torch.full((batch,), float("nan"), dtype=torch.float64)
                    trace.target_ids[:, t] = torch.where(on, targets.cpu(), -1)
                    trace.steer_steps[:, t] = torch.where(on, res.steps.cpu(), 0)
                    trace.delta_norm[:, t] = torch.where(on, res.delta_norm.cpu(), nan)
                    trace.p_target_before[:, t] = torch.where(on, res.p_before.cpu(), nan)
                    trace.p_target_after[:, t] = torch.where(on, res.p_after.cpu(), nan)
                x = _choose(lp, decoding, generators)
                trace.token_ids[:, t] = x.cpu()
                trace.logp[:, t] = lp.gather(-1, x[:, None])[:, 0].double().cpu()
                trace.entropy[:, t] = entropy_from_logprobs(lp).double().cpu()
                states[:, t] = h_t.cpu()
                step_input = x[:, None]
                step_pos = step_pos + 1
                mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=-1)
    finally:
        if handle is not None:
            handle.remove()
    trace.speed_sq[:] = speed_squared(states)
    return trace


def trace_frame(
    trace: Trace, tokenizer: Any, name: str, trajectory_ids: list[int] | None = None
) -> pd.DataFrame:
    """A :class:`Trace` as rows of ``steps.parquet`` plus ``trace`` and the steering columns."""
    from ppmech.mechanics import energy_terms

    batch, steps = trace.token_ids.shape
    ids = trajectory_ids or list(range(batch))
    frames = []
    for row in range(batch):
        tok = trace.token_ids[row].tolist()
        terms = energy_terms(trace.speed_sq[row].numpy(), trace.logp[row].numpy())
        target = trace.target_ids[row].numpy()
        frames.append(
            pd.DataFrame(
                {
                    "trajectory": np.full(steps, ids[row], dtype=np.int32),
                    "step": np.arange(steps, dtype=np.int32),
                    "token_id": np.asarray(tok, dtype=np.int64),
                    "token": tokenizer.batch_decode([[i] for i in tok]),
                    "logp": trace.logp[row].numpy(),
                    "entropy": trace.entropy[row].numpy(),
                    "speed_sq": trace.speed_sq[row].numpy(),
                    "K": terms["K"],
                    "V": terms["V"],
                    "H": terms["H"],
                    "trace": name,
                    "target_id": target,
                    "target_token": [tokenizer.decode([int(i)]) if i >= 0 else None for i in target],
                    "steer_steps": trace.steer_steps[row].numpy(),
                    "delta_norm": trace.delta_norm[row].numpy(),
                    "p_target_before": trace.p_target_before[row].numpy(),
                    "p_target_after": trace.p_target_after[row].numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- the steer command


@dataclass(frozen=True)
class SteerConfig:
    """Everything that determines a ``ppmech steer`` run (CLI and API alike).

    Attributes:
        model, weights, dtype, seed, trust_remote_code: the model (as ``measure``).
        prompt: the prompt text (the tokenizer's default special prefix is added).
        target_text: steer, step by step, toward this text's tokens (teacher-style:
            step ``t`` targets its ``t``-th token). A space is put in front when the
            prompt ends in a letter or digit and the text starts with one.
        target_ids: a token schedule instead: the target id of each step, ``-1``
            for a step left alone.
        new_tokens: steps generated (default: the schedule's length + 5).
        eta, max_steps: Algorithm 1's η and K.
        layer: ``None`` steers ``h_t`` after the final norm (the paper); ``L``
            steers the residual after decoder block ``L`` (beyond the paper).
        decoding: ``greedy`` or ``sample``; temperature for ``sample``.
    """

    prompt: str
    target_text: str | None = None
    target_ids: tuple[int, ...] | None = None
    model: str = "smollm2-135m"
    weights: str = "pretrained"
    dtype: str = "float32"
    seed: int = 0
    trust_remote_code: bool = False
    new_tokens: int | None = None
    eta: float = 0.5
    max_steps: int = 20
    layer: int | None = None
    decoding: str = "greedy"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        SteeringConfig(eta=self.eta, max_steps=self.max_steps)
        if (self.target_text is None) == (self.target_ids is None):
            raise PPMechError("give exactly one of --target-text and --target-ids", "pass one of them")
        if not self.prompt.strip():
            raise PPMechError("the prompt is empty", "pass --prompt with some text")
        if self.decoding not in ("greedy", "sample"):
            raise PPMechError(f"--decoding {self.decoding!r} cannot be steered", "use greedy or sample")
        if self.new_tokens is not None and self.new_tokens < 1:
            raise PPMechError(f"--new-tokens must be >= 1 (got {self.new_tokens})", "use e.g. 20")
        check_seed(self.seed)
        if self.decoding == "greedy" and self.temperature != 1.0:
            raise PPMechError(
                "--temperature only applies to --decoding sample, not greedy",
                "drop --temperature, or pass --decoding sample",
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_ids"] = list(self.target_ids) if self.target_ids is not None else None
        return d


@dataclass
class SteerRunResult:
    """What :func:`run_steer` produced.

    Attributes:
        path: the output directory, or ``None``.
        steps: natural and steered steps (``steps.parquet`` schema + ``trace`` and
            steering columns).
        natural_text, steered_text: the two generations.
        comparison: :func:`energy_comparison` of the two traces.
        summary: what ``summary.json`` holds.
        files: the files written under ``path``.
    """

    path: Path | None
    steps: pd.DataFrame
    natural_text: str
    steered_text: str
    comparison: pd.DataFrame
    summary: dict[str, Any]
    files: list[str] = field(default_factory=list)


def target_schedule(tokenizer: Any, prompt: str, config: SteerConfig) -> list[int]:
    """The per-step target ids of ``config`` (target text tokenised, or the given schedule)."""
    if config.target_ids is not None:
        vocab = len(tokenizer)
        bad = [i for i in config.target_ids if i >= vocab or i < -1]
        if bad:
            raise PPMechError(f"target ids {bad} are outside the vocabulary 0..{vocab - 1}", "use -1 to skip")
        if not any(i >= 0 for i in config.target_ids):
            raise PPMechError("the token schedule steers no step", "give at least one id >= 0")
        return list(config.target_ids)
    text = config.target_text or ""
    if prompt and text and (prompt[-1].isalnum() and text[0].isalnum()):
        text = " " + text
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text.strip() else []
    if not ids:
        raise PPMechError(
            f"the target text {config.target_text!r} tokenises to no tokens",
            "pass a --target-text with visible characters",
        )
    return ids


def energy_comparison(steps: pd.DataFrame) -> pd.DataFrame:
    """Per trace: mean K, V, H over steps with a velocity, CV of ``E = exp(H)``, mean ``|H_t - H_{t-1}|``,
    and the steering totals (steered steps, steps that reached η, mean ‖δh‖, mean gradient steps)."""
    from ppmech.statistics import cv

    rows = []
    for name, part in steps.groupby("trace", sort=False):
        ok = part[np.isfinite(part["H"].astype("float64"))]
        dh = [np.diff(g["H"].to_numpy(dtype=np.float64)) for _, g in ok.groupby("trajectory")]
        dh_all = np.concatenate(dh) if dh else np.array([])
        steered = part[part["target_id"] >= 0]
        e = np.exp(ok["H"].to_numpy(dtype=np.float64))
        rows.append(
            {
                "trace": name,
                "tokens": len(part),
                "mean K": float(ok["K"].mean()),
                "mean V": float(ok["V"].mean()),
                "mean H": float(ok["H"].mean()),
                "CV(E)": cv(e) if len(e) > 1 else float("nan"),
                "mean |dH|": float(np.abs(dh_all).mean()) if len(dh_all) else float("nan"),
                "steered steps": len(steered),
                "reached η": int(steered["reached"].sum()),
                "mean ‖δh‖": float(steered["delta_norm"].mean()) if len(steered) else float("nan"),
                "mean grad steps": float(steered["steer_steps"].mean()) if len(steered) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def run_steer(
    config: SteerConfig, out: str | Path | None = None, overwrite: bool = False, lm: LoadedModel | None = None
) -> SteerRunResult:
    """Load the model, generate naturally and with steering, and write ``out``.

    ``out`` receives ``steps.parquet`` (both traces, :func:`trace_frame`) and then
    ``summary.json`` (config, model, versions, texts, comparison, the file's rows and
    SHA-256), each written atomically; the output is locked, staged and swapped in whole
    (:class:`ppmech.artifacts.Output`), and ``overwrite`` replaces only a steer output.
    """
    from contextlib import nullcontext

    from ppmech.artifacts import Output

    out_path = Path(out) if out is not None else None
    # Locked and staged for the whole run: see ppmech.artifacts.Output.
    output = Output(out_path, "steer", overwrite=overwrite) if out_path is not None else None
    with output if output is not None else nullcontext():
        return _run_steer(config, output, lm)


def _run_steer(config: SteerConfig, output: Any, lm: LoadedModel | None) -> SteerRunResult:
    """:func:`run_steer` once its output (an open :class:`~ppmech.artifacts.Output`, or ``None``) is ready."""
    from ppmech.artifacts import describe_file, write_json, write_parquet
    from ppmech.corpus import special_prefix
    from ppmech.measure import versions

    if lm is None:
        lm = load_configured(config)
    if config.layer is not None:
        hook_module(lm.model, resid_post(config.layer))
    tok = lm.tokenizer
    prompt_ids = special_prefix(tok) + list(tok(config.prompt, add_special_tokens=False)["input_ids"])
    schedule = target_schedule(tok, config.prompt, config)
    new_tokens = config.new_tokens if config.new_tokens is not None else len(schedule) + 5
    decoding = Decoding(strategy=config.decoding, temperature=config.temperature)  # type: ignore[arg-type]
    pair = steered_generation(
        lm,
        [prompt_ids],
        [schedule],
        new_tokens,
        SteeringConfig(eta=config.eta, max_steps=config.max_steps),
        layer=config.layer,
        decoding=decoding,
        seeds=[config.seed],
    )
    nat = trace_frame(pair.natural, tok, "natural")
    st = trace_frame(pair.steered, tok, "steered")
    steps = pd.concat([nat, st], ignore_index=True)
    steps["reached"] = (steps["target_id"] >= 0) & (steps["p_target_after"] >= config.eta)
    comparison = energy_comparison(steps)
    natural_text = tok.decode(pair.natural.token_ids[0].tolist())
    steered_text = tok.decode(pair.steered.token_ids[0].tolist())
    summary = {
        "kind": "steer",
        "config": config.to_dict(),
        "prompt_ids": prompt_ids,
        "target_schedule": schedule,
        "natural_text": natural_text,
        "steered_text": steered_text,
        "comparison": json.loads(comparison.to_json(orient="records")),
        "model": lm.identity.to_dict(),
        "versions": versions(),
    }
    files: list[str] = []
    if output is not None:
        write_parquet(output.path / "steps.parquet", steps)
        summary["files"] = {"steps.parquet": describe_file(output.path, "steps.parquet", rows=len(steps))}
        write_json(output.path / "summary.json", summary)
        files = output.commit()
    return SteerRunResult(
        path=output.target if output is not None else None,
        files=files,
        steps=steps,
        natural_text=natural_text,
        steered_text=steered_text,
        comparison=comparison,
        summary=summary,
    )
