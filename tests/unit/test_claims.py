"""The claims ledger: rules, evaluation and rendering, on constructed measurements."""

from __future__ import annotations

import json

import pytest

from ppmech.claims.ledger import (
    CLAIMS,
    DEFINITIONS,
    TABLE1,
    evaluate,
    inconsistencies,
    table1_consistency,
    table5_sample_size,
)
from ppmech.claims.render import controls_summary, ledger_json, render_markdown
from ppmech.claims.rules import Rule, apply_rule
from ppmech.statistics import Estimate


def est(value: float, low: float, high: float) -> Estimate:
    return Estimate(value, low, high, n=100)


@pytest.mark.parametrize(
    ("rule", "m", "verdict"),
    [
        (Rule("below", 0.13), est(0.1, 0.09, 0.12), "supported"),
        (Rule("below", 0.13), est(0.2, 0.13, 0.25), "not supported"),
        (Rule("below", 0.13), est(0.13, 0.12, 0.14), "inconclusive"),
        (Rule("above", 0.5), est(0.7, 0.6, 0.8), "supported"),
        (Rule("above", 0.5), est(0.3, 0.2, 0.5), "not supported"),
        (Rule("above", 0.5), est(0.5, 0.4, 0.6), "inconclusive"),
        (Rule("between", 8, 10), est(9, 8.5, 9.5), "supported"),
        (Rule("between", 8, 10), est(7, 6.5, 7.5), "not supported"),
        (Rule("between", 8, 10), est(8, 7.5, 8.5), "inconclusive"),
        (Rule("near", 11.8, tol=0.25), est(9.5, 8.0, 9.0), "supported"),  # band [8.85, 14.75]
        (Rule("near", 11.8, tol=0.25), est(7.0, 6.0, 8.0), "not supported"),
        (Rule("near", 0.0, tol=0.01), est(0.005, -0.02, 0.03), "supported"),
        (Rule("untestable", reason="no data"), None, "inconclusive"),
    ],
)
def test_single_estimate_rules(rule: Rule, m: Estimate | None, verdict: str) -> None:
    assert apply_rule(rule, m)[0] == verdict


def test_missing_ci_or_measurement_is_inconclusive() -> None:
    assert apply_rule(Rule("below", 1.0), Estimate(0.5))[0] == "inconclusive"
    assert apply_rule(Rule("below", 1.0), None) == ("inconclusive", "not measured")


def test_comparative_rules() -> None:
    low, high = est(0.02, 0.01, 0.03), est(0.1, 0.08, 0.12)
    assert apply_rule(Rule("less_than"), low, high)[0] == "supported"
    assert apply_rule(Rule("less_than"), high, low)[0] == "not supported"
    assert apply_rule(Rule("greater_than"), high, low)[0] == "supported"
    assert apply_rule(Rule("less_than"), low, est(0.03, 0.025, 0.05))[0] == "inconclusive"
    # "3x smaller": 0.02 [0.01, 0.03] vs one third of [0.08, 0.12] = [0.027, 0.04] overlaps.
    assert apply_rule(Rule("less_than", factor=1 / 3), low, high)[0] == "inconclusive"
    assert apply_rule(Rule("less_than", factor=1 / 3), est(0.01, 0.005, 0.02), high)[0] == "supported"
    assert apply_rule(Rule("point_less_than"), Estimate(0.1), Estimate(0.2))[0] == "supported"
    assert apply_rule(Rule("point_less_than"), Estimate(0.3), Estimate(0.2))[0] == "not supported"


