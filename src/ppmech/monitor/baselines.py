"""The benchmark's detectors: the monitor's scores and the baselines it is compared with.

Per-sequence scores (higher = more anomalous; see :mod:`ppmech.monitor` for the
definitions): the monitor's anomaly score, ``|z|`` of mean ``H``, the CUSUM
maximum on ``z_H``, ``|z|`` of mean ``K``; the standard baselines mean NLL,
``-`` mean max softmax probability, mean energy score ``-logsumexp(logits)``
(Liu et al. 2020) and mean predictive entropy, used one-sided as in the
literature; and the calibrated two-sided ``|z|`` of the sequence mean of each
baseline signal (against the same calibration texts) and the CUSUM on ``z_NLL``,
which separate what calibration buys from what ``H`` buys.

Two more baselines show what a detector can get without any dynamics: the
calibrated ``|z|`` of the text's length in characters (every text has the same
number of tokens, so the length in characters is what varies; a detector that
only tracks it must not look good), and the Mahalanobis distance of the final
post-final-norm hidden state (last position) from its mean over the calibration's
fit texts, with a Ledoit–Wolf-shrunk covariance (:func:`shrunk_covariance`; the
state has more dimensions than there are calibration texts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppmech.errors import PPMechError
from ppmech.models.identity import LoadedModel
from ppmech.monitor.calibration import Calibration
from ppmech.monitor.scoring import TokenTrace, cusum_path, mahalanobis

F64 = Any

ExtraScores = dict[str, tuple[str, dict[str, list[float]]]]
"""Method name -> (family, set name -> per-text scores), for scores that need more than a trace."""


def _mean(x: F64) -> float:
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def _cusum_max(cal: Calibration, signal: str) -> Callable[[TokenTrace], float]:
    def score(t: TokenTrace) -> float:
        z = cal.signals[signal].z(t.signal(signal))
        return float(cusum_path(z, cal.cusum_k, cal.z_clip).max(initial=0.0))

    return score


def methods(cal: Calibration) -> dict[str, tuple[str, Callable[[TokenTrace], float]]]:
    """Name -> (family, per-sequence score; higher = more anomalous)."""
    s = cal.signals
    return {
        "anomaly (mean, std, drift of H)": ("energy", lambda t: cal.anomaly(t.H)),
        "|z| mean H": ("energy", lambda t: abs(s["H"].seq_z(t.H))),
        "CUSUM max z_H": ("energy", _cusum_max(cal, "H")),
        "|z| mean K": ("energy", lambda t: abs(s["K"].seq_z(t.K))),
        "mean NLL": ("baseline", lambda t: _mean(t.V)),
        "max softmax prob (-MSP)": ("baseline", lambda t: -_mean(t.msp)),
        "energy score -logsumexp": ("baseline", lambda t: _mean(t.neg_lse)),
        "predictive entropy": ("baseline", lambda t: _mean(t.entropy)),
        "|z| mean NLL": ("calibrated baseline", lambda t: abs(s["V"].seq_z(t.V))),
        "|z| mean MSP": ("calibrated baseline", lambda t: abs(s["msp"].seq_z(t.msp))),
        "|z| mean energy score": ("calibrated baseline", lambda t: abs(s["neg_lse"].seq_z(t.neg_lse))),
        "|z| mean entropy": ("calibrated baseline", lambda t: abs(s["entropy"].seq_z(t.entropy))),
        "CUSUM max z_NLL": ("calibrated baseline", _cusum_max(cal, "V")),
    }


def shrunk_covariance(x: F64) -> tuple[F64, float]:
    """Ledoit–Wolf (2004) shrinkage of the sample covariance toward a scaled identity.

    ``Σ = λ μ I + (1 − λ) S`` with ``S`` the covariance (ddof 0) of the rows of ``x``,
    ``μ = tr(S)/p``, ``λ = min(b̄², d²)/d²``, ``d² = ‖S − μI‖²_F / p`` and
    ``b̄² = (Σ_k ‖x_k‖⁴ − n‖S‖²_F) / (n² p)`` on centred rows ``x_k``.

    Args:
        x: ``[n, p]`` samples, ``n >= 2``.

    Returns:
        ``([p, p] covariance, λ)``; positive definite whenever ``λ > 0`` and ``μ > 0``.
    """
    a = np.asarray(x, dtype=np.float64)
    n, p = a.shape
    if n < 2:
        raise PPMechError(f"a covariance needs at least 2 samples (got {n})", "calibrate on more texts")
    xc = a - a.mean(axis=0)
    s = xc.T @ xc / n
    mu = float(np.trace(s)) / p
    d2 = float(np.sum((s - mu * np.eye(p)) ** 2)) / p
    b2 = float(np.sum(np.sum(xc * xc, axis=1) ** 2) - n * np.sum(s * s)) / (n * n * p)
    lam = min(max(b2, 0.0), d2) / d2 if d2 > 0 else 1.0
    return lam * mu * np.eye(p) + (1 - lam) * s, lam


@dataclass
class Baselines:
    """The length and hidden-state baselines, fitted on the calibration's fit texts.

    Attributes:
        length_mean, length_std: mean and std (ddof 1) of the length in characters.
        state_mean: ``[d]`` mean final hidden state.
        state_precision: ``[d, d]`` inverse of its shrunk covariance.
        shrinkage: the Ledoit–Wolf ``λ`` used.
    """

    length_mean: float
    length_std: float
    state_mean: F64
    state_precision: F64
    shrinkage: float

    @classmethod
    def fit(cls, lengths: Sequence[float], states: F64) -> Baselines:
        ln = np.asarray(lengths, dtype=np.float64)
        cov, lam = shrunk_covariance(states)
        sd = float(ln.std(ddof=1)) if len(ln) > 1 else 0.0
        return cls(
            length_mean=float(ln.mean()),
            length_std=sd if sd > 0 else 1.0,
            state_mean=np.asarray(states, dtype=np.float64).mean(axis=0),
            state_precision=np.linalg.inv(cov),
            shrinkage=lam,
        )

    def length_score(self, n_chars: float) -> float:
        """Two-sided ``|z|`` of a text's length in characters."""
        return abs(float(n_chars) - self.length_mean) / self.length_std

    def state_score(self, state: F64) -> float:
        """Mahalanobis distance of a final hidden state from the fit texts' mean."""
        return mahalanobis(state, self.state_mean, self.state_precision)


def text_lengths(lm: LoadedModel, sequences: Sequence[Sequence[int]]) -> list[float]:
    """Length in characters of each text (the special prefix left out)."""
    from ppmech.corpus import special_prefix

    p = len(special_prefix(lm.tokenizer))
    return [float(len(lm.tokenizer.decode(list(ids[p:])))) for ids in sequences]


def baseline_scores(
    base: Baselines, lengths: dict[str, list[float]], traces: dict[str, list[TokenTrace]]
) -> ExtraScores:
    """The length and hidden-state baselines' scores per set."""

    def state(t: TokenTrace) -> float:
        return base.state_score(t.final_state) if t.final_state is not None else float("nan")

    return {
        "|z| text length (characters)": (
            "length baseline",
            {k: [base.length_score(x) for x in v] for k, v in lengths.items()},
        ),
        "Mahalanobis final hidden state": (
            "hidden-state baseline",
            {k: [state(t) for t in v] for k, v in traces.items()},
        ),
    }
