"""``ppmech verify``: the claims ledger's orchestrator (plan, record or reuse, analyse, judge, write).

Modules: :mod:`.plan` (sizes, settings, the run list), :mod:`.store` (record or
reuse runs, load their model, the analysis cache), :mod:`.model_analyses`
(analyses that need the model), :mod:`.driver` (:func:`verify`). The pure Table 5
analysis is :mod:`ppmech.claims.scaling`; the per-run analyses of stored steps are
:mod:`ppmech.claims.run_analyses`.
"""

from __future__ import annotations

from ppmech.claims.render import verdict_counts
from ppmech.claims.run_analyses import curvature_analysis, null_analyses, steps_analyses
from ppmech.claims.scaling import scaling_from_runs
from ppmech.claims.sections import null_frame
from ppmech.claims.verify.driver import VerifyResult, analyse_plan, summary_frame, verify
from ppmech.claims.verify.model_analyses import hidden_analyses, layer_analysis
from ppmech.claims.verify.plan import (
    EMBEDDED,
    MIN_BOOT_FOR_VERDICTS,
    QUICK,
    RunPlan,
    Sizes,
    VerifyConfig,
    plan_runs,
)
from ppmech.claims.verify.store import check_model, ensure_run, model_for_run

__all__ = [
    "EMBEDDED",
    "MIN_BOOT_FOR_VERDICTS",
    "QUICK",
    "RunPlan",
    "Sizes",
    "VerifyConfig",
    "VerifyResult",
    "analyse_plan",
    "check_model",
    "curvature_analysis",
    "ensure_run",
    "hidden_analyses",
    "layer_analysis",
    "model_for_run",
    "null_analyses",
    "null_frame",
    "plan_runs",
    "scaling_from_runs",
    "steps_analyses",
    "summary_frame",
    "verdict_counts",
    "verify",
]
