"""What "normal text" is for the monitor: windows cut from documents, and a record of them.

A calibration is only as good as the resemblance between its normal texts and the texts
it will score (issue #21: calibrated on article openings, the monitor alarmed on 12.5% of
later windows of the same kind of article at a nominal 5%). This module is the one home of

* the **window rule**: a window is ``tokens`` tokens of a document starting at its opening
  or at a sentence start (a user's paragraph starts there too, never mid-word). The text
  from that character on is tokenised afresh, as a user's text would be. Positions:

  - ``openings``: the opening of every document;
  - ``anywhere`` (the calibration default): per document, one start drawn uniformly (seeded)
    among the opening and every sentence start whose window fits in the document;
  - ``later``: the first sentence start after the document's opening window (the two windows
    do not overlap); documents without one are skipped;

* the **record** a calibration keeps of its normal text (:class:`NormalText`: corpus, split,
  positions, window length, count, where the windows started, characters per token), and
* the **check** that a scored text is far outside it (:func:`outside_normal`).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ppmech.errors import PPMechError

POSITIONS = ("anywhere", "openings", "later")

# A sentence ends at . ! or ? (closing quotes or brackets allowed), then white space.
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+")

# A scored text is "far outside" the calibration's texts beyond these factors (length) and
# this many calibration standard deviations (characters per token, a language cue).
LENGTH_FACTOR = 2.0
CHARS_PER_TOKEN_Z = 4.0


def sentence_starts(text: str) -> list[int]:
    """Character offsets where a sentence starts (after ``.``/``!``/``?`` and white space),
    followed by an upper-case letter, a digit, a quote or an opening bracket; the opening
    (offset 0) is not included."""
    out = []
    for m in _SENTENCE_END.finditer(text):
        at = m.end()
        if at < len(text) and (text[at].isupper() or text[at].isdigit() or text[at] in "\"'(\u201c["):
            out.append(at)
    return out


@dataclass(frozen=True)
class Window:
    """One normal text: ``ids`` = special prefix + ``tokens`` token ids of ``source`` from ``start_char``.

    Attributes:
        start_token: tokens of the document before the window (0 for an opening).
        n_chars: length in characters of the window's text.
    """

    source: str
    start_char: int
    start_token: int
    ids: list[int]
    n_chars: int


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def select_windows(
    documents: list[Any],
    tokenizer: Any,
    n: int,
    tokens: int,
    *,
    positions: str = "anywhere",
    seed: int = 0,
    split: str | None = None,
    offset: int = 0,
) -> list[Window]:
    """Choose ``n`` windows of ``tokens`` tokens, one per document, in a seeded order.

    Documents are taken in the order of :func:`ppmech.corpus.select_prompts` (a seeded shuffle,
    ``split`` side of :func:`ppmech.corpus.document_split`); a document *qualifies* when it has at
    least ``tokens`` tokens. ``offset`` skips that many qualifying documents first, so windows taken
    with ``offset`` = the calibration's count never come from a calibration document.

    Raises:
        PPMechError: unknown ``positions``, ``n < 1``, or too few documents.
    """
    from ppmech.corpus import document_split, special_prefix

    if positions not in POSITIONS:
        raise PPMechError(f"unknown positions '{positions}'", f"use one of {', '.join(POSITIONS)}")
    if n < 1:
        raise PPMechError(f"asked for {n} windows", "ask for at least 1")
    prefix = special_prefix(tokenizer)
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    pick = random.Random(f"windows:{seed}")  # separate stream: the document order stays select_prompts'
    qualifying = 0
    out: list[Window] = []
    for i in order:
        doc = documents[i]
        if split is not None and document_split(doc.source, doc.text) != split:
            continue
        ids = _tokens(tokenizer, doc.text)
        if len(ids) < tokens:
            continue
        qualifying += 1
        if qualifying <= offset:
            continue
        window = _window(doc, ids, tokenizer, tokens, positions, pick)
        if window is None:
            continue
        out.append(Window(doc.source, window[0], window[1], prefix + window[2], window[3]))
        if len(out) == n:
            return out
    where = f"the '{split}' part of the corpus" if split else "the corpus"
    raise PPMechError(
        f"only {len(out)} documents of {where} give a {positions} window of {tokens} tokens "
        f"(after skipping {offset}); {n} were asked for",
        "ask for fewer texts or shorter windows",
    )


def _window(
    doc: Any, ids: list[int], tokenizer: Any, tokens: int, positions: str, pick: random.Random
) -> tuple[int, int, list[int], int] | None:
    """``(start_char, start_token, ids, n_chars)`` of this document's window, or ``None``."""
    opening = (0, 0, ids[:tokens], len(tokenizer.decode(ids[:tokens])))
    if positions == "openings":
        return opening
    starts = sentence_starts(doc.text)
    if positions == "later":
        starts = [s for s in starts if s >= opening[3]]
        candidates = starts[:1]
    else:
        candidates = [0, *starts]
        pick.shuffle(candidates)
    for at in candidates:
        if at == 0:
            return opening
        rest = _tokens(tokenizer, doc.text[at:])
        if len(rest) >= tokens:
            body = rest[:tokens]
            before = len(_tokens(tokenizer, doc.text[:at]))
            return at, before, body, len(tokenizer.decode(body))
    return None


