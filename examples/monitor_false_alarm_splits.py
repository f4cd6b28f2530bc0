"""How much does one calibration's false-alarm rate depend on its fit/held-out split?

Traces the monitor benchmark's calibration texts (windows from anywhere in held-out English
Wikipedia documents) and its fresh normal texts of each kind (openings, later windows, other
split) once, with the same seeds and offsets as ``ppmech monitor benchmark``; recalibrates on
``--splits`` random fit/held-out splits of the calibration texts (split 0 is the benchmark's own,
in order) and counts each alarm (:data:`ppmech.monitor.evaluation.ALARMS`) on every kind.
Prints, per kind and alarm, the rate of split 0 and the mean, sd, 5th and 95th percentile over
splits: the conformal guarantee is on average over calibrations, and this shows the spread.

    PYTHONPATH=src python examples/monitor_false_alarm_splits.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ppmech.models.loading import load_model
from ppmech.monitor.calibration import fit_calibration
from ppmech.monitor.evaluation import ALARMS, alarms_of
from ppmech.monitor.sets import BenchmarkConfig, false_alarm_sets
from ppmech.monitor.stream import calibration_sequences, trace_many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--calibration-sequences", type=int, default=BenchmarkConfig().calibration_sequences)
    parser.add_argument("--per-kind", type=int, default=BenchmarkConfig().false_alarm_sequences)
    args = parser.parse_args()
    cfg = BenchmarkConfig(
        model=args.model,
        calibration_sequences=args.calibration_sequences,
        false_alarm_sequences=args.per_kind,
    )
    lm = load_model(cfg.model)
    mcfg = cfg.monitor_config()
    cal_traces = trace_many(lm, calibration_sequences(lm, mcfg), cfg.batch_size)
    normal = calibration_sequences(
        lm,
        cfg.monitor_config(sequences=cfg.sequences, positions="openings"),
        offset=cfg.calibration_sequences,
    )
    kinds = {k: trace_many(lm, v, cfg.batch_size) for k, v in false_alarm_sets(lm, cfg, normal).items()}
    rng = np.random.default_rng(0)
    rates: dict[str, list[float]] = {f"{k}: {a}": [] for k in kinds for a in ALARMS}
    for split in range(args.splits):
        order = rng.permutation(len(cal_traces)) if split else np.arange(len(cal_traces))
        cal = fit_calibration([cal_traces[i] for i in order], lm.identity, mcfg)
        for kind, traces in kinds.items():
            flags = [alarms_of(cal, t) for t in traces]
            for alarm in ALARMS:
                rates[f"{kind}: {alarm}"].append(float(np.mean([f[alarm] for f in flags])))
    summary = {
        name: {
            "split_0": v[0],
            "mean": float(np.mean(v)),
            "sd": float(np.std(v)),
            "p5": float(np.percentile(v, 5)),
            "p95": float(np.percentile(v, 95)),
        }
        for name, v in rates.items()
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
