"""The decoding engine on real models: compiled equals eager, fallbacks, patches, rollback,
no host reads per step, and ``--batch-size auto`` backing off on a simulated out-of-memory."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from ppmech.engine.decoder import Engine
from ppmech.engine.hooks import FINAL_NORM, resid_post
from ppmech.engine.recorder import BatchRecord, Recorder
from ppmech.engine.sampling import Decoding, TokenChooser
from ppmech.measure import MeasureConfig, measure
from ppmech.mechanics import energy_terms
from ppmech.models.identity import LoadedModel
from ppmech.models.loading import load_model

PROMPTS = [
    [5, 17, 300, 41, 9, 2222, 71],
    [88, 4000, 12, 7, 650, 9, 9, 30, 18000, 3, 3, 1],
    [60, 61, 62, 63, 64],
]


def _kv(record: BatchRecord, row: int) -> dict[str, np.ndarray]:
    return energy_terms(record.speed_sq[row].numpy(), record.logp[row].double().numpy())


def test_compiled_decoding_equals_eager_on_a_tiny_llama(
    tiny_model_dir: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    lm = load_model(tiny_model_dir("llama"))
    eager = Recorder(lm, Decoding()).record(PROMPTS, 12)
    compiled = Recorder(lm, Decoding(), compile="on")
    assert compiled.engine.fast
    fast = compiled.record(PROMPTS, 12)
    smaller = compiled.record(PROMPTS[:2], 12)  # padded to the compiled batch: no second compile
    assert "note" not in capsys.readouterr().err
    assert compiled.engine.compiled is not None and len(compiled.engine.compiled.warmup_seconds) == 1
    assert torch.equal(fast.token_ids, eager.token_ids)
    assert torch.equal(smaller.token_ids, eager.token_ids[:2])
    for row in range(len(PROMPTS)):
        a, b = _kv(eager, row), _kv(fast, row)
        np.testing.assert_allclose(b["K"][1:], a["K"][1:], atol=1e-3)
        np.testing.assert_allclose(b["V"], a["V"], atol=1e-3)
    np.testing.assert_allclose(_kv(smaller, 1)["V"], _kv(eager, 1)["V"], atol=1e-3)
    # Its hooks stay registered but switched off: another user's forward leaves nothing in them.
    with torch.no_grad():
        lm.model(input_ids=torch.tensor([PROMPTS[0]]))
    assert all(not values for values in compiled.engine.compiled.store.values())
    again = compiled.record(PROMPTS, 12)
    assert torch.equal(again.token_ids, eager.token_ids)


def test_architecture_without_a_compilable_step_falls_back_with_a_note(
    tiny_model_dir: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    lm = load_model(tiny_model_dir("gemma3_text"))
    recorder = Recorder(lm, Decoding(), compile="on")
    record = recorder.record(PROMPTS, 6)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ppmech:")]
    assert len(err) == 1 and err[0].startswith("ppmech: note: compiled decoding is not available for gemma3")
    assert not recorder.engine.fast
    eager = Recorder(lm, Decoding(), compile="off").record(PROMPTS, 6)
    assert torch.equal(record.token_ids, eager.token_ids)
    torch.testing.assert_close(record.logp, eager.logp, atol=0, rtol=0)


def test_auto_does_not_compile_on_the_cpu(smollm2: LoadedModel) -> None:
    recorder = Recorder(smollm2, Decoding(), compile="auto")
    recorder.rows_left = 10_000
    recorder.record(PROMPTS[:1], 2)
    assert not recorder.engine.fast and recorder.engine._decided


def test_patch_rollback_and_capture(smollm2: LoadedModel) -> None:
    layer = resid_post(10)
    engine = Engine(smollm2, capture=[FINAL_NORM, layer], patch_points=[layer])
    with torch.no_grad(), engine.start(PROMPTS, 4, hold_last=True) as session:
        natural = session.run_pending()
        session.rollback()
        again = session.run_pending(patch={layer: lambda r: None})  # a patch that leaves the state
        torch.testing.assert_close(again.logits, natural.logits, atol=0, rtol=0)
        session.rollback()
        r = natural.states[layer][:, -1, :]
        moved = session.run_pending(patch={layer: lambda _r: r * 1.5})
        # The written state is what the block above (and the capture) saw.
        torch.testing.assert_close(moved.states[layer][:, -1, :], (r * 1.5).to(r.dtype))
        assert not torch.allclose(moved.states[FINAL_NORM], natural.states[FINAL_NORM], atol=1e-3)
        session.rollback()
        back = session.run_pending()
        torch.testing.assert_close(back.logits, natural.logits, atol=1e-5, rtol=0)
        assert session.length == max(len(p) for p in PROMPTS)


class _HostReads:
    """Counts tensor reads back to the host (item, tolist, cpu, numpy, bool) made by ppmech's own
    code while active (transformers' mask preparation makes its own; that is not ours to change)."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.active = False
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def wrapped(tensor: torch.Tensor, *a: Any, _orig: Any = original, **k: Any) -> Any:
                if self.active and f"{os.sep}ppmech{os.sep}" in sys._getframe(1).f_code.co_filename:
                    self.count += 1
                return _orig(tensor, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapped)


def test_the_decode_loop_reads_nothing_back_per_step(
    smollm2: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(smollm2)
    reads = _HostReads(monkeypatch)
    with torch.no_grad(), engine.start(PROMPTS, 6) as session:
        chooser = TokenChooser(Decoding(), len(PROMPTS), engine.device)
        steps: Iterator[Any] = engine.steps(session, 6, chooser)
        next(steps)  # the prefill may look at its mask; the steps after it may not
        reads.active = True
        rest = list(steps)
        reads.active = False
    assert len(rest) == 5
    assert reads.count == 0
    # The recorder copies its results to the host once per batch: as many reads for 9 steps as for 3.
    recorder = Recorder(smollm2, Decoding())
    counts = []
    for new_tokens in (3, 9):
        reads.count, reads.active = 0, True
        recorder.record(PROMPTS, new_tokens)
        reads.active = False
        counts.append(reads.count)
    assert counts[0] == counts[1] <= 8


def _steps(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path / "steps.parquet")


def test_auto_batch_size_backs_off_on_out_of_memory(
    smollm2: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ppmech.measure as measure_module

    monkeypatch.setattr(measure_module, "load_configured", lambda config: smollm2)
    config = MeasureConfig(prompts=5, context_tokens=12, new_tokens=4, n_boot=0, batch_size=2)
    reference = measure(config, tmp_path / "fixed", progress=False)

    original = Recorder.record
    sizes: list[int] = []

    def record(self: Recorder, prompts: list[list[int]], *args: Any, **kwargs: Any) -> BatchRecord:
        if len(prompts) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        sizes.append(len(prompts))
        return original(self, prompts, *args, **kwargs)

    monkeypatch.setattr(Recorder, "record", record)
    result = measure(
        MeasureConfig(prompts=5, context_tokens=12, new_tokens=4, n_boot=0, batch_size="auto"),
        tmp_path / "auto",
        progress=False,
    )
    assert sizes == [2, 2, 1]  # 5 -> 2 rows; each finished batch ran once
    execution = result.summary["execution"]
    assert execution["batch_size"] == 2 and execution["out_of_memory_backoffs"] == 1
    assert execution["device"] == "cpu" and execution["name"] and execution["decode"] == "eager"
    pd.testing.assert_frame_equal(_steps(result.path), _steps(reference.path))


def test_the_progress_callback_moves_within_a_single_batch(tiny_model_dir: Callable[[str], str]) -> None:
    """The recorder reports tokens after every decoding step, not once per batch."""
    recorder = Recorder(load_model(tiny_model_dir("llama")), Decoding())
    calls: list[int] = []
    recorder.on_tokens = calls.append
    recorder.record(PROMPTS, 6)  # one batch of 3 rows, 6 steps
    assert calls == [3] * 6
    teacher = Recorder(recorder.lm, Decoding(strategy="teacher"))
    teacher.on_tokens = calls.append
    teacher.record(PROMPTS, 4, targets=[[1, 2, 3, 4]] * 3)  # one forward pass scores every step
    assert calls[6:] == [12]


def test_measure_without_progress_prints_one_summary_line(
    tiny_model_dir: Callable[[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = MeasureConfig(
        model=tiny_model_dir("llama"), prompts=3, context_tokens=8, new_tokens=5, n_boot=0, batch_size=3
    )
    measure(config, tmp_path / "run", progress=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ppmech: recording ") and ": 15/15 tok in " in lines[0], (
        lines
    )
