"""Open questions (§4.3 and the summary's next checks, framed as "does KF1 still hold?") and the
ledger's checks beyond the paper (null models, curvature, layers)."""

from __future__ import annotations

from ppmech.claims.catalogue.claim import THRESHOLD, Claim, Controls, cv_controls, null_claims
from ppmech.claims.rules import Rule
from ppmech.nulls import UNIT_RANGE

OPEN_QUESTIONS: list[Claim] = [
    Claim(
        id="OQ-es",
        source="§4.3 open question",
        statement="Conservation (CV < 13%) holds on Spanish Wikipedia",
        paper="untested",
        metric="{model}/pretrained-wiki-es/global_cv",
        rule=Rule("below", THRESHOLD),
        controls=cv_controls("{model}/pretrained-wiki-es"),
    ),
    Claim(
        id="OQ-fr",
        source="§4.3 open question",
        statement="Conservation (CV < 13%) holds on French Wikipedia",
        paper="untested",
        metric="{model}/pretrained-wiki-fr/global_cv",
        rule=Rule("below", THRESHOLD),
        controls=cv_controls("{model}/pretrained-wiki-fr"),
    ),
    Claim(
        id="OQ-long",
        source="summary: long horizons",
        statement="Conservation (CV < 13%) holds over 500 new tokens",
        paper="untested",
        metric="{model}/pretrained-long/global_cv",
        rule=Rule("below", THRESHOLD),
        controls=cv_controls("{model}/pretrained-long"),
    ),
    Claim(
        id="OQ-long-window",
        source="summary: long horizons",
        statement="CV in the last 100-token window stays < 13%",
        paper="untested",
        metric="{model}/pretrained-long/last_window_cv",
        rule=Rule("below", THRESHOLD),
        controls=cv_controls("{model}/pretrained-long"),
    ),
    Claim(
        id="OQ-sample",
        source="open question: temperature",
        statement="Conservation (CV < 13%) holds when sampling (T = 1)",
        paper="greedy only",
        metric="{model}/pretrained-sample/global_cv",
        rule=Rule("below", THRESHOLD),
        controls=cv_controls("{model}/pretrained-sample"),
    ),
    Claim(
        id="OQ-ctx25",
        source="open question: context",
        statement="Conservation (CV < 13%) holds with 25-token contexts",
        paper="50 tokens only",
        metric="{model}/pretrained-ctx25/global_cv",
        rule=Rule("below", THRESHOLD),
        controls=cv_controls("{model}/pretrained-ctx25"),
    ),
    Claim(
        id="OQ-ctx100",
        source="open question: context",
        statement="Conservation (CV < 13%) holds with 100-token contexts",
        paper="50 tokens only",
        metric="{model}/pretrained-ctx100/global_cv",
        rule=Rule("below", THRESHOLD),
        controls=cv_controls("{model}/pretrained-ctx100"),
    ),
    Claim(
        id="OQ-bf16",
        source="open question: precision",
        statement="bfloat16 compute keeps the float32 global CV (same prompts)",
        paper="—",
        metric="{model}/pretrained-bf16/global_cv",
        rule=Rule("near", tol=0.10),
        other="{model}/pretrained-f32-same/global_cv",
    ),
]


def beyond_the_paper() -> list[Claim]:
    """The null models' rows (registry order, pretrained then random), curvature and layers."""
    return [
        *null_claims(),
        Claim(
            id="N-curvature-gen",
            source="beyond the paper: curvature",
            statement="Trained models straighten trajectories: mean angle between consecutive velocities, "
            "pretrained < random (own greedy generations)",
            paper="Hosseini & Fedorenko 2023",
            metric="{model}/pretrained/curvature_deg",
            rule=Rule("less_than"),
            other="{model}/random/curvature_deg",
        ),
        Claim(
            id="N-curvature-text",
            source="beyond the paper: curvature",
            statement="Trained models straighten trajectories: pretrained < random on the same article text, "
            "teacher-forced",
            paper="Hosseini & Fedorenko 2023",
            metric="{model}/pretrained-teacher/curvature_deg",
            rule=Rule("less_than"),
            other="{model}/random-teacher/curvature_deg",
        ),
        Claim(
            id="X-layers",
            source="beyond the paper",
            statement="Conservation is tightest at the last layer (where the paper measures)",
            paper="—",
            metric="{model}/pretrained-layers/final_cv",
            rule=Rule("point_less_than"),
            other="{model}/pretrained-layers/min_other_cv",
            # The last layer is the recorded state: the core run's controls apply; the per-layer
            # CVs are re-compared at each end of the unit range.
            controls=Controls(
                "{model}/pretrained",
                True,
                tuple(
                    (
                        f"{{model}}/pretrained-layers/final_cv_c{c:g}",
                        f"{{model}}/pretrained-layers/min_other_cv_c{c:g}",
                    )
                    for c in UNIT_RANGE
                ),
            ),
        ),
    ]
