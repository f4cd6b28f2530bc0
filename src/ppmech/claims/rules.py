"""Verdict rules of the claims ledger, as data, and the engine that applies them.

Verdicts are ``supported``, ``not supported`` or ``inconclusive`` (and, for
conserved-type claims whose controls fail, ``holds only in these units`` or
``low variance without compensation``; see :mod:`ppmech.claims.ledger`). Every rule uses
the 95% CI of the measured figure (trajectory bootstrap), never just the point:

* ``below x``: supported if CI high < x; not supported if CI low >= x.
* ``above x``: supported if CI low > x; not supported if CI high <= x.
* ``between a b``: supported if the CI lies inside [a, b]; not supported if it lies outside.
* ``near x ± tol``: supported if the CI overlaps [x(1-tol), x(1+tol)]; otherwise not supported.
* ``less than k·other`` / ``greater than k·other``: compares two CIs; supported if
  they are separated in the claimed direction, not supported if separated the
  other way, inconclusive if they overlap.
* ``point below/above other``: for tables without CIs (per-layer), on point estimates.
* ``p below x``: a permutation p-value (no CI; its error is Monte Carlo only):
  supported if p < x, else not supported.
* ``untestable``: inconclusive, with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from ppmech.statistics import Estimate

Verdict = Literal[
    "supported",
    "not supported",
    "inconclusive",
    "holds only in these units",
    "low variance without compensation",
]
#: Every verdict, in the order tables count them. The last two are the controls' verdicts of
#: conserved-type claims (:class:`ppmech.claims.catalogue.Controls`): the paper's rule passes
#: but a control fails.
VERDICTS: tuple[Verdict, ...] = (
    "supported",
    "not supported",
    "inconclusive",
    "holds only in these units",
    "low variance without compensation",
)
RuleKind = Literal[
    "below",
    "above",
    "between",
    "near",
    "less_than",
    "greater_than",
    "point_less_than",
    "p_below",
    "untestable",
]


#: The rule kinds, read off :data:`RuleKind` (one list).
RULE_KINDS: frozenset[str] = frozenset(get_args(RuleKind))


@dataclass(frozen=True)
class Rule:
    """A verdict rule; see the module docstring for each kind."""

    kind: RuleKind
    value: float | None = None
    high: float | None = None
    tol: float | None = None
    factor: float = 1.0
    reason: str = ""

    def describe(self) -> str:
        k = self.kind
        if k == "below":
            return f"supported if 95% CI < {self.value:g}; not if CI low >= {self.value:g}; else inconclusive"
        if k == "above":
            return (
                f"supported if 95% CI > {self.value:g}; not if CI high <= {self.value:g}; else inconclusive"
            )
        if k == "between":
            return (
                f"supported if 95% CI inside [{self.value:g}, {self.high:g}]; not if entirely outside; "
                "else inconclusive"
            )
        if k == "near":
            assert self.value is not None and self.tol is not None
            lo, hi = _band(self.value, self.tol)
            return f"supported if 95% CI overlaps [{lo:.4g}, {hi:.4g}] (paper ± {self.tol:.0%}); else not"
        if k in ("less_than", "greater_than"):
            word = "below" if k == "less_than" else "above"
            f = "" if self.factor == 1 else f"{self.factor:g} × "
            return (
                f"supported if 95% CI lies entirely {word} {f}the comparison's CI; not if entirely on the "
                "other side; inconclusive if they overlap"
            )
        if k == "point_less_than":
            return "point estimates: supported if measured < comparison, else not supported"
        if k == "p_below":
            return f"one-sided permutation p: supported if p < {self.value:g}, else not supported"
        return f"untestable here: {self.reason}"


def _band(value: float, tol: float) -> tuple[float, float]:
    if value == 0:
        return -tol, tol
    a, b = value * (1 - tol), value * (1 + tol)
    return min(a, b), max(a, b)


def apply_rule(rule: Rule, m: Estimate | None, other: Estimate | None = None) -> tuple[Verdict, str]:
    """Apply ``rule`` to a measured estimate (and a comparison one); returns (verdict, why)."""
    if rule.kind == "untestable":
        return "inconclusive", rule.reason
    if m is None or not math.isfinite(m.value):
        return "inconclusive", "not measured"
    if rule.kind == "point_less_than":
        if other is None or not math.isfinite(other.value):
            return "inconclusive", "comparison not measured"
        ok = m.value < other.value
        return ("supported" if ok else "not supported"), f"{m.value:.4g} vs {other.value:.4g}"
    if rule.kind == "p_below":
        assert rule.value is not None
        if m.value < rule.value:
            return "supported", f"p = {m.value:.4g} < {rule.value:g}"
        return "not supported", f"p = {m.value:.4g} >= {rule.value:g}"
    if not m.has_ci:
        return "inconclusive", "no confidence interval"
    lo, hi = m.low, m.high
    if rule.kind == "below":
        assert rule.value is not None
        if hi < rule.value:
            return "supported", f"CI high {hi:.4g} < {rule.value:g}"
        if lo >= rule.value:
            return "not supported", f"CI low {lo:.4g} >= {rule.value:g}"
        return "inconclusive", "CI straddles the threshold"
    if rule.kind == "above":
        assert rule.value is not None
        if lo > rule.value:
            return "supported", f"CI low {lo:.4g} > {rule.value:g}"
        if hi <= rule.value:
            return "not supported", f"CI high {hi:.4g} <= {rule.value:g}"
        return "inconclusive", "CI straddles the threshold"
    if rule.kind == "between":
        assert rule.value is not None and rule.high is not None
        if rule.value <= lo and hi <= rule.high:
            return "supported", "CI inside the range"
        if hi < rule.value or lo > rule.high:
            return "not supported", "CI outside the range"
        return "inconclusive", "CI crosses the range's edge"
    if rule.kind == "near":
        assert rule.value is not None and rule.tol is not None
        a, b = _band(rule.value, rule.tol)
        if hi >= a and lo <= b:
            return "supported", "CI overlaps the paper's band"
        return "not supported", f"CI [{lo:.4g}, {hi:.4g}] misses [{a:.4g}, {b:.4g}]"
    if rule.kind in ("less_than", "greater_than"):
        if other is None or not other.has_ci:
            return "inconclusive", "comparison not measured"
        olo, ohi = rule.factor * other.low, rule.factor * other.high
        olo, ohi = min(olo, ohi), max(olo, ohi)
        below = hi < olo
        above = lo > ohi
        if rule.kind == "less_than":
            if below:
                return "supported", f"{hi:.4g} < {olo:.4g}"
            if above:
                return "not supported", f"{lo:.4g} > {ohi:.4g} (opposite direction)"
        else:
            if above:
                return "supported", f"{lo:.4g} > {ohi:.4g}"
            if below:
                return "not supported", f"{hi:.4g} < {olo:.4g} (opposite direction)"
        return "inconclusive", "CIs overlap"
    raise ValueError(f"unknown rule kind {rule.kind}")