def test_every_rule_describes_itself_with_its_own_numbers() -> None:
    """The ledger's "rule" column must state the thresholds the verdict used."""
    for claim in CLAIMS:
        rule = claim.rule
        if rule.kind == "near" and rule.value is None:
            rule = Rule("near", 1.0, tol=rule.tol)
        text = rule.describe()
        if rule.kind in ("below", "above", "between"):
            assert f"{rule.value:g}" in text, (claim.id, text)
            claimed = {
                "below": f"CI < {rule.value:g}",
                "above": f"CI > {rule.value:g}",
                "between": "inside [",
            }
            assert claimed[rule.kind] in text, (claim.id, text)
        if rule.kind == "between":
            assert f"{rule.high:g}" in text, (claim.id, text)
        if rule.kind == "near":
            assert rule.value is not None and rule.tol is not None
            lo, hi = sorted((rule.value * (1 - rule.tol), rule.value * (1 + rule.tol)))
            assert f"[{lo:.4g}, {hi:.4g}]" in text and f"{rule.tol:.0%}" in text, (claim.id, text)
        if rule.kind in ("less_than", "greater_than"):
            assert ("below" if rule.kind == "less_than" else "above") in text, (claim.id, text)
            assert (f"{rule.factor:g} ×" in text) == (rule.factor != 1), (claim.id, text)
        if rule.kind == "untestable":
            assert rule.reason and rule.reason in text, (claim.id, text)
    # The numbers change with the rule: a different threshold gives a different description.
    assert Rule("below", 0.1).describe() != Rule("below", 0.2).describe()


def test_claim_ids_are_unique_and_cover_the_issue() -> None:
    ids = [c.id for c in CLAIMS]
    assert len(ids) == len(set(ids))
    sources = " ".join(c.source for c in CLAIMS)
    for needle in (
        "Table 1",
        "Table 2",
        "Table 4",
        "Table 5",
        "§C.5",
        "Appendix F",
        "Prop. C.1",
        "Remark D.1",
    ):
        assert needle in sources


def test_evaluate_expands_per_model_and_uses_table1_rows() -> None:
    m = {
        "smollm2-135m/pretrained/global_cv": est(0.12, 0.11, 0.13),
        "smollm2-135m/random/global_cv": est(0.03, 0.025, 0.035),
    }
    rows = {(r.id, r.model): r for r in evaluate(m, ["smollm2-135m"])}
    row = rows[("T1-cv-pre", "smollm2-135m")]
    assert row.paper == "SmolLM2-135M: 0.117"
    assert row.verdict == "supported"
    # KF2 passes the paper's rule but is conserved-type: with no controls measured it stays undecided.
    assert rows[("KF2", "smollm2-135m")].paper_verdict == "supported"
    assert rows[("KF2", "smollm2-135m")].verdict == "inconclusive"
    assert rows[("KF1-pre", "smollm2-135m")].verdict == "inconclusive"  # CI high 0.13 is not < 0.13
    # Claims whose measurement was not made are left out; untestable ones stay.
    assert ("C5-pre", "smollm2-135m") not in rows
    assert rows[("T5", "—")].verdict == "inconclusive"
    # A cross-model claim needs both models.
    assert ("S43-gemma", "—") not in rows


def test_near_rule_centred_on_the_comparison() -> None:
    m = {
        "smollm2-135m/pretrained-bf16/global_cv": est(0.125, 0.12, 0.13),
        "smollm2-135m/pretrained-f32-same/global_cv": est(0.12, 0.11, 0.13),
    }
    rows = {r.id: r for r in evaluate(m, ["smollm2-135m"])}
    assert rows["OQ-bf16"].verdict == "supported"
    m["smollm2-135m/pretrained-bf16/global_cv"] = est(0.3, 0.28, 0.32)
    rows = {r.id: r for r in evaluate(m, ["smollm2-135m"])}
    assert rows["OQ-bf16"].verdict == "not supported"


def test_table1_internal_consistency_is_computed_from_its_rows() -> None:
    notes = table1_consistency()
    # The pretrained median line (0.094) does not match its 10 rows (median 0.0975).
    assert any("0.0975" in n for n in notes)
    assert any("19 rows" in n for n in notes)
    assert len(TABLE1) == 19


def test_table5_implies_three_models() -> None:
    assert table5_sample_size() == {"Params vs. Energy Drift": 3, "Params vs. Efficiency": 3}


