"""Table-3 statistics and the reference judge's mapping, by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ppmech.errors import PPMechError
from ppmech.steering.evaluation import SteeringEvalConfig, paired_statistics, table3_frame
from ppmech.steering.judges.reference import ReferenceLMJudge, default_reference


def test_paired_statistics_by_hand() -> None:
    natural = [4.0, 5.0, 6.0, 5.0]
    steered = [6.0, 6.0, 9.0, 7.0]
    s = paired_statistics(natural, steered)
    diff = np.array([2.0, 1.0, 3.0, 2.0])
    sd_d = math.sqrt(((diff - 2.0) ** 2).sum() / 3)  # sqrt(2/3)
    assert s["n_pairs"] == 4 and s["n_missing_pairs"] == 0
    assert s["natural_mean"] == pytest.approx(5.0)
    assert s["natural_sd"] == pytest.approx(math.sqrt(2 / 3))
    assert s["steered_mean"] == pytest.approx(7.0)
    assert s["steered_sd"] == pytest.approx(math.sqrt(6 / 3))
    assert s["cohens_dz"] == pytest.approx(2.0 / sd_d)
    assert s["cohens_dav"] == pytest.approx(2.0 / math.sqrt((2 / 3 + 2.0) / 2))
    t = 2.0 / (sd_d / 2.0)
    assert s["t"] == pytest.approx(t)
    # Two-sided p from Student's t with 3 degrees of freedom: t = 4.899 -> p = 0.01628.
    assert s["p_value"] == pytest.approx(0.016276, abs=2e-5)


def test_missing_scores_are_excluded_pairwise_and_counted() -> None:
    s = paired_statistics([4.0, None, 6.0, 5.0, float("nan")], [6.0, 7.0, None, 7.0, 3.0])
    assert s["n_items"] == 5
    assert s["n_pairs"] == 2
    assert s["n_missing_pairs"] == 3
    assert s["natural_mean"] == pytest.approx(4.5)
    assert s["steered_mean"] == pytest.approx(6.5)
    # Equal differences: no spread, so t, p and d_z are undefined, not a number.
    assert math.isnan(s["p_value"]) and math.isnan(s["cohens_dz"])


def test_table3_frame_formats_row() -> None:
    s = paired_statistics([1.0, 2.0, 3.0], [2.0, 4.0, 5.0])
    s.update(target_in_natural_topk=1, target_in_steered_topk=3)
    row = table3_frame("m", s).iloc[0]
    assert row["natural mean ± sd"] == "2.00 ± 1.00"
    assert row["target in steered top-10"] == "3/3"
    assert row["missing pairs"] == 0


def test_reference_mapping_is_documented_affine_and_clipped() -> None:
    judge = ReferenceLMJudge(lm=None)
    assert judge.map_logprob(0.0) == 10.0
    assert judge.map_logprob(-20.0) == 1.0
    assert judge.map_logprob(-10.0) == pytest.approx(5.5)
    assert judge.map_logprob(-50.0) == 1.0 and judge.map_logprob(3.0) == 10.0
    values = [judge.map_logprob(m) for m in np.linspace(-30, 5, 50)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    with pytest.raises(PPMechError, match="hi > lo"):
        ReferenceLMJudge(lo=-1.0, hi=-2.0)


def test_default_reference_is_the_other_embedded_model() -> None:
    assert default_reference("smollm2-135m") == "gemma3-270m"
    assert default_reference("gemma3-270m") == "smollm2-135m"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"eta": 1.0}, "`eta`"), ({"targets": "oracle"}, "`targets`"), ({"top_k": 0}, "`top_k`")],
)
def test_eval_config_refuses_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(PPMechError, match=match):
        SteeringEvalConfig(**kwargs)


def test_a_judge_that_rates_nothing_is_an_error_quoting_its_first_reply() -> None:
    """Issue 9: a judge answering non-JSON left evaluate-steering at exit 0 with N = 0."""
    from ppmech.errors import PPMechError
    from ppmech.steering.evaluation import judge_failures
    from ppmech.steering.judges.base import JudgeScore

    bad = JudgeScore(score=None, raw="<html>502 Bad Gateway</html>", error="malformed reply body")
    with pytest.raises(PPMechError) as exc:
        judge_failures([(bad, bad), (bad, bad)], "openai")
    assert "no usable rating for any of the 4 lists (malformed reply body)" in exc.value.problem
    assert "'<html>502 Bad Gateway</html>'" in exc.value.problem
    good = JudgeScore(score=6.0, raw="Score: 6")
    refused = JudgeScore(score=None, raw="I would rather not.", error="no score in reply")
    counts = judge_failures([(good, refused), (good, good), (bad, good)], "openai")
    assert counts["missing"] == 2 and counts["ratings"] == 6
    assert counts["reasons"] == {"no score in reply": 1, "malformed reply body": 1}
    assert counts["first_reply"] == "I would rather not."
    assert judge_failures([(good, good)], "openai")["missing"] == 0
