"""The claims ledger's Table 5 row from a sweep: ``ppmech verify --sweep DIR``.

Table 5 of the paper correlates "Energy Drift" (ΣΔE/Σ|ΔE|, Appendix G) with
parameter count within one family: r = 0.9996, p = 0.018 (three sizes). Its
second row, "Efficiency", is never defined, so only the drift row is tested.

For every group of a study with three or more sizes of one family measured with
the same settings (:func:`ppmech.sweep.outputs.family_groups`), the measurement
``sweep:<family>-<weights>-<protocol>/table5/drift_r`` is Pearson r of each
run's drift of H against its parameter count (the point estimate is
:func:`ppmech.claims.scaling.scaling_from_runs` on the runs' summaries). Its 95% CI is a
trajectory bootstrap: every run's trajectories are resampled independently and
r is recomputed. That CI covers measurement noise only: the models themselves
are not a sample, so with three sizes it says nothing about other members of
the family, exactly as the paper's figure does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ppmech.claims import analyses as A
from ppmech.claims.ledger import Claim
from ppmech.claims.rules import Rule
from ppmech.errors import PPMechError
from ppmech.runs import load_run
from ppmech.statistics import Estimate, percentile_ci, resample_trajectories

#: The measured form of the ledger's T5 claim; ``{model}`` is a sweep group label.
T5_SWEEP = Claim(
    "T5",
    "Table 5",
    "Energy drift (ΣΔH/Σ|ΔH|) rises with parameter count within a family (r = 0.9996; "
    "'efficiency', the table's other row, is undefined in the paper)",
    "r = 0.9996, p = 0.018",
    "{model}/table5/drift_r",
    Rule("above", 0.0),
)


def table5_measurements(study_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Pearson r of drift with parameter count, with a trajectory-bootstrap 95% CI, per eligible group.

    Raises:
        PPMechError: ``study_dir`` is not a sweep's study directory, or no group
            has three sizes of one family.
    """
    from ppmech.claims.scaling import scaling_from_runs
    from ppmech.sweep.outputs import family_groups

    root = Path(study_dir)
    table = root / "study.parquet"
    if not table.is_file():
        raise PPMechError(
            f"--sweep {root} is not a ppmech sweep study directory (no study.parquet)",
            "pass the --out directory of a `ppmech sweep`",
        )
    frame = pd.read_parquet(table)
    out: dict[str, Estimate] = {}
    for group, part in family_groups(frame):
        if part["parameters"].nunique() < 3:
            continue
        runs = [load_run(root / str(path)) for path in part["path"]]
        summary, corr = scaling_from_runs(runs, "drift")
        d_runs = [A.differences([p[:, 0] for p in A.split_by_trajectory(r.steps, ["H"])]) for r in runs]
        params = summary["parameters"].to_numpy(dtype=np.float64)
        # Each run's trajectories are resampled on their own (seed + run index), by the one resampler.
        picks = [resample_trajectories(len(d), n_boot, seed + j) for j, d in enumerate(d_runs)]
        reps = []
        for b in range(n_boot):
            values = [
                A.drift(np.concatenate([d[i] for i in pick[b]]))
                for d, pick in zip(d_runs, picks, strict=True)
            ]
            if np.all(np.isfinite(values)) and np.ptp(values) > 0:
                reps.append(float(np.corrcoef(params, values)[0, 1]))
        low, high = percentile_ci(reps, n_boot)  # the one CI rule (minimum replicates included)
        label = f"sweep:{group['family']}-{group['weights']}-{group['protocol']}"
        models = ", ".join(f"{m} ({p:.3g})" for m, p in zip(summary["model"], params, strict=True))
        out[f"{label}/table5/drift_r"] = Estimate(
            corr.r,
            float(low),
            float(high),
            corr.n,
            f"Pearson r over {corr.n} sizes: {models}; p = {corr.p:.3g}; CI: trajectory bootstrap "
            "(measurement noise only)",
        )
    if not out:
        raise PPMechError(
            f"the sweep in {root} has no family with 3 or more sizes measured with the same settings",
            "sweep at least three sizes of one family (e.g. SmolLM2 135M, 360M, 1.7B)",
        )
    return out


def ledger_models(measurements: dict[str, Estimate]) -> list[str]:
    """The sweep group labels in ``measurements`` (the ledger's 'model' column for T5)."""
    return sorted({k.split("/")[0] for k in measurements if k.startswith("sweep:")})
