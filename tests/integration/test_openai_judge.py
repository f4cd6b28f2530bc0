"""OpenAIJudge against a real local HTTP server speaking /v1/chat/completions."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ppmech.errors import PPMechError
from ppmech.steering.judges.base import RUBRIC, JudgeItem
from ppmech.steering.judges.openai import OpenAIJudge

# A behaviour maps the 1-based request number to (status, body text).
Behaviour = Callable[[int], tuple[int, str]]


def reply(content: str) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
        }
    )


@dataclass
class FakeServer:
    """What the server saw, and how it answers."""

    base_url: str
    behaviour: Behaviour = lambda n: (200, reply("Score: 8"))
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with state.lock:
                state.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
                )
                n = len(state.requests)
            if self.path != "/v1/chat/completions":
                status, text = 404, '{"error": "not found"}'
            else:
                status, text = state.behaviour(n)
            data = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = httpd.server_address[1]
    state.base_url = f"http://127.0.0.1:{port}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


ITEM = JudgeItem(
    context="Paris is the capital and most populous city of France. The city of",
    tokens=[
        " Paris",
        " France",
        " light",
        " lights",
        " love",
        " art",
        " the",
        " Lyon",
        " a",
        " fashion",
    ],
)
OTHER = JudgeItem(context="The mitochondrion produces chemical", tokens=[" energy", " fuel"])


def judge_for(server: FakeServer, **kw: Any) -> OpenAIJudge:
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("max_retries", 5)
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("api_key_env", "PPMECH_TEST_JUDGE_KEY_UNSET")
    return OpenAIJudge(base_url=server.base_url, model="judge-model", **kw)


def test_normal_reply(server: FakeServer) -> None:
    judge = judge_for(server)
    [score] = judge.score([ITEM])
    assert score.score == 8.0
    assert score.error is None
    assert score.raw == "Score: 8"
    [req] = server.requests
    assert req["path"] == "/v1/chat/completions"
    sent = req["json"]
    assert sent["model"] == "judge-model"
    assert sent["temperature"] == 0
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["messages"][0]["content"] == RUBRIC
    assert ITEM.context in sent["messages"][1]["content"]
    assert '" Paris"' in sent["messages"][1]["content"]
    assert "Authorization" not in req["headers"]


def test_several_items_in_order(server: FakeServer) -> None:
    server.behaviour = lambda n: (200, reply(f"Score: {n + 2}"))
    scores = OpenAIJudge(base_url=server.base_url + "/", model="m").score([ITEM, OTHER])
    assert [s.score for s in scores] == [3.0, 4.0]


def test_429_twice_then_success(server: FakeServer) -> None:
    server.behaviour = lambda n: (429, '{"error": "slow down"}') if n <= 2 else (200, reply("Score: 6"))
    judge = judge_for(server)
    [score] = judge.score([ITEM])
    assert score.score == 6.0
    assert len(server.requests) == 3
    assert judge.requests_sent == 3


def test_503_forever_gives_up(server: FakeServer) -> None:
    server.behaviour = lambda n: (503, '{"error": "overloaded"}')
    judge = judge_for(server, max_retries=3)
    with pytest.raises(PPMechError) as info:
        judge.score([ITEM])
    assert len(server.requests) == 4  # the first attempt and 3 retries
    assert "503" in info.value.one_line()
    assert "4 attempts" in info.value.one_line()


def test_400_is_not_retried(server: FakeServer) -> None:
    server.behaviour = lambda n: (400, '{"error": "bad model"}')
    with pytest.raises(PPMechError) as info:
        judge_for(server).score([ITEM])
    assert len(server.requests) == 1
    assert "HTTP 400" in info.value.one_line()


def test_401_fix_names_key_variable(server: FakeServer) -> None:
    server.behaviour = lambda n: (401, '{"error": "no key"}')
    with pytest.raises(PPMechError) as info:
        judge_for(server, api_key_env="MY_JUDGE_KEY").score([ITEM])
    assert len(server.requests) == 1
    assert "MY_JUDGE_KEY" in info.value.fix


def test_reply_without_score_is_missing(server: FakeServer) -> None:
    server.behaviour = lambda n: (200, reply("These tokens look reasonable to me."))
    [score] = judge_for(server).score([ITEM])
    assert score.score is None
    assert score.error == "no score in reply"
    assert score.raw == "These tokens look reasonable to me."


def test_malformed_body_is_missing(server: FakeServer) -> None:
    server.behaviour = lambda n: (200, "<html>not json</html>")
    [score] = judge_for(server).score([ITEM])
    assert score.score is None
    assert score.error is not None and "malformed" in score.error
    assert score.raw == "<html>not json</html>"
    assert len(server.requests) == 1


def test_cache_second_run_makes_no_requests(server: FakeServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = judge_for(server, cache_dir=cache).score([ITEM, OTHER])
    assert len(server.requests) == 2
    again = judge_for(server, cache_dir=cache)
    second = again.score([ITEM, OTHER])
    assert len(server.requests) == 2
    assert again.requests_sent == 0 and again.cache_hits == 2
    assert second == first
    files = sorted(cache.iterdir())
    assert len(files) == 2 and all(f.suffix == ".json" for f in files)
    # A different model is a different cache key.
    OpenAIJudge(base_url=server.base_url, model="other", cache_dir=cache).score([ITEM])
    assert len(server.requests) == 3


def test_api_key_sent_but_never_recorded(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-test-SECRET-4f9a1c"
    monkeypatch.setenv("PPMECH_JUDGE_KEY", key)
    cache = tmp_path / "cache"
    judge = judge_for(server, api_key_env="PPMECH_JUDGE_KEY", cache_dir=cache)
    [score] = judge.score([ITEM])
    assert score.score == 8.0
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {key}"
    description = json.dumps(judge.describe())
    assert key not in description
    assert "PPMECH_JUDGE_KEY" in description
    assert key not in repr(vars(judge))
    files = list(cache.rglob("*"))
    assert files
    for f in files:
        if f.is_file():
            assert key not in f.read_text(encoding="utf-8")
            assert key not in f.name


def test_unreachable_endpoint() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = OpenAIJudge(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=2, backoff_s=0.01)
    with pytest.raises(PPMechError) as info:
        judge.score([ITEM])
    line = info.value.one_line()
    assert "unreachable" in line
    assert "3 attempts" in line
    assert f"127.0.0.1:{port}" in line
    assert "`judge_url`" in info.value.fix  # the field; the CLI prints it as --judge-url
    assert judge.requests_sent == 3
