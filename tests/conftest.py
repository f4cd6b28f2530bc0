"""Shared fixtures. Real models are loaded once per session from the ppmech cache."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ppmech.models.identity import LoadedModel
from ppmech.models.loading import load_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The embedded SmolLM2-135M-Instruct, pretrained, float32."""
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_random() -> LoadedModel:
    """SmolLM2-135M's architecture with fresh weights (seed 0)."""
    return load_model("smollm2-135m", weights="random", seed=0)


@pytest.fixture(scope="session")
def gemma3() -> LoadedModel:
    """The embedded Gemma-3-270M, pretrained, float32 (first load converts it: ~90 s)."""
    return load_model("gemma3-270m")


TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=256,
    ),
    "qwen2": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=256,
    ),
    "gemma3_text": dict(
        model_type="gemma3_text",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=49152,
        max_position_embeddings=256,
        sliding_window=16,
        final_logit_softcapping=30.0,
    ),
    "gpt2": dict(
        model_type="gpt2",
        n_embd=64,
        n_layer=2,
        n_head=4,
        vocab_size=49152,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=2,
    ),
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """Save a tiny random-config model of an architecture to a local directory.

    Returns a function ``arch -> directory`` usable as a ``load_model`` spec. The
    tokenizer is SmolLM2's, whose 49152 ids match the tiny vocab.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    made: dict[str, str] = {}

    def make(arch: str) -> str:
        if arch not in made:
            smol = load_model("smollm2-135m")
            cfg_kwargs = dict(TINY_CONFIGS[arch])
            model_type = cfg_kwargs.pop("model_type")
            config = AutoConfig.for_model(model_type, **cfg_kwargs)
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            model.save_pretrained(path)
            smol.tokenizer.save_pretrained(path)
            made[arch] = str(path)
        return made[arch]

    return make


# --------------------------------------------------------------------------- the browser (report tests)

#: Set to 1 (``.ci/run`` does) to make a missing browser an error instead of a skip.
REQUIRE_BROWSER = "PPMECH_REQUIRE_BROWSER"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_problem() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    import importlib.util

    from ppmech.report.export import CHROMIUM_ENV, INSTALL_CHROMIUM, find_chromium, missing_chromium_message

    if find_chromium() is None:
        return f"{missing_chromium_message()}; install it with `{INSTALL_CHROMIUM}` or set {CHROMIUM_ENV}"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed; pip install -e '.[dev]'"
    return None


def _no_browser(problem: str) -> None:
    """Skip or, under ``PPMECH_REQUIRE_BROWSER=1``, fail: CI can never skip the browser tests."""
    if os.environ.get(REQUIRE_BROWSER) == "1":
        pytest.fail(f"{problem} ({REQUIRE_BROWSER}=1: CI must run the browser tests)", pytrace=False)
    pytest.skip(f"browser tests skipped: {problem}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a browser, mark every test that needs one as skipped, before its inputs are built.

    With :func:`pytest_runtest_makereport` they fold into one summary line:
    ``SKIPPED [n] tests/conftest.py: browser tests skipped: ... apt-get install chromium``.
    Under ``PPMECH_REQUIRE_BROWSER=1`` nothing is marked: the ``chromium`` fixture fails instead.
    """
    needing = [item for item in items if "chromium" in getattr(item, "fixturenames", ())]
    if not needing or os.environ.get(REQUIRE_BROWSER) == "1":
        return
    problem = _browser_problem()
    if problem is not None:
        mark = pytest.mark.skip(reason=f"browser tests skipped: {problem}")
        for item in needing:
            item.add_marker(mark)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Every browser skip reported at one place, so that ``-ra`` folds them into one summary line."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and "browser tests skipped:" in str(longrepr[2]):
        report.longrepr = (__file__, None, longrepr[2])


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The Chromium the report's browser tests and ``report --png`` drive (``ppmech.report.export``).

    Found as ``report --png`` finds it: ``$PPMECH_CHROMIUM``, else ``chromium`` on PATH.
    Missing, the tests that need it are skipped, unless ``PPMECH_REQUIRE_BROWSER=1``.
    """
    from ppmech.report.export import find_chromium

    problem = _browser_problem()
    if problem is not None:
        _no_browser(problem)
    path = find_chromium()
    assert path is not None
    return path


@pytest.fixture(scope="session")
def browser(chromium: Path) -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (never ``playwright install``: its downloads are offline)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield b
        b.close()