@dataclass
class NormalText:
    """What a calibration's normal texts were (stored in the calibration file).

    Attributes:
        corpus, split, positions: where the windows came from (see the module docstring).
        tokens: window length in tokens (special prefix not counted).
        count: number of texts.
        opening_fraction: share of windows that are document openings.
        start_token_median, start_token_max: where the windows started (tokens into the document).
        chars_per_token_mean, chars_per_token_std: characters per token of the windows' text
            (a cue for language and script: another language tokenises into shorter pieces).
    """

    corpus: str
    split: str
    positions: str
    tokens: int
    count: int
    opening_fraction: float
    start_token_median: float
    start_token_max: int
    chars_per_token_mean: float
    chars_per_token_std: float

    @classmethod
    def describe(
        cls, windows: list[Window], corpus: str, split: str, positions: str, tokens: int
    ) -> NormalText:
        starts = np.array([w.start_token for w in windows], dtype=np.float64)
        cpt = np.array([w.n_chars / tokens for w in windows], dtype=np.float64)
        return cls(
            corpus=corpus,
            split=split,
            positions=positions,
            tokens=tokens,
            count=len(windows),
            opening_fraction=float(np.mean(starts == 0)),
            start_token_median=float(np.median(starts)),
            start_token_max=int(starts.max()),
            chars_per_token_mean=float(cpt.mean()),
            chars_per_token_std=float(cpt.std(ddof=1)) if len(cpt) > 1 else 0.0,
        )

    @classmethod
    def from_dict(cls, data: Any) -> NormalText:
        """Parse (raises ``KeyError``/``TypeError``/``ValueError`` on a malformed record)."""
        return cls(
            corpus=str(data["corpus"]),
            split=str(data["split"]),
            positions=str(data["positions"]),
            tokens=int(data["tokens"]),
            count=int(data["count"]),
            opening_fraction=float(data["opening_fraction"]),
            start_token_median=float(data["start_token_median"]),
            start_token_max=int(data["start_token_max"]),
            chars_per_token_mean=float(data["chars_per_token_mean"]),
            chars_per_token_std=float(data["chars_per_token_std"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: what the calibration's normal text was."""
        where = {
            "anywhere": f"anywhere in the documents ({self.opening_fraction:.0%} openings, "
            f"later ones up to token {self.start_token_max})",
            "openings": "document openings only",
            "later": "later windows only",
        }.get(self.positions, self.positions)
        return f"{self.count} windows of {self.tokens} tokens from {self.corpus} ({self.split}), {where}"


def outside_normal(normal: NormalText, n_tokens: int, n_chars: int) -> str | None:
    """Why a text of ``n_tokens`` tokens and ``n_chars`` characters is far outside the calibration's
    normal text, or ``None``.

    Far outside: more than :data:`LENGTH_FACTOR` times longer or shorter than the windows (the
    anomaly score compares whole-text features; a longer text also gives the CUSUM more chances),
    or characters per token more than :data:`CHARS_PER_TOKEN_Z` calibration standard deviations
    from their mean (another language or script). Position cannot be seen in a text: a
    calibration of openings only is reported by the caller (``positions``), not here.
    """
    if n_tokens > LENGTH_FACTOR * normal.tokens or n_tokens * LENGTH_FACTOR < normal.tokens:
        return f"{n_tokens} tokens, the calibration's texts had {normal.tokens}"
    if n_tokens > 0 and normal.chars_per_token_std > 0:
        z = (n_chars / n_tokens - normal.chars_per_token_mean) / normal.chars_per_token_std
        if math.isfinite(z) and abs(z) > CHARS_PER_TOKEN_Z:
            return (
                f"{n_chars / n_tokens:.2f} characters per token, the calibration's texts had "
                f"{normal.chars_per_token_mean:.2f} ± {normal.chars_per_token_std:.2f} "
                "(another language or kind of text?)"
            )
    return None


def input_outside_normal(normal: NormalText, n_tokens: list[int], n_chars: list[int]) -> str | None:
    """Why the scored texts *as a whole* are far from the calibration's normal text, or ``None``.

    One text's characters per token vary too much to tell a Latin-script language from English
    (Spanish sits about 2 standard deviations below English Wikipedia with SmolLM2's tokenizer),
    but their mean over several texts does: the input is far outside when its mean characters per
    token lies more than :data:`CHARS_PER_TOKEN_Z` standard errors (``std / sqrt(n)``) from the
    calibration's mean.
    """
    pairs = [(t, c) for t, c in zip(n_tokens, n_chars, strict=True) if t > 0]
    if len(pairs) < 2 or normal.chars_per_token_std <= 0:
        return None
    mean = float(np.mean([c / t for t, c in pairs]))
    z = (mean - normal.chars_per_token_mean) / (normal.chars_per_token_std / math.sqrt(len(pairs)))
    if abs(z) > CHARS_PER_TOKEN_Z:
        return (
            f"the {len(pairs)} texts average {mean:.2f} characters per token, the calibration's "
            f"{normal.chars_per_token_mean:.2f} ({abs(z):.0f} standard errors away: another language or "
            "kind of text?)"
        )
    return None
