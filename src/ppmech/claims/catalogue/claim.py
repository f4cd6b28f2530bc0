"""One claim of the ledger and the controls of a conserved-type claim, as data classes; the null
models' rows; and the validation every catalogue passes on load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from ppmech import nulls as N
from ppmech.claims.rules import RULE_KINDS, Rule, RuleKind

THRESHOLD = N.PAPER_CV_THRESHOLD
"""The paper's conservation criterion, global CV < 13% (its one home is :mod:`ppmech.nulls.scale`)."""


@dataclass(frozen=True)
class Controls:
    """The controls a conserved-type claim must pass besides the paper's criterion.

    Attributes:
        run: measurement prefix template (``"{model}/pretrained"``) of the run whose
            controls are shown in the row: R with its pairing-shuffle band, the
            shuffle-null CV and the range of ``c`` over which 13% holds.
        compensation: a claim about conservation: R's 95% CI must lie below 1 and below
            the 2.5% edge of its pairing-shuffle band (K and V actually compensate).
        scale: ``(metric, other)`` templates re-judged with the claim's own rule at each
            end of :data:`ppmech.nulls.UNIT_RANGE` (``h → c·h``, c ∈ [0.5, 2]); empty when
            the measure is unit-free (then ``scale_note`` says why).
        scale_note: why no scale check applies.
    """

    run: str
    compensation: bool = True
    scale: tuple[tuple[str, str | None], ...] = ()
    scale_note: str = ""


def cv_controls(run: str) -> Controls:
    """Controls of a "global CV of H below 13%" claim on run ``run`` (prefix template)."""
    return Controls(run, True, tuple((f"{run}/null_scale_cv_c{c:g}", None) for c in N.UNIT_RANGE))


@dataclass(frozen=True)
class Claim:
    """One testable statement of the paper.

    Attributes:
        id: stable identifier.
        source: where in the paper.
        statement: the claim in words.
        paper: the paper's figure, as printed (``{row}`` becomes the Table 1 row name).
        metric: measurement key template (``{model}`` is substituted).
        rule: the verdict rule.
        other: comparison measurement key template, for comparative rules.
        paper_values: per-model paper figure overriding ``rule.value`` (Table 1 rows).
        per_model: expand once per model (else the claim is model-free).
        controls: the controls of a conserved-type claim (:class:`Controls`), else None.
    """

    id: str
    source: str
    statement: str
    paper: str
    metric: str
    rule: Rule
    other: str | None = None
    paper_values: dict[str, float] = field(default_factory=dict)
    per_model: bool = True
    controls: Controls | None = None


def null_claims() -> list[Claim]:
    """The ledger rows of every registered null model (:func:`ppmech.nulls.registry`), per weights."""
    out = []
    for weights, tag in (("pretrained", "pre"), ("random", "rand")):
        for model in N.registry():
            for spec in model.claims:
                fill = {"weights": weights, "tag": tag, "model": "{model}"}
                out.append(
                    Claim(
                        id=spec.id.format(**fill),
                        source=spec.source.format(**fill),
                        statement=spec.statement.format(**fill),
                        paper=spec.paper.format(**fill),
                        metric=spec.metric.format(**fill),
                        rule=Rule(cast(RuleKind, spec.rule), spec.value),
                        other=spec.other.format(**fill) if spec.other else None,
                    )
                )
    return out


NEAR_TOL = 0.25
"""Relative band around a paper figure for "matches the paper" claims (decided in advance)."""


def validate(claims: list[Claim]) -> None:
    """Refuse a malformed catalogue on load: duplicate ids, unknown rule kinds, missing sources,
    templates that are neither ``"-"`` nor a ``model/condition/metric`` key."""
    seen: set[str] = set()
    for c in claims:
        if c.id in seen:
            raise ValueError(f"claim id {c.id!r} appears twice")
        seen.add(c.id)
        if not c.source.strip() or not c.statement.strip():
            raise ValueError(f"claim {c.id!r} names no source table or section")
        if c.rule.kind not in RULE_KINDS:
            raise ValueError(f"claim {c.id!r} has an unknown rule kind {c.rule.kind!r}")
        for key in (c.metric, c.other):
            if key is not None and key != "-" and key.count("/") != 2:
                raise ValueError(f"claim {c.id!r}: {key!r} is not a model/condition/metric key")
        if c.rule.kind == "untestable" and not c.rule.reason:
            raise ValueError(f"untestable claim {c.id!r} gives no reason")