def test_ledger_states_definitions_and_inconsistencies() -> None:
    text = " ".join(inconsistencies())
    for needle in ("K/V", "Table 4", "E_t = K_t + V_t", "Avg. Traj. CV", "Thm D.1", "§B.3"):
        assert needle in text
    m = {"smollm2-135m/pretrained/global_cv": est(0.12, 0.11, 0.13)}
    rows = evaluate(m, ["smollm2-135m"])
    md = render_markdown(rows, {"command": "ppmech verify", "models": ["smollm2-135m"]}, [("Extra", "body")])
    assert "## Definitions used" in md and "## Ambiguities and inconsistencies" in md and "## Extra" in md
    assert "| T1-cv-pre | smollm2-135m |" in md
    payload = ledger_json(rows, {"models": ["smollm2-135m"]}, m)
    text = json.dumps(payload, allow_nan=False)
    assert json.loads(text)["definitions"] == DEFINITIONS
    assert payload["verdicts"]["inconclusive"] >= 3


def test_p_below_rule_reads_the_point_value() -> None:
    assert apply_rule(Rule("p_below", 0.05), Estimate(0.001, n=100))[0] == "supported"
    assert apply_rule(Rule("p_below", 0.05), Estimate(0.05, n=100))[0] == "not supported"
    assert apply_rule(Rule("p_below", 0.05), None)[0] == "inconclusive"
    assert "p < 0.05" in Rule("p_below", 0.05).describe()


def _controls(flat: bool, survives_tokens: bool, scale_cv: tuple[float, float, float]) -> dict[str, Estimate]:
    pre = "smollm2-135m/pretrained"
    r = est(0.6, 0.55, 0.65) if flat else est(1.0, 0.97, 1.03)
    r_res = est(0.7, 0.65, 0.75) if survives_tokens else est(1.05, 1.01, 1.1)
    return {
        f"{pre}/null_R": r,
        f"{pre}/null_shuffle_p": Estimate(0.001 if flat else 0.4, n=100),
        f"{pre}/null_scale_max_cv": est(*scale_cv),
        f"{pre}/null_resid_R": r_res,
        f"{pre}/null_resid_shuffle_p": Estimate(0.001 if survives_tokens else 0.3, n=100),
        f"{pre}/null_r2_token": est(0.2, 0.1, 0.3),
        f"{pre}/null_r2_position": est(-0.01, -0.03, 0.0),
        f"{pre}/curvature_deg": est(80.0, 78.0, 82.0),
        "smollm2-135m/random/curvature_deg": est(95.0, 93.0, 97.0),
        "smollm2-135m/pretrained-layers/final_cv": Estimate(0.1),
        "smollm2-135m/pretrained-layers/min_other_cv": Estimate(0.2),
    }


def test_beyond_the_paper_rows_have_their_own_heading_and_a_plain_summary() -> None:
    m = _controls(flat=True, survives_tokens=False, scale_cv=(0.15, 0.14, 0.16))
    rows = {(r.id, r.model): r for r in evaluate(m, ["smollm2-135m"])}
    assert rows[("N-compensate-pre", "smollm2-135m")].verdict == "supported"
    assert rows[("N-shuffle-pre", "smollm2-135m")].verdict == "supported"
    assert rows[("N-scale-pre", "smollm2-135m")].verdict == "not supported"
    assert rows[("N-tokpos-pre", "smollm2-135m")].verdict == "not supported"
    assert rows[("N-token-r2-pre", "smollm2-135m")].verdict == "not supported"
    assert rows[("N-curvature-gen", "smollm2-135m")].verdict == "supported"
    md = render_markdown(list(rows.values()), {"models": ["smollm2-135m"]})
    paper, beyond = md.split("## Beyond the paper: null models and confounder controls")
    assert "| N-shuffle-pre |" not in paper and "| N-shuffle-pre |" in beyond
    assert "| X-layers |" not in paper and "| X-layers |" in beyond
    summary = controls_summary(list(rows.values()))
    assert len(summary) == 1
    assert "H is flatter than its unpaired null" in summary[0] and "and K and V compensate" in summary[0]
    assert "does not survive rescaling h" in summary[0]
    assert "the result does not survive" in summary[0]
    not_flat = controls_summary(evaluate(_controls(False, False, (0.1, 0.09, 0.11)), ["smollm2-135m"]))
    assert "H is not flatter" in not_flat[0] and "survives rescaling" in not_flat[0]
    assert "K and V do not compensate" in not_flat[0]
    # Paired (p small) but R not below 1: both halves are said.
    mixed = _controls(flat=True, survives_tokens=True, scale_cv=(0.1, 0.09, 0.11))
    mixed["smollm2-135m/pretrained/null_R"] = est(1.0, 0.98, 1.02)
    line = controls_summary(evaluate(mixed, ["smollm2-135m"]))[0]
    assert "H is flatter than its unpaired null" in line and "but K and V do not compensate overall" in line
    assert "they still do not compensate" in not_flat[0]


