"""Evaluation of the monitor benchmark (pure given traces): AUROC and TPR per set and method,
splice detection delays, and false-alarm rates per kind of normal text.

Metrics: AUROC (normal = negative, shifted = positive; ties count ½) and the TPR at 5% FPR
(threshold: the smallest score exceeded by at most 5% of normal texts), from
:mod:`ppmech.monitor.detection`. False alarms: each alarm (the anomaly flag, the CUSUM on
``z_H``, either of them at its own threshold, and the combined alarm) is counted on fresh normal
texts of each kind, with a Clopper–Pearson 95% interval (:func:`ppmech.statistics.rate_estimate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ppmech.monitor.baselines import ExtraScores, methods
from ppmech.monitor.calibration import Calibration
from ppmech.monitor.detection import auroc, tpr_at_fpr
from ppmech.monitor.results import score_trace
from ppmech.monitor.scoring import TokenTrace, cusum_path, first_alarm
from ppmech.monitor.sets import SETS
from ppmech.statistics import rate_estimate

F64 = Any

DELAY_SIGNALS = {
    "H (energy)": "H",
    "K (kinetic)": "K",
    "NLL": "V",
    "entropy": "entropy",
    "max softmax prob": "msp",
    "energy score -logsumexp": "neg_lse",
}
ALARMS = (
    "anomaly flag",
    "CUSUM on z_H",
    "either, separate thresholds",
    "combined alarm",
)
"""The alarms whose false-alarm rates are counted: the two separate ones, what a user watching both
saw before the combined threshold (either one firing), and the combined alarm."""


def delay_stats(
    paths: Sequence[F64], threshold: float, splice: Sequence[int]
) -> tuple[float, float, float, float]:
    """Detection of a splice by a per-token alarm.

    For each CUSUM path, the first alarm (entry above ``threshold``) is a false
    alarm if it comes before the splice index, a detection otherwise, with delay
    ``alarm - splice`` tokens.

    Returns:
        ``(detected fraction, false-alarm fraction, median delay, mean delay)``;
        delays over detected sequences only (NaN if none).
    """
    delays, false = [], 0
    for path, s in zip(paths, splice, strict=True):
        at = first_alarm(np.asarray(path), threshold)
        if at is None:
            continue
        if at < s:
            false += 1
        else:
            delays.append(at - s)
    n = len(splice)
    if not delays:
        return 0.0, false / n, float("nan"), float("nan")
    return len(delays) / n, false / n, float(np.median(delays)), float(np.mean(delays))


def text_scores(
    cal: Calibration, traces: dict[str, list[TokenTrace]], extra: ExtraScores | None = None
) -> ExtraScores:
    """Every method's score of every text: method -> (family, set -> scores); ``extra`` appended."""
    scored: ExtraScores = {
        name: (family, {k: [fn(t) for t in v] for k, v in traces.items()})
        for name, (family, fn) in methods(cal).items()
    }
    return scored | (extra or {})


def evaluate(
    cal: Calibration,
    traces: dict[str, list[TokenTrace]],
    splice_index: Sequence[int],
    fpr: float = 0.05,
    extra: ExtraScores | None = None,
    scored: ExtraScores | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every set with every method (pure given traces); returns ``(scores, delays)``.

    ``scored`` is :func:`text_scores` of the same inputs, when the caller already has it.
    """
    rows = []
    if scored is None:
        scored = text_scores(cal, traces, extra)
    for name, (family, by_set) in scored.items():
        normal = by_set["normal"]
        for set_name in SETS:
            if set_name not in traces or set_name not in by_set:
                continue
            shifted = by_set[set_name]
            rows.append(
                {
                    "set": set_name,
                    "method": name,
                    "family": family,
                    "auroc": auroc(normal, shifted),
                    "tpr_at_5fpr": tpr_at_fpr(normal, shifted, fpr),
                }
            )
    delay_rows = []
    if "spliced" in traces:
        for label, signal in DELAY_SIGNALS.items():
            sc = cal.signals[signal]
            paths = [cusum_path(sc.z(t.signal(signal)), cal.cusum_k, cal.z_clip) for t in traces["spliced"]]
            normal_paths = [
                cusum_path(sc.z(t.signal(signal)), cal.cusum_k, cal.z_clip) for t in traces["normal"]
            ]
            normal_alarm = np.mean([first_alarm(q, sc.cusum_threshold) is not None for q in normal_paths])
            det, false, med, mean = delay_stats(paths, sc.cusum_threshold, splice_index)
            delay_rows.append(
                {
                    "CUSUM on z of": label,
                    "alarm on normal": float(normal_alarm),
                    "false alarm before splice": false,
                    "detected after splice": det,
                    "median delay (tokens)": med,
                    "mean delay (tokens)": mean,
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(delay_rows)


def alarms_of(cal: Calibration, trace: TokenTrace) -> dict[str, bool]:
    """Which of :data:`ALARMS` a text raises (through :func:`~ppmech.monitor.results.score_trace`)."""
    seq = score_trace(trace, cal).sequence
    cusum = seq.alarm_at is not None
    return {
        "anomaly flag": seq.flagged,
        "CUSUM on z_H": cusum,
        "either, separate thresholds": seq.flagged or cusum,
        "combined alarm": seq.alarm,
    }


def false_alarm_table(cal: Calibration, kinds: Mapping[str, Sequence[TokenTrace]]) -> pd.DataFrame:
    """Alarm rates on fresh normal texts of each kind, with Clopper–Pearson 95% intervals.

    Args:
        cal: the calibration (none of the texts was used by it).
        kinds: kind of normal text (e.g. ``openings``) -> its traces.

    Returns:
        One row per kind and alarm of :data:`ALARMS`: ``normal text``, ``alarm``, ``alarms``,
        ``texts``, ``rate``, ``CI low``, ``CI high`` (float64), ``nominal``.
    """
    rows = []
    for kind, traces in kinds.items():
        flags = [alarms_of(cal, t) for t in traces]
        for alarm in ALARMS:
            hits = int(sum(f[alarm] for f in flags))
            est = rate_estimate(hits, len(flags))
            rows.append(
                {
                    "normal text": kind,
                    "alarm": alarm,
                    "alarms": hits,
                    "texts": len(flags),
                    "rate": est.value,
                    "CI low": est.low,
                    "CI high": est.high,
                    "nominal": cal.alpha,
                }
            )
    return pd.DataFrame(rows)
