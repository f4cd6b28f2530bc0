"""The claims ledger: apply every claim's rule (and its controls) to the measurements.

The claims are data in :mod:`ppmech.claims.catalogue`, the paper's figures in
:mod:`ppmech.claims.paper`; rule kinds and verdicts in :mod:`ppmech.claims.rules`;
the markdown and JSON forms in :mod:`ppmech.claims.render`.

Claims whose source starts with "beyond the paper" are not the paper's: they are
the null models and confounder controls of :mod:`ppmech.nulls`, with rules fixed
before measuring, and are rendered under their own heading.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from ppmech.claims.catalogue import CLAIMS, NEAR_TOL, THRESHOLD, Claim, Controls
from ppmech.claims.paper import (
    DEFINITIONS,
    PAPER_ROW,
    TABLE1,
    TABLE1_MEDIANS,
    TABLE5,
    inconsistencies,
    table1_consistency,
    table5_sample_size,
)
from ppmech.claims.rules import Rule, Verdict, apply_rule
from ppmech.nulls import UNIT_RANGE
from ppmech.provenance import json_safe
from ppmech.statistics import Estimate

# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class LedgerRow:
    """One evaluated claim."""

    id: str
    model: str
    source: str
    claim: str
    paper: str
    measured: str
    value: float | None
    low: float | None
    high: float | None
    n: int
    verdict: Verdict
    rule: str
    why: str
    metric: str
    paper_verdict: Verdict | None = None
    controls: str = ""
    control_values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt_est(m: Estimate | None) -> str:
    if m is None or not math.isfinite(m.value):
        return "not measured"
    if not m.has_ci:
        return f"{m.value:.4g}"
    return f"{m.value:.4g} [{m.low:.4g}, {m.high:.4g}]"


def describe_controls(controls: Controls) -> str:
    """The control rules of a conserved-type claim, in words (fixed before measuring; docs/claims.md)."""
    parts = []
    if controls.compensation:
        parts.append(
            "compensation: R's 95% CI below 1 and below the 2.5% edge of its pairing-shuffle band, "
            "else 'low variance without compensation'"
        )
    if controls.scale:
        lo, hi = UNIT_RANGE
        parts.append(
            f"scale: the same rule holds at c = {lo:g} and c = {hi:g} (h → c·h), "
            "else 'holds only in these units'"
        )
    elif controls.scale_note:
        parts.append(f"scale: {controls.scale_note}")
    return "supported only if the paper's rule passes and " + "; ".join(parts)


def _fmt_ci(m: Estimate | None, digits: int = 3) -> str:
    if m is None or not math.isfinite(m.low) or not math.isfinite(m.high):
        return "—"
    return f"[{m.low:.{digits}g}, {m.high:.{digits}g}]"


def _fmt_short(m: Estimate | None) -> str:
    if m is None or not math.isfinite(m.value):
        return "—"
    return f"{m.value:.3g} {_fmt_ci(m)}" if m.has_ci else f"{m.value:.3g}"


def _compensation_check(r: Estimate | None, band: Estimate | None) -> tuple[str, str]:
    """('pass' | 'fail' | 'unknown', why): compensation is shown only when R's whole CI lies below 1
    and below the 2.5% edge of its pairing-shuffle band; anything else fails (not shown)."""
    if r is None or band is None or not r.has_ci or not math.isfinite(band.low):
        return "unknown", "R or its shuffle band not measured"
    edge = min(1.0, band.low)
    if r.high < edge:
        return "pass", f"R CI high {r.high:.4g} < {edge:.4g}"
    return (
        "fail",
        f"R CI high {r.high:.4g} >= {edge:.4g} (1 or the shuffle band's 2.5% edge): no compensation shown",
    )


def judge_controls(
    controls: Controls,
    model: str,
    rule: Rule,
    verdict: Verdict,
    why: str,
    measurements: dict[str, Estimate],
) -> tuple[Verdict, str, str, dict[str, Any]]:
    """Apply a conserved-type claim's controls; returns (verdict, why, controls text, control values).

    The paper's verdict stands unless it is "supported": then a failed compensation
    check gives "low variance without compensation", else a failed scale check
    "holds only in these units", else a control that was not measured "inconclusive".
    A control passes only when shown (R's CI below its edge; the claim's own rule
    "supported" at each end of the unit range): an undecided control fails.
    """
    run = controls.run.format(model=model)
    r = measurements.get(f"{run}/null_R")
    band = measurements.get(f"{run}/null_shuffle_null_R")
    null_cv = measurements.get(f"{run}/null_shuffle_null_cv")
    c_min = measurements.get(f"{run}/null_scale_c_min")
    values: dict[str, Any] = {
        "run": run,
        "R": r.to_dict() if r else None,
        "shuffle_band_R": [json_safe(band.low), json_safe(band.high)] if band else None,
        "shuffle_null_cv": null_cv.to_dict() if null_cv else None,
        "c_min": c_min.to_dict() if c_min else None,
    }
    text = [
        f"R {_fmt_short(r)} vs shuffle band {_fmt_ci(band)}",
        f"shuffle-null CV {_fmt_short(null_cv)}",
        f"{THRESHOLD:.0%} holds for c > {_fmt_short(c_min)}",
    ]
    comp = ("pass", "not a conservation claim")
    if controls.compensation:
        comp = _compensation_check(r, band)
    values["compensation"] = comp[0]
    scale_state, scale_why = "pass", controls.scale_note or "unit-free"
    for metric, other in controls.scale:
        m = measurements.get(metric.format(model=model))
        o = measurements.get(other.format(model=model)) if other else None
        c = metric.rsplit("_c", 1)[-1]
        text.append(f"at c = {c}: {_fmt_short(m)}" + (f" vs {_fmt_short(o)}" if other else ""))
        if m is None or not math.isfinite(m.value):
            if scale_state == "pass":
                scale_state, scale_why = "unknown", f"at c = {c}: not measured"
            continue
        # The claim must hold, by its own rule, in these units too: undecided counts as not holding.
        v, w = apply_rule(rule, m, o)
        if v != "supported" and scale_state != "fail":
            scale_state, scale_why = "fail", f"at c = {c}: {w}"
    values["scale"] = scale_state
    if verdict == "supported":
        if comp[0] == "fail":
            verdict, why = "low variance without compensation", f"{why}; but {comp[1]}"
            if scale_state == "fail":
                why += f"; and not in other units ({scale_why})"
        elif scale_state == "fail":
            verdict, why = "holds only in these units", f"{why}; but {scale_why}"
        elif comp[0] == "unknown" or scale_state == "unknown":
            verdict = "inconclusive"
            why = f"{why}; control undecided: " + (comp[1] if comp[0] == "unknown" else scale_why)
        else:
            why = f"{why}; controls pass ({comp[1]}; {scale_why})"
    return verdict, why, "; ".join(text), values


def evaluate(
    measurements: dict[str, Estimate], models: list[str], claims: list[Claim] | None = None
) -> list[LedgerRow]:
    """Apply every claim's rule to the measurements.

    Per-model claims are expanded for each of ``models``; claims whose measurement
    is absent for a model (a condition that was not run) are left out rather than
    reported as failures. Untestable claims always appear.
    """
    rows: list[LedgerRow] = []
    for claim in claims or CLAIMS:
        targets = models if claim.per_model else [""]
        for model in targets:
            key = claim.metric.format(model=model)
            m = measurements.get(key)
            if claim.rule.kind != "untestable" and m is None:
                continue
            if not claim.per_model and any(
                (k.split("/")[0] not in models) for k in [key, claim.other or key] if k != "-"
            ):
                continue
            rule = claim.rule
            paper = claim.paper
            if model in claim.paper_values:
                value = claim.paper_values[model]
                rule = Rule(rule.kind, value, rule.high, rule.tol, rule.factor, rule.reason)
                paper = paper.format(row=PAPER_ROW.get(model, model), value=value)
            other = measurements.get(claim.other.format(model=model)) if claim.other else None
            if rule.kind == "near" and rule.value is None:
                if other is None or not math.isfinite(other.value):
                    continue
                # "keeps the comparison's value": the band is centred on the comparison.
                rule = Rule("near", other.value, None, rule.tol)
            verdict, why = apply_rule(rule, m, other)
            paper_verdict = verdict
            controls_text, control_values = "", cast(dict[str, Any], {})
            if claim.controls is not None:
                verdict, why, controls_text, control_values = judge_controls(
                    claim.controls, model, rule, verdict, why, measurements
                )
            describe = rule.describe()
            if claim.controls is not None:
                describe += "; " + describe_controls(claim.controls)
            if claim.other:
                describe += f"; comparison: {claim.other.format(model=model)} = {_fmt_est(other)}"
            rows.append(
                LedgerRow(
                    id=claim.id,
                    model=model or "—",
                    source=claim.source,
                    claim=claim.statement,
                    paper=paper,
                    measured=_fmt_est(m) if claim.rule.kind != "untestable" else "—",
                    value=json_safe(m.value) if m else None,
                    low=json_safe(m.low) if m else None,
                    high=json_safe(m.high) if m else None,
                    n=m.n if m else 0,
                    verdict=verdict,
                    rule=describe,
                    why=why,
                    metric=key,
                    paper_verdict=paper_verdict if claim.controls is not None else None,
                    controls=controls_text,
                    control_values=control_values,
                )
            )
    return rows


__all__ = [
    "CLAIMS",
    "DEFINITIONS",
    "NEAR_TOL",
    "PAPER_ROW",
    "TABLE1",
    "TABLE1_MEDIANS",
    "TABLE5",
    "Claim",
    "Controls",
    "LedgerRow",
    "describe_controls",
    "evaluate",
    "inconsistencies",
    "judge_controls",
    "table1_consistency",
    "table5_sample_size",
]