def _conserved(
    cv: tuple[float, float, float],
    r: tuple[float, float, float],
    band: tuple[float, float],
    cv_half: tuple[float, float, float],
    cv_two: tuple[float, float, float] = (0.08, 0.07, 0.09),
) -> dict[str, Estimate]:
    """Measurements for KF1-pre and its controls on one pretrained run."""
    pre = "smollm2-135m/pretrained"
    return {
        f"{pre}/global_cv": est(*cv),
        f"{pre}/null_R": est(*r),
        f"{pre}/null_shuffle_null_R": Estimate(1.0, band[0], band[1], n=100),
        f"{pre}/null_shuffle_null_cv": Estimate(0.126, 0.125, 0.127, n=100),
        f"{pre}/null_scale_c_min": est(0.7, 0.6, 0.8),
        f"{pre}/null_scale_cv_c0.5": est(*cv_half),
        f"{pre}/null_scale_cv_c2": est(*cv_two),
    }


@pytest.mark.parametrize(
    ("r", "band", "cv_half", "verdict"),
    [
        # Compensation below the shuffle band and below 13% at c = 0.5 and 2: supported.
        ((0.86, 0.82, 0.89), (0.99, 1.01), (0.12, 0.11, 0.125), "supported"),
        # Passes at c = 1 but not at c = 0.5: the paper's threshold is a choice of units.
        ((0.86, 0.82, 0.89), (0.99, 1.01), (0.145, 0.14, 0.15), "holds only in these units"),
        # R at 1: H is flat because K and V are each flat, not because they compensate.
        ((1.0, 0.96, 1.04), (0.99, 1.01), (0.12, 0.11, 0.125), "low variance without compensation"),
        # R below 1 but inside its shuffle band (the band itself lies below 1).
        ((0.9, 0.88, 0.92), (0.87, 0.95), (0.12, 0.11, 0.125), "low variance without compensation"),
        # A control must be shown: a CI that straddles 13% at c = 0.5 does not show it.
        ((0.86, 0.82, 0.89), (0.99, 1.01), (0.128, 0.12, 0.135), "holds only in these units"),
        # Nor does an R whose CI reaches the band (Gemma's 0.999 [0.92, 1.05]).
        ((0.999, 0.92, 1.05), (0.99, 1.01), (0.12, 0.11, 0.125), "low variance without compensation"),
    ],
)
def test_conserved_type_verdicts_include_their_controls(
    r: tuple[float, float, float],
    band: tuple[float, float],
    cv_half: tuple[float, float, float],
    verdict: str,
) -> None:
    m = _conserved((0.117, 0.113, 0.12), r, band, cv_half)
    row = {(x.id, x.model): x for x in evaluate(m, ["smollm2-135m"])}[("KF1-pre", "smollm2-135m")]
    assert row.paper_verdict == "supported"
    assert row.verdict == verdict
    # The controls are shown beside the verdict, with their numbers.
    assert "vs shuffle band" in row.controls and "shuffle-null CV 0.126" in row.controls
    assert "13% holds for c > 0.7" in row.controls and "at c = 0.5" in row.controls
    assert row.control_values["run"] == "smollm2-135m/pretrained"


