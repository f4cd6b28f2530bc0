"""Pure statistics of the energy monitor: per-token traces, sequence features, the CUSUM, the
Mahalanobis anomaly score, the per-signal calibration and the split-conformal threshold
(definitions in :mod:`ppmech.monitor`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ppmech.errors import PPMechError

F64 = NDArray[np.float64]


SIGNALS = ("H", "K", "V", "entropy", "msp", "neg_lse")
FEATURES = ("mean_H", "std_H", "drift_H")
QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
MIN_TOKENS = 4  # ids incl. prefix: 3 scored tokens, 2 of them with H, so std H is defined


# --------------------------------------------------------------------------- pure parts


@dataclass
class TokenTrace:
    """Per-token terms of one teacher-forced or streamed sequence (``n`` scored tokens).

    Attributes:
        token_ids: ``[n]`` int64, the scored tokens ``u_1 … u_{n}`` (or from ``u_0``
            after a special prefix).
        V: ``[n]`` surprisal ``-ln p`` (nats).
        K: ``[n]`` ``ln(½‖Δh‖²)``; NaN for the first scored token, ``-inf`` at zero velocity.
        H: ``[n]`` ``K + V``; NaN for the first scored token.
        entropy: ``[n]`` predictive entropy (nats).
        msp: ``[n]`` maximum softmax probability.
        neg_lse: ``[n]`` ``-logsumexp(logits)`` (Liu et al. 2020's energy score).
        final_state: ``[d]`` post-final-norm state at the last position (teacher-forced
            traces only; the hidden-state baseline of the benchmark), else ``None``.
    """

    token_ids: NDArray[np.int64]
    V: F64
    K: F64
    H: F64
    entropy: F64
    msp: F64
    neg_lse: F64
    final_state: F64 | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    def signal(self, name: str) -> F64:
        """One of :data:`SIGNALS` as a float64 array."""
        return np.asarray(getattr(self, name), dtype=np.float64)


def sequence_features(h: F64) -> tuple[float, float, float]:
    """``(mean H, std H, drift H)`` over the finite entries of ``h``.

    ``std`` uses ddof 1; ``drift`` is the least-squares slope of ``H`` against the
    token index (nats per token). Fewer than two finite values give NaN.
    """
    h = np.asarray(h, dtype=np.float64)
    idx = np.arange(len(h), dtype=np.float64)
    ok = np.isfinite(h)
    if ok.sum() < 2:
        return float("nan"), float("nan"), float("nan")
    x, y = idx[ok], h[ok]
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    return float(y.mean()), float(y.std(ddof=1)), slope


def cusum_step(state: tuple[float, float], z: float, k: float, clip: float) -> tuple[float, float]:
    """One two-sided CUSUM update; a NaN ``z`` leaves the state unchanged.

    ``S⁺ <- max(0, S⁺ + z - k)``, ``S⁻ <- max(0, S⁻ - z - k)``, with ``z`` clipped to ``±clip``.
    """
    if math.isnan(z):
        return state
    z = min(max(z, -clip), clip)
    return max(0.0, state[0] + z - k), max(0.0, state[1] - z - k)


def cusum_path(z: F64, k: float, clip: float) -> F64:
    """``C_j = max(S⁺_j, S⁻_j)`` along a sequence of z-scores, ``[n]`` float64."""
    state = (0.0, 0.0)
    out = np.zeros(len(z), dtype=np.float64)
    for j, value in enumerate(np.asarray(z, dtype=np.float64)):
        state = cusum_step(state, float(value), k, clip)
        out[j] = max(state)
    return out


def first_alarm(path: F64, threshold: float) -> int | None:
    """Index of the first entry of a CUSUM path above ``threshold``, or ``None``."""
    hits = np.nonzero(np.asarray(path) > threshold)[0]
    return int(hits[0]) if len(hits) else None


def mahalanobis(x: F64, mean: F64, cov_inv: F64) -> float:
    """``sqrt((x - mean)ᵀ cov_inv (x - mean))``; NaN if ``x`` has a non-finite entry."""
    d = np.asarray(x, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    if not np.all(np.isfinite(d)):
        return float("nan")
    return float(math.sqrt(max(0.0, float(d @ np.asarray(cov_inv) @ d))))


def tail_p_value(score: float, reference: Sequence[float]) -> float:
    """``(1 + #{ref >= score}) / (1 + N)``: the calibration tail probability of ``score``."""
    if math.isnan(score):
        return float("nan")
    ref = np.asarray(reference, dtype=np.float64)
    return float((1 + np.sum(ref >= score)) / (1 + len(ref)))


def _finite(x: F64) -> F64:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


@dataclass
class SignalCalibration:
    """What normal looks like for one per-token signal.

    Attributes:
        token_mean, token_std: pooled mean and std (ddof 1) of the finite per-token values.
        quantiles: per-token quantiles, keyed ``"0.05"`` etc.
        seq_mean_mean, seq_mean_std: mean and std (ddof 1) across sequences of the
            per-sequence mean.
        cusum_threshold: ``1 - alpha`` quantile of the per-sequence maximum of the
            CUSUM path of this signal's z-scores.
    """

    token_mean: float
    token_std: float
    quantiles: dict[str, float]
    seq_mean_mean: float
    seq_mean_std: float
    cusum_threshold: float

    def z(self, x: F64) -> F64:
        """Per-token z-scores ``(x - token_mean) / token_std``."""
        with np.errstate(invalid="ignore"):
            return (np.asarray(x, dtype=np.float64) - self.token_mean) / self.token_std

    def seq_z(self, x: F64) -> float:
        """z-score of the sequence mean of the finite values of ``x``."""
        v = _finite(x)
        if not len(v):
            return float("nan")
        return float((v.mean() - self.seq_mean_mean) / self.seq_mean_std)


def conformal_threshold(scores: Sequence[float], alpha: float) -> float:
    """Split-conformal alarm threshold: the ``⌈(n+1)(1−α)⌉``-th smallest held-out score.

    With ``n`` calibration scores exchangeable with a new normal score ``s``,
    ``P(s > threshold) ≤ α`` (and ``≥ α − 1/(n+1)`` without ties): alarm when a
    score is strictly above the threshold. When ``⌈(n+1)(1−α)⌉ > n`` no finite
    threshold keeps that guarantee and the result is ``+inf`` (never alarm).

    Raises:
        PPMechError: ``alpha`` outside (0, 1), or no finite score.
    """
    if not 0 < alpha < 1:
        raise PPMechError(f"alpha must be in (0, 1) (got {alpha})", "use e.g. 0.05")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise PPMechError("no finite calibration score to set a threshold", "calibrate on more text")
    # The 1e-9 keeps an exact product such as 20 × 0.95 = 19 from rounding up to 20.
    rank = math.ceil((s.size + 1) * (1 - alpha) - 1e-9)
    return float(s[rank - 1]) if rank <= s.size else float("inf")


def calibrate_signal(
    values: Sequence[F64],
    k: float,
    clip: float,
    alpha: float,
    held_out: Sequence[F64] | None = None,
) -> SignalCalibration:
    """Learn a :class:`SignalCalibration`: moments from ``values``, the CUSUM threshold from ``held_out``.

    Args:
        values: per-token values, one array per fit sequence.
        held_out: per-token values of the held-out sequences; their CUSUM maxima
            (on z-scores from the fit) set the threshold by :func:`conformal_threshold`.
            ``None``: the fit sequences themselves (in-sample; too low a threshold,
            kept for comparison).
    """
    pooled = np.concatenate([_finite(v) for v in values])
    if len(pooled) < 2:
        raise PPMechError("calibration has fewer than 2 finite token values", "calibrate on more text")
    mean, std = float(pooled.mean()), float(pooled.std(ddof=1))
    std = std if std > 0 else 1.0
    seq_means = np.array([_finite(v).mean() for v in values if len(_finite(v))])
    seq_std = float(seq_means.std(ddof=1)) if len(seq_means) > 1 else 1.0
    maxima = [
        float(cusum_path((np.asarray(v, dtype=np.float64) - mean) / std, k, clip).max(initial=0.0))
        for v in (values if held_out is None else held_out)
    ]
    return SignalCalibration(
        token_mean=mean,
        token_std=std,
        quantiles={str(q): float(np.quantile(pooled, q)) for q in QUANTILES},
        seq_mean_mean=float(seq_means.mean()),
        seq_mean_std=seq_std if seq_std > 0 else 1.0,
        cusum_threshold=conformal_threshold(maxima, alpha),
    )
