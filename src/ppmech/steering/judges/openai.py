"""A judge behind any OpenAI-compatible chat-completions endpoint (standard library only), with
retries, backoff and an on-disk cache.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ppmech import artifacts
from ppmech.errors import PPMechError
from ppmech.steering.judges.base import (
    RUBRIC,
    JudgeItem,
    JudgeScore,
    format_item,
    parse_score,
)

__all__ = ["OpenAIJudge"]


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
                "pass `judge_url` like http://127.0.0.1:8000/v1",
            )
        if not model:
            raise PPMechError("no judge model given", "pass `judge_model`")
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
            artifacts.write_text(path, json.dumps(entry, ensure_ascii=False))  # atomic
        except OSError as exc:
            raise PPMechError(
                f"cannot write the judge cache in {path.parent}: {exc.strerror or exc}",
                "pass a writable `judge_cache` directory",
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
                "the server is overloaded or broken; retry later, raise `judge_retries`, "
                "or check the server's logs",
            )
        raise PPMechError(
            f"judge endpoint {self.url} unreachable after {attempts} attempts: {self._redact(last.reason)}",
            "check `judge_url` / that the server is running",
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
        return "check `judge_url` (it usually ends in /v1) and `judge_model`"
    return "check `judge_model` and that the endpoint speaks the OpenAI chat-completions API"