def test_a_failed_paper_criterion_keeps_its_verdict_and_still_shows_the_controls() -> None:
    m = _conserved((0.2, 0.19, 0.21), (0.86, 0.82, 0.89), (0.99, 1.01), (0.25, 0.24, 0.26))
    row = {(x.id, x.model): x for x in evaluate(m, ["smollm2-135m"])}[("KF1-pre", "smollm2-135m")]
    assert row.verdict == "not supported" and row.paper_verdict == "not supported"
    assert "R 0.86" in row.controls


def test_no_conserved_type_row_is_supported_while_one_of_its_controls_fails() -> None:
    """Every claim with controls, under every combination of passing and failing controls."""
    import itertools

    from ppmech.claims.catalogue import CLAIMS as ALL

    conserved = [c for c in ALL if c.controls is not None]
    assert {"KF1-pre", "KF1-rand", "KF2", "CV-E", "OQ-es", "OQ-long-window", "X-layers"} <= {
        c.id for c in conserved
    }
    good, bad = est(0.01, 0.005, 0.015), est(0.02, 0.018, 0.022)  # good < bad, CIs apart
    for claim, comp_ok, scale_ok in itertools.product(conserved, (True, False), (True, False)):
        assert claim.controls is not None
        model = "smollm2-135m"
        run = claim.controls.run.format(model=model)
        m: dict[str, Estimate] = {
            f"{run}/null_R": est(0.8, 0.75, 0.85) if comp_ok else est(1.0, 0.97, 1.03),
            f"{run}/null_shuffle_null_R": Estimate(1.0, 0.99, 1.01, n=100),
            # The paper's test passes: below 13%, or lower than the comparison.
            claim.metric.format(model=model): good,
        }
        if claim.other:
            m[claim.other.format(model=model)] = bad
        for metric, other in claim.controls.scale:
            if other:
                m[metric.format(model=model)], m[other.format(model=model)] = (
                    (good, bad) if scale_ok else (bad, good)
                )
            else:
                m[metric.format(model=model)] = good if scale_ok else est(0.5, 0.4, 0.6)
        (row,) = evaluate(m, [model], [claim])
        assert row.paper_verdict == "supported", row
        failed = (not comp_ok and claim.controls.compensation) or (not scale_ok and claim.controls.scale)
        assert (row.verdict == "supported") == (not failed), row


def test_unmeasured_controls_leave_a_passing_claim_inconclusive() -> None:
    m = {"smollm2-135m/pretrained/global_cv": est(0.117, 0.113, 0.12)}
    row = {(x.id, x.model): x for x in evaluate(m, ["smollm2-135m"])}[("KF1-pre", "smollm2-135m")]
    assert row.verdict == "inconclusive" and "not measured" in row.why


def test_every_verdict_is_counted() -> None:
    from ppmech.claims.render import verdict_counts
    from ppmech.claims.rules import VERDICTS

    m = _conserved((0.117, 0.113, 0.12), (1.0, 0.96, 1.04), (0.99, 1.01), (0.12, 0.11, 0.125))
    counts = verdict_counts(evaluate(m, ["smollm2-135m"]))
    assert set(counts) == set(VERDICTS)
    assert counts["low variance without compensation"] == 1


def test_the_catalogue_is_validated_on_load() -> None:
    from ppmech.claims.catalogue import Claim, validate

    good = Claim(
        id="x", source="Table 1", statement="s", paper="p", metric="{model}/a/b", rule=Rule("below", 1)
    )
    validate([good])
    for bad in (
        [good, good],
        [Claim(id="y", source=" ", statement="s", paper="p", metric="{model}/a/b", rule=Rule("below", 1))],
        [Claim(id="z", source="T", statement="s", paper="p", metric="{model}/a", rule=Rule("below", 1))],
        [Claim(id="w", source="T", statement="s", paper="p", metric="{model}/a/b", rule=Rule("nope", 1))],  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError):
            validate(bad)
    # Every claim names its source table or section.
    assert all(c.source.strip() for c in CLAIMS)
