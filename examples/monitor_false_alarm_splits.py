"""How much does one calibration's false-alarm rate depend on its fit/held-out split?

Traces the monitor benchmark's 600 calibration texts and its 500 fresh normal texts once (the
same seeds and offsets as ``ppmech monitor benchmark``: the benchmark's ``normal`` set plus its
``fresh normal`` set), recalibrates on ``--splits`` random 300/300 fit/held-out splits of the 600
(split 0 is the benchmark's own, in order) and counts each alarm on the 500 fresh texts.
Prints, per alarm, the rate of split 0 and the mean, sd, 5th and 95th percentile over splits.

    PYTHONPATH=src python examples/monitor_false_alarm_splits.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import numpy as np

from ppmech.models.loading import load_model
from ppmech.monitor.benchmark import DELAY_SIGNALS, BenchmarkConfig
from ppmech.monitor.calibration import MonitorConfig, fit_calibration
from ppmech.monitor.scoring import cusum_path, first_alarm
from ppmech.monitor.stream import calibration_sequences, trace_many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--splits", type=int, default=200)
    args = parser.parse_args()
    cfg = BenchmarkConfig(model=args.model)
    lm = load_model(cfg.model)
    mcfg = cfg.monitor_config()
    n_cal, n_fresh = cfg.calibration_sequences, cfg.sequences + cfg.false_alarm_sequences
    cal_traces = trace_many(lm, calibration_sequences(lm, mcfg), cfg.batch_size)
    fresh_cfg = MonitorConfig(**{**asdict(mcfg), "sequences": n_fresh})
    fresh = trace_many(lm, calibration_sequences(lm, fresh_cfg, offset=n_cal), cfg.batch_size)
    rng = np.random.default_rng(0)
    rates: dict[str, list[float]] = {"anomaly flag": []} | {k: [] for k in DELAY_SIGNALS}
    for split in range(args.splits):
        order = rng.permutation(n_cal) if split else np.arange(n_cal)
        cal = fit_calibration([cal_traces[i] for i in order], lm.identity, mcfg)
        flags = [cal.anomaly(t.H) > cal.anomaly_threshold for t in fresh]
        rates["anomaly flag"].append(float(np.mean(flags)))
        for name, signal in DELAY_SIGNALS.items():
            sc = cal.signals[signal]
            paths = [cusum_path(sc.z(t.signal(signal)), cal.cusum_k, cal.z_clip) for t in fresh]
            alarms = [first_alarm(p, sc.cusum_threshold) is not None for p in paths]
            rates[name].append(float(np.mean(alarms)))
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
