"""A scored text: the per-sequence verdict (separate and combined alarms) and the per-token frame."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ppmech.monitor.calibration import Calibration
from ppmech.monitor.scoring import (
    TokenTrace,
    _finite,
    cusum_path,
    first_alarm,
    sequence_features,
    tail_p_value,
)


@dataclass
class SequenceScore:
    """Per-sequence scores of one text.

    Attributes:
        n_tokens: scored tokens.
        n_energy: tokens with a finite ``H``.
        mean_H, std_H, drift_H: the features (nats; nats per token for drift).
        mean_K, mean_V: sequence means of ``K`` and ``V`` (nats).
        z_mean_H: z-score of ``mean_H`` against the calibration's sequence means.
        anomaly: Mahalanobis distance of the features from the calibration.
        p_value: conformal p-value of ``anomaly`` (tail probability among the held-out texts).
        flagged: ``anomaly`` above the calibration's conformal threshold (``p_value <= alpha``).
        cusum_max: the largest CUSUM statistic reached on ``z_H``.
        alarm_at: index (into the scored tokens) of the first CUSUM alarm, or ``None``.
        alarm: the combined alarm: ``anomaly`` above the combined anomaly threshold, or the CUSUM
            above the combined CUSUM threshold somewhere (each higher than its separate one);
            at most ``alpha`` of normal texts raise it
            (:func:`~ppmech.monitor.calibration.combined_thresholds`).
        alarm_by: what raised the combined alarm: ``"anomaly"``, ``"cusum"``, ``"both"`` or ``None``.
        combined_alarm_at: first token with the CUSUM above the combined threshold, or ``None``.
    """

    n_tokens: int
    n_energy: int
    mean_H: float
    std_H: float
    drift_H: float
    mean_K: float
    mean_V: float
    z_mean_H: float
    anomaly: float
    p_value: float
    flagged: bool
    cusum_max: float
    alarm_at: int | None
    alarm: bool = False
    alarm_by: str | None = None
    combined_alarm_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MonitorScore:
    """A scored text: per-sequence scores and a per-token frame.

    ``tokens`` columns: ``index`` (into the scored tokens), ``token_id``, ``token``,
    ``V``, ``K``, ``H``, ``z_V``, ``z_K``, ``z_H``, ``cusum`` (the CUSUM statistic on
    ``z_H`` after this token), ``alarm`` (``cusum`` above the threshold), and the
    baseline signals ``entropy``, ``msp``, ``neg_lse``.
    """

    sequence: SequenceScore
    tokens: pd.DataFrame
    trace: TokenTrace


def score_trace(
    trace: TokenTrace, cal: Calibration, token_strings: Sequence[str] | None = None
) -> MonitorScore:
    """Score a trace against a calibration (pure; shared by teacher forcing and streaming)."""
    sig = cal.signals
    z = {name: sig[name].z(trace.signal(name)) for name in ("H", "K", "V")}
    path = cusum_path(z["H"], cal.cusum_k, cal.z_clip)
    threshold = sig["H"].cusum_threshold
    mean_h, std_h, drift = sequence_features(trace.H)
    anomaly = cal.anomaly(trace.H)
    p = tail_p_value(anomaly, cal.anomaly_reference)
    combined_at = first_alarm(path, cal.combined_cusum_threshold)
    by_anomaly = bool(anomaly > cal.combined_anomaly_threshold)
    by = {(True, True): "both", (True, False): "anomaly", (False, True): "cusum"}.get(
        (by_anomaly, combined_at is not None)
    )
    h_finite = _finite(trace.H)
    k_finite = _finite(trace.K)
    seq = SequenceScore(
        n_tokens=len(trace),
        n_energy=len(h_finite),
        mean_H=mean_h,
        std_H=std_h,
        drift_H=drift,
        mean_K=float(k_finite.mean()) if len(k_finite) else float("nan"),
        mean_V=float(np.mean(trace.V)),
        z_mean_H=sig["H"].seq_z(trace.H),
        anomaly=anomaly,
        p_value=p,
        flagged=bool(anomaly > cal.anomaly_threshold),
        cusum_max=float(path.max(initial=0.0)),
        alarm_at=first_alarm(path, threshold),
        alarm=by is not None,
        alarm_by=by,
        combined_alarm_at=combined_at,
    )
    frame = pd.DataFrame(
        {
            "index": np.arange(len(trace)),
            "token_id": trace.token_ids,
            "token": list(token_strings) if token_strings is not None else [""] * len(trace),
            "V": trace.V,
            "K": trace.K,
            "H": trace.H,
            "z_V": z["V"],
            "z_K": z["K"],
            "z_H": z["H"],
            "cusum": path,
            "alarm": path > threshold,
            "entropy": trace.entropy,
            "msp": trace.msp,
            "neg_lse": trace.neg_lse,
        }
    )
    return MonitorScore(sequence=seq, tokens=frame, trace=trace)
