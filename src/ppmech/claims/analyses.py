"""Analyses that test the paper's claims, as pure functions over recorded arrays.

Nothing here loads a model or reads a file: inputs are per-step arrays (from a
run's ``steps.parquet``), hidden states ``h_t`` (from ``Run.hidden()``) and a
:class:`~ppmech.models.architectures.Readout`. Statistics are float64; log-softmax goes
through the readout in float32.

Conventions follow :mod:`ppmech.mechanics`: for one trajectory, ``h_t`` is the
post-final-norm state that produced token ``x_t``; ``v_t = h_t - h_{t-1}``;
``K_t = ln(½‖v_t‖²)``, ``V_t = -ln p_{x_t}(h_t)``, ``H_t = K_t + V_t``.

Confidence intervals are percentile bootstraps that resample *trajectories*
(the independent unit), seeded; at least :data:`MIN_TRAJECTORIES_FOR_CI`
trajectories are required, otherwise :class:`~ppmech.errors.PPMechError`
(:func:`ppmech.statistics.trajectory_bootstrap`).

What each analysis tests:

* :func:`neighbouring_attractors` — §C.5: argmax tokens along ``h(α)`` between
  consecutive states.
* :func:`entropy_landscape`, :func:`local_conservation` — Appendix F (mean and
  variance of the entropy, power as ``ΔE`` per step) and Table 4.
* :func:`euler_lagrange` — Prop. C.1 / Thm. D.1: ``Δ(2v/‖v‖²)`` against the
  force ``∇_h ln p_{x_t}(h_t)``, with a shuffled-time baseline.
* :func:`energy_forms` — Remark D.1: CV of the log form ``H``, of the linear
  product ``E = ½‖v‖²·PPL`` and of the classical ``½‖v‖² − ln p``.
* :func:`layer_energy_table` — per-layer mechanics through the logit lens.
* :func:`cv_by_position` — long horizons: CV of ``H`` in windows of steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from ppmech.errors import PPMechError
from ppmech.mechanics import kinetic, log_energy, log_kinetic, potential
from ppmech.models.architectures import Readout
from ppmech.nulls.base import split_by_trajectory as split_by_trajectory  # one home: ppmech.nulls
from ppmech.statistics import (
    MIN_TRAJECTORIES_FOR_CI,
    Estimate,
    energy_statistics,
    trajectory_bootstrap,
)

F64 = NDArray[np.float64]

ALPHAS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
"""§C.5's interpolation grid α ∈ {0, 0.1, …, 1}."""


# --------------------------------------------------------------------------- simple statistics


