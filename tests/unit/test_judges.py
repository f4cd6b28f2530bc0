"""Unit tests for ppmech.steering.judges.base: score parsing, the registry and the embedding judge."""

from __future__ import annotations

import json

import pytest

from ppmech.errors import PPMechError
from ppmech.steering.judges.base import RUBRIC, Judge, JudgeItem, format_item, parse_score
from ppmech.steering.judges.embedding import EmbeddingJudge
from ppmech.steering.judges.openai import OpenAIJudge
from ppmech.steering.judges.registry import make_judge


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Score: 7", 7.0),
        ("score = 7/10", 7.0),
        ("7", 7.0),
        ("**8**", 8.0),
        ("I'd give it 6 out of 10", 6.0),
        ("Score: 10", 10.0),
        ("Score: 1", 1.0),
        ("score: 7.5", 7.5),
        ("**Score:** 9", 9.0),
        ("Final score is 4.", 4.0),
        ("8/10", 8.0),
        ("  5\n", 5.0),
        ("The tokens 1, 2 and 3 fit well; tokens 4-9 are odd.\nScore: 3", 3.0),
        ("Score: 2\nOn reflection, score: 5", 5.0),
        ("On a 1-10 scale, this deserves 6.", 6.0),
        ("Rating on a 1 to 10 scale: 8", 8.0),
        ("Score: 6/10 (tokens 3 and 7 are off-topic)", 6.0),
    ],
)
def test_parse_score_finds_the_rating(text: str, expected: float) -> None:
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no number here",
        "Score: N",
        "Score: 0",
        "Score: 11",
        "Score: -3",
        "42",
        "0",
        "12 out of 10",
        "Tokens 2 and 5 are good",  # ambiguous: two different bare numbers
    ],
)
def test_parse_score_missing(text: str) -> None:
    assert parse_score(text) is None


def test_explicit_score_line_wins_over_other_numbers() -> None:
    text = "Token 2 (' France') is great, token 9 is **3** out of place.\nScore: 7"
    assert parse_score(text) == 7.0


def test_out_of_range_explicit_score_is_missing_not_clipped() -> None:
    assert parse_score("Tokens 3 and 4 ... Score: 15") is None


def test_rubric_asks_for_score_line() -> None:
    assert "Score: N" in RUBRIC
    assert "1 to 10" in RUBRIC


def test_format_item_shows_leading_spaces() -> None:
    text = format_item(JudgeItem(context="The capital of France is", tokens=[" Paris", "Lyon"]))
    assert "The capital of France is" in text
    assert '1. " Paris"' in text
    assert '2. "Lyon"' in text


def test_make_judge_builds_known_judges() -> None:
    judge = make_judge("openai", base_url="http://127.0.0.1:9/v1", model="m")
    assert isinstance(judge, OpenAIJudge)
    assert isinstance(judge, Judge)
    assert judge.describe()["model"] == "m"
    emb = make_judge("embedding", lo=0.1, hi=0.6)
    assert isinstance(emb, EmbeddingJudge)
    assert emb.describe()["lo"] == 0.1
    json.dumps(emb.describe())
    json.dumps(judge.describe())


def test_make_judge_unknown_name_lists_known_names() -> None:
    with pytest.raises(PPMechError) as info:
        make_judge("gpt-judge")
    message = info.value.one_line()
    for name in ("openai", "embedding", "reference-lm"):
        assert name in message


def test_make_judge_bad_option_is_user_error() -> None:
    with pytest.raises(PPMechError, match="options"):
        make_judge("openai", base_url="http://x/v1", model="m", colour="blue")
    with pytest.raises(PPMechError):
        make_judge("openai", model="m")  # base_url missing


def test_make_judge_reference_lm_is_user_error_or_judge() -> None:
    try:
        judge = make_judge("reference-lm")
    except PPMechError as exc:
        assert "reference-lm" in exc.one_line()
    except TypeError:
        pass  # exists but needs options we do not know here
    else:
        assert judge.name


def test_openai_judge_rejects_bad_url() -> None:
    with pytest.raises(PPMechError, match="http"):
        OpenAIJudge(base_url="127.0.0.1:8000", model="m")


def test_embedding_judge_rejects_bad_range() -> None:
    with pytest.raises(PPMechError, match="hi > lo"):
        EmbeddingJudge(lo=0.5, hi=0.5)


def test_embedding_map_cosine() -> None:
    judge = EmbeddingJudge(lo=0.0, hi=0.5)
    assert judge.map_cosine(-1.0) == 1.0
    assert judge.map_cosine(0.0) == 1.0
    assert judge.map_cosine(0.25) == pytest.approx(5.5)
    assert judge.map_cosine(0.5) == 10.0
    assert judge.map_cosine(1.0) == 10.0


CONTEXT = (
    "Paris is the capital and most populous city of France. Situated on the Seine River, "
    "in the north of the country, it is at the heart of the Île-de-France region. "
    "Many tourists visit the city of"
)


@pytest.mark.slow
def test_embedding_judge_prefers_coherent_tokens() -> None:
    judge = EmbeddingJudge()
    coherent = JudgeItem(
        CONTEXT,
        [
            " Paris",
            " France",
            " city",
            " lights",
            " Lyon",
            " culture",
            " art",
            " the",
            " love",
            " fashion",
        ],
    )
    garbage = JudgeItem(CONTEXT, [" qz", "##", "&&", " 7734", " blorp", " xyl", ")]", " ;;", " ¬", "ʼ"])
    unrelated = JudgeItem(
        CONTEXT,
        [
            " banana",
            " carburetor",
            " spleen",
            " tax",
            " violin",
            " zebra",
            " glacier",
            " mortgage",
            " pixel",
            " quantum",
        ],
    )
    empty = JudgeItem(CONTEXT, [])
    scores = judge.score([coherent, garbage, unrelated, empty])
    assert len(scores) == 4
    good, bad, off, missing = scores
    for s in (good, bad, off):
        assert s.score is not None
        assert 1.0 <= s.score <= 10.0
        assert s.error is None
        assert "c=" in s.raw
    assert good.score is not None and bad.score is not None and off.score is not None
    assert good.score > bad.score + 2
    assert good.score > off.score + 2
    assert missing.score is None and missing.error
    # The model is loaded once and reused.
    model = judge._model
    assert judge.score([coherent])[0].score == pytest.approx(good.score)
    assert judge._model is model
