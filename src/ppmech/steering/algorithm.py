"""Minimal-action Jacobian steering (paper §E, Algorithm 1), batched.

Notation. ``h`` is the state that is moved, ``[B, d]``; each row ``i`` has its own
target token ``t*_i``. A *log-prob map* ``F: [B, d] -> [B, V]`` gives the model's
float32 next-token log-probabilities from ``h``:

* final layer (the paper's case): ``h`` is the post-final-norm state ``h_t`` and
  ``F`` is :meth:`ppmech.models.architectures.Readout.log_probs`. Where the readout is
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

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch

from ppmech.errors import PPMechError
from ppmech.mechanics import log_energy, log_kinetic, potential, step_speed_squared
from ppmech.models.architectures import Readout

LogProbFn = Callable[[torch.Tensor], torch.Tensor]
DirectionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LineFactory = Callable[[torch.Tensor, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]

__all__ = [
    "SteeringConfig",
    "SteeringResult",
    "analytic_direction",
    "autograd_direction",
    "energy_change",
    "kl_divergence",
    "readout_line",
    "steer",
    "steer_states",
    "target_logp",
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
            raise PPMechError(f"`eta` must lie strictly between 0 and 1 (got {self.eta})", "use e.g. 0.5")
        if self.max_steps < 1:
            raise PPMechError(f"`max_steps` must be >= 1 (got {self.max_steps})", "use e.g. 20")
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
    h_nat = log_energy(log_kinetic(step_speed_squared(h_prev, h_natural)), potential(logp_natural))
    h_st = log_energy(log_kinetic(step_speed_squared(h_prev, h_steered)), potential(logp_steered))
    return h_st - h_nat


# --------------------------------------------------------------------------- Algorithm 1


def target_logp(lp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
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
            return lambda step: target_logp(log_prob_fn(x + step[:, None] * u).float(), targets)

    ln_eta = math.log(config.eta)
    steer_row = targets >= 0
    h0 = h.detach().float()
    cur = h0.clone()
    with torch.no_grad():
        lp0 = log_prob_fn(cur).float()
    logp = target_logp(lp0, targets)
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
                new_logp = torch.where(active, target_logp(log_prob_fn(new_h).float(), targets), new_logp)
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
    logp = target_logp(lp_final, targets)
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
        z0 = readout.affine(h)
        dz = torch.nn.functional.linear(u.float(), readout.weight)

        def at(step: torch.Tensor) -> torch.Tensor:
            z = readout.finish(z0 + step[:, None] * dz)
            return target_logp(torch.log_softmax(z, dim=-1), targets)

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
        readout: the model's :class:`~ppmech.models.architectures.Readout`.
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
