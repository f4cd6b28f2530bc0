"""How well does the conserved energy detect shifted text, next to standard baselines? (issue #5)

:func:`run_benchmark` is the orchestration: it builds the sets (:mod:`ppmech.monitor.sets`),
calibrates on held-out English Wikipedia, traces every text, scores it with the monitor and the
baselines (:mod:`ppmech.monitor.baselines`) and evaluates (:mod:`ppmech.monitor.evaluation`):
AUROC and TPR at 5% FPR per shifted set, splice detection delays, and the false-alarm rate per
kind of fresh normal text (openings, later windows, another split) for each alarm and for the
combined alarm, with Clopper–Pearson 95% intervals.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ppmech.models.identity import LoadedModel
from ppmech.monitor.baselines import Baselines, baseline_scores, text_lengths
from ppmech.monitor.calibration import calibration_split, fit_calibration
from ppmech.monitor.evaluation import evaluate, false_alarm_table, text_scores
from ppmech.monitor.sets import BenchmarkConfig, build_sets
from ppmech.monitor.stream import trace_many

__all__ = ["BenchmarkConfig", "BenchmarkResult", "run_benchmark"]


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` measured.

    Attributes:
        config: the :class:`~ppmech.monitor.sets.BenchmarkConfig`.
        model: the monitored model's identity (dict).
        sizes: texts per set (``calibration`` and the false-alarm kinds included).
        scores: long frame ``set, method, family, auroc, tpr_at_5fpr``.
        delays: frame ``signal, detected, false_alarm, median_delay, mean_delay``
            for the spliced set, one row per per-token CUSUM alarm.
        false_alarms: :func:`~ppmech.monitor.evaluation.false_alarm_table`: per kind of fresh
            normal text and alarm.
        normal_text: the calibration's record of its normal text.
        text_scores: ``{method: {set: [score per text]}}``, ``normal`` included: what the
            ROC curves (:func:`~ppmech.monitor.detection.roc_curve`) and every figure in
            ``scores`` are computed from.
        seconds: wall time of the whole benchmark.
        versions: software versions.
    """

    config: dict[str, Any]
    model: dict[str, Any]
    sizes: dict[str, int]
    scores: pd.DataFrame
    delays: pd.DataFrame
    false_alarms: pd.DataFrame
    seconds: float
    versions: dict[str, str]
    text_scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    normal_text: dict[str, Any] = field(default_factory=dict)

    def table(self, metric: str = "both") -> pd.DataFrame:
        """Methods as rows, shifted sets as columns; cells ``AUROC / TPR@5%FPR`` (or one metric)."""
        rows = []
        for method, group in self.scores.groupby("method", sort=False):
            row: dict[str, Any] = {"method": method, "family": group["family"].iloc[0]}
            for _, r in group.iterrows():
                if metric == "auroc":
                    row[r["set"]] = r["auroc"]
                elif metric == "tpr":
                    row[r["set"]] = r["tpr_at_5fpr"]
                else:
                    row[r["set"]] = f"{r['auroc']:.2f} / {r['tpr_at_5fpr']:.2f}"
            rows.append(row)
        return pd.DataFrame(rows)

    def false_alarm_display(self) -> pd.DataFrame:
        """The false-alarm table as printed: rate and its 95% interval in percent, per kind and alarm."""
        fa = self.false_alarms
        if fa.empty:
            return fa
        return pd.DataFrame(
            {
                "normal text": fa["normal text"],
                "alarm": fa["alarm"],
                "alarms / texts": [f"{a} / {n}" for a, n in zip(fa["alarms"], fa["texts"], strict=True)],
                "rate [95% CI]": [
                    f"{r:.1%} [{lo:.1%}, {hi:.1%}]"
                    for r, lo, hi in zip(fa["rate"], fa["CI low"], fa["CI high"], strict=True)
                ],
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "model": self.model,
            "sizes": self.sizes,
            "scores": self.scores.to_dict(orient="records"),
            "delays": self.delays.to_dict(orient="records"),
            "false_alarms": self.false_alarms.to_dict(orient="records"),
            "normal_text": self.normal_text,
            "seconds": self.seconds,
            "versions": self.versions,
            "text_scores": self.text_scores,
        }


def run_benchmark(
    config: BenchmarkConfig, lm: LoadedModel | None = None, progress: bool = True
) -> BenchmarkResult:
    """Build the sets, calibrate on held-out English, score everything, and tabulate."""
    from ppmech.models.loading import load_model
    from ppmech.provenance import versions

    start = time.perf_counter()
    if lm is None:
        lm = load_model(
            config.model,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            seed=config.seed,
            device=config.device,
        )
    sets = build_sets(lm, config, progress)
    mcfg = config.monitor_config()
    cal_traces = trace_many(lm, sets.calibration, config.batch_size, "calibration" if progress else None)
    normal = sets.normal_text
    cal = fit_calibration(cal_traces, lm.identity, mcfg, versions(), normal_text=normal)
    traces = {
        name: trace_many(lm, seqs, config.batch_size, name if progress else None)
        for name, seqs in sets.sets.items()
    }
    n_normal = len(traces["normal"])
    kinds = {
        kind: (traces["normal"][: len(seqs)] if kind == "openings" else [])
        + trace_many(
            lm,
            seqs[n_normal:] if kind == "openings" else seqs,
            config.batch_size,
            kind if progress else None,
        )
        for kind, seqs in sets.false_alarm.items()
    }
    n_fit = calibration_split(len(cal_traces), mcfg.holdout_fraction)
    fit_states = np.stack([t.final_state for t in cal_traces[:n_fit] if t.final_state is not None])
    base = Baselines.fit(text_lengths(lm, sets.calibration[:n_fit]), fit_states)
    lengths = {name: text_lengths(lm, seqs) for name, seqs in sets.sets.items()}
    scored = text_scores(cal, traces, baseline_scores(base, lengths, traces))
    scores, delays = evaluate(cal, traces, sets.splice_index, scored=scored)
    sizes = (
        {"calibration": len(sets.calibration)}
        | {k: len(v) for k, v in sets.sets.items()}
        | {f"false alarms: {k}": len(v) for k, v in sets.false_alarm.items()}
    )
    return BenchmarkResult(
        config=asdict(config),
        model=lm.identity.to_dict() | {"key": lm.identity.key},
        sizes=sizes,
        scores=scores,
        delays=delays,
        false_alarms=false_alarm_table(cal, kinds),
        normal_text=normal.to_dict(),
        seconds=time.perf_counter() - start,
        versions=versions(),
        text_scores={name: by_set for name, (_, by_set) in scored.items()},
    )