def pooled_cv(x: np.ndarray) -> float:
    """``std / mean`` (ddof 0) over the finite entries of ``x`` (NaN when undefined)."""
    v = np.asarray(x, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or v.mean() == 0:
        return float("nan")
    return float(v.std() / v.mean())


def finite_mean(x: np.ndarray) -> float:
    v = np.asarray(x, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def finite_var(x: np.ndarray) -> float:
    v = np.asarray(x, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    return float(v.var()) if v.size else float("nan")


def energy_forms(speed_sq: F64, logp: F64) -> dict[str, F64]:
    """The three candidate "energies" per step (Remark D.1), float64.

    Args:
        speed_sq: ``‖v_t‖²`` (NaN at step 0), any shape.
        logp: ``ln p_{x_t}(h_t)``, same shape.

    Returns:
        ``log``: ``H = ln(½‖v‖²) − ln p``; ``product``: ``E = ½‖v‖²·PPL = e^H``;
        ``classical``: ``½‖v‖² − ln p``. Zero-velocity steps give ``H = -inf``
        and ``E = 0``; callers drop non-finite ``H`` steps from all three.
    """
    s = np.asarray(speed_sq, dtype=np.float64)
    v = potential(np.asarray(logp, dtype=np.float64))
    h = log_energy(log_kinetic(s), v)
    with np.errstate(over="ignore"):
        e = kinetic(s) * np.exp(v)
    return {"log": h, "product": e, "classical": kinetic(s) + v}


def energy_form_cvs(parts: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Global CV of each :func:`energy_forms` form, over steps with finite ``H``.

    Args:
        parts: per trajectory ``[n_i, 2]`` arrays of (``speed_sq``, ``logp``).
    """
    out: dict[str, Estimate] = {}
    forms = []
    for p in parts:
        f = energy_forms(p[:, 0], p[:, 1])
        ok = np.isfinite(f["log"])
        forms.append(np.column_stack([f["log"][ok], f["product"][ok], f["classical"][ok]]))

    def column_cv(col: int) -> Callable[[np.ndarray], float]:
        return lambda a: pooled_cv(a[:, col])

    for col, name in enumerate(("log", "product", "classical")):
        out[name] = trajectory_bootstrap(
            forms,
            column_cv(col),
            n_boot,
            seed,
            note=f"global CV of the {name} form over valid steps",
            what="the CV of the energy forms",
        )
    return out


def differences(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``x_{t+1} - x_t`` within each trajectory, for pairs of consecutive finite steps."""
    out = []
    for p in parts:
        x = np.asarray(p, dtype=np.float64).ravel()
        both = np.isfinite(x[:-1]) & np.isfinite(x[1:])
        out.append((x[1:] - x[:-1])[both])
    return out


def drift(d: np.ndarray) -> float:
    """``ΣΔ / Σ|Δ|`` (Appendix G's "energy drift"); NaN when every Δ is 0."""
    den = float(np.abs(d).sum())
    return float(d.sum() / den) if den > 0 else float("nan")


def local_conservation(
    parts: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0, label: str = "H"
) -> dict[str, Estimate]:
    """Table 4 / Appendix G on one quantity: mean signed step, mean absolute step, drift.

    Args:
        parts: per trajectory 1-D arrays of the quantity in step order (non-finite
            entries are skipped; a difference needs two consecutive finite steps).

    Returns:
        ``mean_d``, ``mean_abs_d``, ``drift`` estimates.
    """
    d = differences(parts)
    return {
        "mean_d": trajectory_bootstrap(d, lambda a: float(a.mean()), n_boot, seed, f"mean Δ{label}_t", "Δ"),
        "mean_abs_d": trajectory_bootstrap(
            d, lambda a: float(np.abs(a).mean()), n_boot, seed, f"mean |Δ{label}_t|", "|Δ|"
        ),
        "drift": trajectory_bootstrap(d, drift, n_boot, seed, f"Σ Δ{label} / Σ |Δ{label}|", "drift"),
    }


def entropy_landscape(parts: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Appendix F.1: mean and variance (ddof 0) of the entropy ``H(h_t)`` in nats over all steps."""
    return {
        "mean": trajectory_bootstrap(parts, finite_mean, n_boot, seed, "mean entropy (nats)", "entropy"),
        "var": trajectory_bootstrap(parts, finite_var, n_boot, seed, "variance of entropy", "entropy"),
    }


def kv_ratios(parts: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Three readings of Table 2's "mean K/V ratio" over valid steps (finite ``K`` and ``V``).

    Args:
        parts: per trajectory ``[n_i, 2]`` arrays of (``K``, ``V``).

    Returns:
        ``ratio_of_means`` (``mean K / mean V``), ``mean_of_ratios`` (``mean K_t/V_t``,
        unstable where ``V_t → 0``), ``median_of_ratios``.
    """

    def valid(a: np.ndarray) -> np.ndarray:
        return a[np.isfinite(a[:, 0]) & np.isfinite(a[:, 1])]

    vp = [valid(p) for p in parts]

    def rom(a: np.ndarray) -> float:
        return float(a[:, 0].mean() / a[:, 1].mean()) if a.size and a[:, 1].mean() != 0 else float("nan")

    def ratios(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = a[:, 0] / a[:, 1]
        return r[np.isfinite(r)]

    return {
        "ratio_of_means": trajectory_bootstrap(vp, rom, n_boot, seed, "mean K / mean V", "K/V"),
        "mean_of_ratios": trajectory_bootstrap(
            vp, lambda a: finite_mean(ratios(a)), n_boot, seed, "mean of K_t / V_t", "K/V"
        ),
        "median_of_ratios": trajectory_bootstrap(
            vp,
            lambda a: float(np.median(ratios(a))) if ratios(a).size else float("nan"),
            n_boot,
            seed,
            "median of K_t / V_t",
            "K/V",
        ),
    }


def trajectory_cvs(parts: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Table 1's CV columns on ``H``, with trajectory-bootstrap CIs.

    Args:
        parts: per trajectory 1-D arrays of ``H_t`` (non-finite steps skipped).

    Returns:
        ``global`` (pooled CV), ``mean_trajectory`` (mean of per-trajectory CVs,
        §D.3.1's "average trajectory CV"), ``trajectory_mean`` (CV of the
        per-trajectory means), ``mean_H``.
    """
    clean = [np.asarray(p, dtype=np.float64).ravel() for p in parts]
    clean = [c[np.isfinite(c)] for c in clean]
    per_cv = [np.array([pooled_cv(c)]) for c in clean if c.size >= 2]
    per_mean = [np.array([c.mean()]) for c in clean if c.size >= 1]
    return {
        "global": trajectory_bootstrap(clean, pooled_cv, n_boot, seed, "std(H)/mean(H) pooled", "global CV"),
        "mean_trajectory": trajectory_bootstrap(
            per_cv, finite_mean, n_boot, seed, "mean over trajectories of CV(H_i)", "trajectory CV"
        ),
        "trajectory_mean": trajectory_bootstrap(
            per_mean, pooled_cv, n_boot, seed, "CV over trajectories of mean(H_i)", "trajectory CV"
        ),
        "mean_H": trajectory_bootstrap(clean, finite_mean, n_boot, seed, "mean H over valid steps", "mean H"),
    }


def cv_by_position(
    parts: Sequence[np.ndarray], window: int = 100, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """CV of ``H`` within consecutive windows of steps (long-horizon open question).

    Args:
        parts: per trajectory 1-D arrays of ``H_t`` indexed by step (step ``t`` at
            position ``t``; non-finite steps skipped).
        window: steps per window.

    Returns:
        One row per window: ``start``, ``stop`` (exclusive), ``n_steps``, ``cv``,
        ``cv_low``, ``cv_high``, ``mean_H``.
    """
    if window < 2:
        raise PPMechError(f"window must be at least 2 steps (got {window})", "use e.g. 100")
    longest = max((len(p) for p in parts), default=0)
    rows = []
    for start in range(0, longest, window):
        stop = start + window
        chunk = [np.asarray(p, dtype=np.float64).ravel()[start:stop] for p in parts if len(p) > start]
        chunk = [c[np.isfinite(c)] for c in chunk]
        chunk = [c for c in chunk if c.size]
        if len(chunk) < MIN_TRAJECTORIES_FOR_CI:
            continue
        est = trajectory_bootstrap(chunk, pooled_cv, n_boot, seed, what="a position window")
        rows.append(
            {
                "start": start,
                "stop": stop,
                "n_steps": int(sum(c.size for c in chunk)),
                "cv": est.value,
                "cv_low": est.low,
                "cv_high": est.high,
                "mean_H": float(np.concatenate(chunk).mean()),
            }
        )
    return pd.DataFrame(rows, columns=["start", "stop", "n_steps", "cv", "cv_low", "cv_high", "mean_H"])


# --------------------------------------------------------------------------- §C.5 interpolation


@torch.no_grad()
def argmax_tokens(readout: Readout, h: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``argmax_j p_j(h)`` for states ``[N, d]``; returns ``[N]`` int64.

    Soft-capping and a positive scale are monotone, so the argmax of the logits
    is the argmax of the probabilities.
    """
    out = torch.empty(h.shape[0], dtype=torch.long)
    for i in range(0, h.shape[0], chunk):
        out[i : i + chunk] = readout.logits(h[i : i + chunk]).argmax(-1).cpu()
    return out


def interpolation_argmax(
    readout: Readout, h_a: torch.Tensor, h_b: torch.Tensor, alphas: Sequence[float] = ALPHAS
) -> torch.Tensor:
    """Argmax tokens along ``h(α) = (1-α) h_a + α h_b``.

    Args:
        h_a, h_b: ``[P, d]`` start and end states of ``P`` paths.
        alphas: interpolation points.

    Returns:
        ``[P, len(alphas)]`` int64 token ids.
    """
    a = torch.tensor(list(alphas), dtype=torch.float32)[None, :, None]
    pts = (1 - a) * h_a.float()[:, None, :] + a * h_b.float()[:, None, :]
    flat = argmax_tokens(readout, pts.reshape(-1, pts.shape[-1]))
    return flat.reshape(h_a.shape[0], len(alphas))


@dataclass(frozen=True)
class AttractorResult:
    """§C.5 summary.

    Attributes:
        unique_mean: mean number of distinct argmax tokens per path.
        unique_se: its standard error over paths (std ddof 1 / √P), as the paper's ±.
        unique: the same mean with a trajectory-bootstrap CI.
        within_share: share of paths whose argmax tokens all lie in ``{x_t, x_{t+1}}``.
        n_paths: number of paths.
    """

    unique_mean: float
    unique_se: float
    unique: Estimate
    within_share: Estimate
    n_paths: int


def attractor_summary(
    tokens: np.ndarray,
    x_start: np.ndarray,
    x_end: np.ndarray,
    trajectory: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> AttractorResult:
    """Summarise interpolation argmaxes (pure; see :func:`interpolation_argmax`).

    Args:
        tokens: ``[P, A]`` argmax token per path and α.
        x_start, x_end: ``[P]`` realised tokens ``x_t`` and ``x_{t+1}``.
        trajectory: ``[P]`` trajectory label of each path (the bootstrap unit).
    """
    tok = np.asarray(tokens)
    unique = np.array([len(set(row.tolist())) for row in tok], dtype=np.float64)
    within = np.array(
        [set(row.tolist()) <= {int(a), int(b)} for row, a, b in zip(tok, x_start, x_end, strict=True)],
        dtype=np.float64,
    )
    traj = np.asarray(trajectory)
    labels = np.unique(traj)
    parts = [np.column_stack([unique[traj == lab], within[traj == lab]]) for lab in labels]
    se = float(unique.std(ddof=1) / math.sqrt(unique.size)) if unique.size > 1 else float("nan")
    return AttractorResult(
        unique_mean=float(unique.mean()),
        unique_se=se,
        unique=trajectory_bootstrap(
            parts, lambda a: float(a[:, 0].mean()), n_boot, seed, "unique argmax tokens per path", "§C.5"
        ),
        within_share=trajectory_bootstrap(
            parts, lambda a: float(a[:, 1].mean()), n_boot, seed, "share of paths within {x_t, x_t+1}", "§C.5"
        ),
        n_paths=int(unique.size),
    )


def neighbouring_attractors(
    readout: Readout,
    hidden: np.ndarray,
    tokens: np.ndarray,
    pairs_per_trajectory: int | None = None,
    alphas: Sequence[float] = ALPHAS,
    n_boot: int = 1000,
    seed: int = 0,
) -> AttractorResult:
    """§C.5's test on recorded states.

    Args:
        hidden: ``[N, T, d]`` states ``h_t`` (NaN rows past a trajectory's end are skipped).
        tokens: ``[N, T]`` realised tokens ``x_t``.
        pairs_per_trajectory: use this many consecutive pairs per trajectory,
            chosen at random (seeded) to bound the cost; ``None``: all pairs.
    """
    rng = np.random.default_rng(seed)
    starts, ends, xs, xe, traj = [], [], [], [], []
    for i in range(hidden.shape[0]):
        h = np.asarray(hidden[i], dtype=np.float32)
        ok: np.ndarray = np.asarray(np.isfinite(h).all(-1))
        idx = np.flatnonzero(ok[:-1] & ok[1:])
        if pairs_per_trajectory is not None and idx.size > pairs_per_trajectory:
            idx = np.sort(rng.choice(idx, size=pairs_per_trajectory, replace=False))
        starts.append(h[idx])
        ends.append(h[idx + 1])
        xs.append(tokens[i, idx])
        xe.append(tokens[i, idx + 1])
        traj.append(np.full(idx.size, i))
    toks = interpolation_argmax(
        readout, torch.from_numpy(np.concatenate(starts)), torch.from_numpy(np.concatenate(ends)), alphas
    )
    return attractor_summary(
        toks.numpy(), np.concatenate(xs), np.concatenate(xe), np.concatenate(traj), n_boot, seed
    )


# --------------------------------------------------------------------------- Euler–Lagrange


def affine_force(weight: np.ndarray, logits: np.ndarray, token: int, scale: float = 1.0) -> F64:
    """``∇_h ln p_x(h)`` for ``logits = scale·(W h + b)``: ``scale·(W_x − pᵀW)`` (float64).

    Args:
        weight: ``[V, d]`` unembedding.
        logits: ``[V]`` logits at ``h`` (after scaling).
        token: the realised token ``x``.
    """
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    w = np.asarray(weight, dtype=np.float64)
    return scale * (w[token] - p @ w)


def force(readout: Readout, h: torch.Tensor, tokens: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The force ``∇_h ln p_{x}(h)`` per row by autograd through ``readout.log_probs``.

    Works for any readout (soft-capped included); rows are independent, so the
    gradient of the summed log-probabilities is the per-row gradient.

    Args:
        h: ``[N, d]`` states; tokens: ``[N]`` realised tokens.

    Returns:
        ``[N, d]`` float32.
    """
    out = torch.empty(h.shape, dtype=torch.float32)
    for i in range(0, h.shape[0], chunk):
        x = h[i : i + chunk].detach().float().clone().requires_grad_(True)
        with torch.enable_grad():
            lp = readout.log_probs(x).gather(-1, tokens[i : i + chunk, None].long()).sum()
            (grad,) = torch.autograd.grad(lp, x)
        out[i : i + chunk] = grad.detach()
    return out


def euler_lagrange_terms(hidden: np.ndarray, forces: np.ndarray) -> dict[str, F64]:
    """Per-step comparison of Prop. C.1's two sides for one trajectory (float64).

    ``LHS_t = 2v_{t+1}/‖v_{t+1}‖² − 2v_t/‖v_t‖²`` against ``F_t = ∇_h ln p_{x_t}(h_t)``,
    for ``t = 1 … T-2`` where both velocities are non-zero and finite.

    Args:
        hidden: ``[T, d]`` states ``h_t``.
        forces: ``[T, d]`` ``F_t`` at each state.

    Returns:
        ``step`` (the t used), ``cos`` = cos(LHS, F), ``rel_residual`` =
        ‖LHS − F‖/‖LHS‖, ``force_over_lhs`` = ‖F‖/‖LHS‖, ``lhs_norm``, ``force_norm``.
    """
    h = np.asarray(hidden, dtype=np.float64)
    f = np.asarray(forces, dtype=np.float64)
    v = h[1:] - h[:-1]  # v[k] = v_{k+1}
    sq = np.sum(v * v, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = 2 * v / sq[:, None]  # w[k] = 2 v_{k+1}/‖v_{k+1}‖²
    lhs = w[1:] - w[:-1]  # lhs[k] at t = k+1
    ft = f[1:-1]
    steps = np.arange(1, h.shape[0] - 1)
    ok = np.isfinite(lhs).all(-1) & np.isfinite(ft).all(-1) & (sq[1:] > 0) & (sq[:-1] > 0)
    lhs, ft, steps = lhs[ok], ft[ok], steps[ok]
    ln = np.linalg.norm(lhs, axis=-1)
    fn = np.linalg.norm(ft, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.sum(lhs * ft, axis=-1) / (ln * fn)
        rel = np.linalg.norm(lhs - ft, axis=-1) / ln
        ratio = fn / ln
    return {
        "step": steps.astype(np.float64),
        "cos": cos,
        "rel_residual": rel,
        "force_over_lhs": ratio,
        "lhs_norm": ln,
        "force_norm": fn,
    }


def shuffle_in_time(forces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate ``[T, d]`` forces by a random non-zero offset, so no step keeps its own force."""
    n = forces.shape[0]
    if n < 2:
        return forces.copy()
    return np.roll(forces, int(rng.integers(1, n)), axis=0)


def euler_lagrange(
    hidden: Sequence[np.ndarray],
    forces: Sequence[np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Prop. C.1 over trajectories, plus a shuffled-time baseline.

    Args:
        hidden: per trajectory ``[T_i, d]`` states.
        forces: per trajectory ``[T_i, d]`` forces ``∇_h ln p_{x_t}(h_t)``.

    Returns:
        ``cos``, ``rel_residual`` (median), ``force_over_lhs`` (median), and
        ``shuffled_cos``, ``shuffled_rel_residual``: the same with each
        trajectory's forces rotated in time (seeded).
    """
    rng = np.random.default_rng(seed)
    real, shuf = [], []
    for h, f in zip(hidden, forces, strict=True):
        t = euler_lagrange_terms(h, f)
        real.append(np.column_stack([t["cos"], t["rel_residual"], t["force_over_lhs"]]))
        s = euler_lagrange_terms(h, shuffle_in_time(np.asarray(f), rng))
        shuf.append(np.column_stack([s["cos"], s["rel_residual"]]))

    def med(c: int) -> Callable[[np.ndarray], float]:
        return lambda a: float(np.median(a[:, c])) if a.size else float("nan")

    return {
        "cos": trajectory_bootstrap(
            real, lambda a: finite_mean(a[:, 0]), n_boot, seed, "mean cos(LHS, F)", "E-L"
        ),
        "rel_residual": trajectory_bootstrap(real, med(1), n_boot, seed, "median ‖LHS−F‖/‖LHS‖", "E-L"),
        "force_over_lhs": trajectory_bootstrap(real, med(2), n_boot, seed, "median ‖F‖/‖LHS‖", "E-L"),
        "shuffled_cos": trajectory_bootstrap(
            shuf, lambda a: finite_mean(a[:, 0]), n_boot, seed, "mean cos, forces shuffled in time", "E-L"
        ),
        "shuffled_rel_residual": trajectory_bootstrap(
            shuf, med(1), n_boot, seed, "median ‖LHS−F‖/‖LHS‖, shuffled", "E-L"
        ),
    }


# --------------------------------------------------------------------------- per layer


def layer_energy_table(
    logp: np.ndarray, speed_sq: np.ndarray, n_boot: int = 0, seed: int = 0
) -> pd.DataFrame:
    """K, V, H statistics at every layer (logit lens), from per-layer arrays.

    Args:
        logp: ``[L, N, T]`` ``ln p_{x_t}`` of the realised token read out at each layer.
        speed_sq: ``[L, N, T]`` ``‖h^l_t − h^l_{t−1}‖²`` of the normed layer states (NaN at t=0).

    Returns:
        One row per layer: ``layer``, ``global_cv``, ``mean_trajectory_cv``,
        ``mean_H``, ``mean_K``, ``mean_V``, ``kv_ratio``, ``mean_abs_dH``.
    """
    lp = np.asarray(logp, dtype=np.float64)
    ss = np.asarray(speed_sq, dtype=np.float64)
    n_layers, n, t = lp.shape
    traj = np.repeat(np.arange(n), t)
    rows = []
    for layer in range(n_layers):
        k = log_kinetic(ss[layer]).ravel()
        stats = energy_statistics(traj, k, -lp[layer].ravel(), n_boot=n_boot, seed=seed)
        rows.append(
            {
                "layer": layer,
                "global_cv": stats.global_cv,
                "mean_trajectory_cv": stats.mean_trajectory_cv,
                "mean_H": stats.mean_energy,
                "mean_K": stats.mean_K,
                "mean_V": stats.mean_V,
                "kv_ratio": stats.kv_ratio,
                "mean_abs_dH": stats.mean_abs_dH,
            }
        )
    return pd.DataFrame(rows)
