"""The claims catalogue: every quantitative claim of the paper (and the ledger's own
"beyond the paper" checks), as keyword data validated on load.

Each :class:`Claim` names its source table or section, the paper's figure, the
measurement that tests it and a :class:`~ppmech.claims.rules.Rule` decided *before*
any measurement. Conserved-type claims ("H is nearly conserved", "CV below 13%",
"random weights conserve more tightly") carry :class:`Controls`: their verdict is
"supported" only when the paper's criterion holds *and* the controls pass (see
:func:`ppmech.claims.ledger.evaluate` and docs/claims.md).

Measurement keys are ``"{model}/{condition}/{metric}"``, e.g.
``smollm2-135m/pretrained/global_cv``; a claim's templates use ``{model}``.
The null models' rows come from the null models themselves (:func:`null_claims`).
"""

from __future__ import annotations

from ppmech.claims.catalogue.claim import (
    NEAR_TOL,
    THRESHOLD,
    Claim,
    Controls,
    cv_controls,
    null_claims,
    validate,
)
from ppmech.claims.catalogue.questions import OPEN_QUESTIONS, beyond_the_paper
from ppmech.claims.catalogue.tables import PAPER_CLAIMS

CLAIMS: list[Claim] = [*PAPER_CLAIMS, *OPEN_QUESTIONS, *beyond_the_paper()]
"""Every claim, in ledger order: the paper's, the open questions, then beyond the paper."""

validate(CLAIMS)

__all__ = [
    "CLAIMS",
    "NEAR_TOL",
    "OPEN_QUESTIONS",
    "PAPER_CLAIMS",
    "THRESHOLD",
    "Claim",
    "Controls",
    "beyond_the_paper",
    "cv_controls",
    "null_claims",
    "validate",
]
