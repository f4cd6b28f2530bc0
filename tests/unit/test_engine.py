"""The engine's pure parts: device names, batch sizes with out-of-memory back-off, the compile rule,
the token chooser."""

from __future__ import annotations

import io
import math
import sys
import time

import pytest
import torch

from ppmech.engine.batching import AUTO_CHUNK, CPU_BATCH, BatchSizer, auto_start, chunk_size, parse_batch_size
from ppmech.engine.compiled import compile_pays
from ppmech.engine.sampling import Decoding, TokenChooser, filter_logits
from ppmech.errors import PPMechError
from ppmech.models.device import device_record, is_out_of_memory, resolve_device
from ppmech.progress import Progress, note, showing, status

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- device


def test_auto_is_cpu_without_an_accelerator_and_cpu_is_cpu() -> None:
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU
    assert resolve_device(" CPU ") == CPU
    record = device_record(CPU)
    assert record["device"] == "cpu" and record["name"] and record["threads"] >= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_one_line_naming_the_fix(spec: str) -> None:
    with pytest.raises(PPMechError) as info:
        resolve_device(spec)
    line = info.value.one_line()
    assert "CUDA is not available" in line and "`device` cpu" in line and "\n" not in line


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "gpu0", "cuda:"])
def test_unknown_device_names_are_refused(spec: str) -> None:
    with pytest.raises(PPMechError, match="device"):
        resolve_device(spec)


def test_out_of_memory_is_recognised_however_phrased() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


# --------------------------------------------------------------------------- batch sizes


def test_parse_batch_size() -> None:
    assert parse_batch_size("auto") == "auto"
    assert parse_batch_size(" AUTO ") == "auto"
    assert parse_batch_size("16") == 16
    assert parse_batch_size(7) == 7
    for bad in ("0", "-3", "many", 2.5):
        with pytest.raises(PPMechError, match="`batch_size`"):
            parse_batch_size(bad)


def test_auto_sizes() -> None:
    assert chunk_size("auto") == AUTO_CHUNK and chunk_size(12) == 12
    assert auto_start(CPU, 1000) == CPU_BATCH and auto_start(CPU, 7) == 7
    assert auto_start(torch.device("cuda"), 1000) == AUTO_CHUNK
    # A CPU run with auto batches exactly as the old fixed default of 50 did.
    assert AUTO_CHUNK % CPU_BATCH == 0


def _flaky_memory(limit: int, calls: list[list[int]]) -> object:
    """A batch function that runs out of memory above ``limit`` rows and records what ran."""

    def fn(batch: list[int]) -> list[int]:
        if len(batch) > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory ({len(batch)} rows)")
        calls.append(batch)
        return [x * 10 for x in batch]

    return fn


def test_auto_backs_off_to_half_and_keeps_finished_batches() -> None:
    sizer = BatchSizer("auto", torch.device("cuda"))
    calls: list[list[int]] = []
    items = list(range(37))
    out = sizer.map(items, _flaky_memory(10, calls))  # type: ignore[arg-type]
    # 37 -> 18 -> 9 rows: then every batch fits, and later batches start at 9.
    assert sizer.current == 9 and sizer.backoffs == 2
    assert [len(c) for c in calls] == [9, 9, 9, 9, 1]
    assert [x for batch in calls for x in batch] == items  # each item ran once, in order
    assert [x for part in out for x in part] == [x * 10 for x in items]


def test_backoff_mid_job_retries_only_the_failed_batch() -> None:
    sizer = BatchSizer("auto", torch.device("cuda"))
    sizer.current = 4
    calls: list[list[int]] = []
    state = {"fail_next": False}

    def fn(batch: list[int]) -> int:
        if batch[0] == 8 and len(batch) == 4 and not state["fail_next"]:
            state["fail_next"] = True
            raise torch.OutOfMemoryError("out of memory")
        calls.append(batch)
        return len(batch)

    assert sizer.map(list(range(14)), fn) == [4, 4, 2, 2, 2]
    assert calls[:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # finished before the failure: not rerun
    assert calls[2] == [8, 9]


def test_out_of_memory_at_one_row_or_fixed_size_is_a_user_error() -> None:
    with pytest.raises(PPMechError, match="out of memory"):
        BatchSizer("auto", CPU).map([1, 2, 3], _flaky_memory(0, []))  # type: ignore[arg-type]
    with pytest.raises(PPMechError, match="smaller `batch_size`"):
        BatchSizer(8, CPU).map(list(range(10)), _flaky_memory(4, []))  # type: ignore[arg-type]


def test_other_errors_are_not_swallowed() -> None:
    def fn(batch: list[int]) -> None:
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        BatchSizer("auto", CPU).map([1, 2], fn)


# --------------------------------------------------------------------------- compile rule


def test_compile_rule_by_hand() -> None:
    # CUDA, credited 1.6x: saves 1 - 1/1.6 = 0.375 of the eager time; pays when that exceeds the warm-up.
    assert not compile_pays("cuda", eager_step_s=0.02, steps_left=200, warmup_s=30.0)  # saves 1.5 s
    assert not compile_pays("cuda", eager_step_s=0.02, steps_left=3999, warmup_s=30.0)  # saves 29.99 s
    assert compile_pays("cuda", eager_step_s=0.02, steps_left=4001, warmup_s=30.0)  # saves 30.01 s
    # A remembered short warm-up (compile cache warm) lowers the bar.
    assert compile_pays("cuda", eager_step_s=0.02, steps_left=1000, warmup_s=4.0)
    # Nothing remembered: the default warm-up (45 s) is the bar.
    assert not compile_pays("cuda", eager_step_s=0.02, steps_left=5999)  # saves 44.99 s
    assert compile_pays("cuda", eager_step_s=0.02, steps_left=6001)  # saves 45.01 s
    # The CPU is credited no speed-up: never.
    assert not compile_pays("cpu", eager_step_s=10.0, steps_left=10**6, warmup_s=1.0)


# --------------------------------------------------------------------------- the chooser


def test_filter_logits_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    top2 = filter_logits(logits, 2, None)
    assert torch.isfinite(top2).tolist() == [[True, True, False, False, False]]
    # Nucleus 0.8: 0.5 + 0.2 = 0.7 < 0.8, so the third token (mass before it 0.7) stays; the fourth goes.
    nucleus = filter_logits(logits, None, 0.8)
    assert torch.isfinite(nucleus).tolist() == [[True, True, True, False, False]]
    assert torch.equal(filter_logits(logits, None, None), logits)


def test_chooser_greedy_and_seeded_sampling_per_row() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=gen)
    greedy = TokenChooser(Decoding(), 4, CPU)
    assert torch.equal(greedy(logits), logits.argmax(-1))
    sample = Decoding(strategy="sample", temperature=0.7, top_k=10, top_p=0.9)
    together = TokenChooser(sample, 4, CPU, seeds=[11, 12, 13, 14])
    alone = TokenChooser(sample, 1, CPU, seeds=[13])
    draws = torch.stack([together(logits) for _ in range(20)])
    single = torch.stack([alone(logits[2:3]) for _ in range(20)])
    assert torch.equal(draws[:, 2], single[:, 0])
    # Every draw lies in the filtered support; log-probabilities give the same distribution.
    allowed = torch.isfinite(filter_logits(logits / 0.7, 10, 0.9))
    assert allowed.gather(-1, draws.T).all()
    assert torch.allclose(
        together.distribution(logits), together.distribution(logits.log_softmax(-1)), atol=1e-6
    )
    with pytest.raises(PPMechError, match="teacher"):
        TokenChooser(Decoding(strategy="teacher"), 1, CPU)
    assert math.isclose(float(together.distribution(logits).sum(-1).mean()), 1.0, rel_tol=1e-6)


# --------------------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_prints_only_a_final_summary() -> None:
    out = io.StringIO()
    bar = Progress(10, "recording x", stream=out)
    bar.update(4)
    bar.tick()
    bar.update(6)
    assert out.getvalue() == ""
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppmech: recording x: 10/10 tok in "), lines


def test_progress_disabled_on_a_terminal_is_quiet_until_its_summary() -> None:
    out = _Terminal()
    with Progress(5, "recording x", enabled=False, stream=out) as bar:
        bar.update(5)
        assert out.getvalue() == ""
    assert out.getvalue().startswith("ppmech: recording x: 5/5 tok in ")


def test_progress_on_a_terminal_shows_count_rate_and_time_left() -> None:
    out = _Terminal()
    bar = Progress(10, "recording x", stream=out)
    assert out.getvalue().startswith("\r\x1b[Kppmech: recording x: 0/10 tok (0%), ")
    time.sleep(0.01)
    bar.update(3)
    bar.tick()
    last = out.getvalue().split("\r\x1b[K")[-1]
    assert (
        last.startswith("ppmech: recording x: 3/10 tok (30%), ")
        and " tok/s, " in last
        and last.endswith(" left")
    )
    bar.close()
    assert out.getvalue().endswith("\n") and "3/10 tok in " in out.getvalue().split("\r\x1b[K")[-1]


def test_progress_counts_skipped_and_rewound_work() -> None:
    bar = Progress(100, "x", stream=io.StringIO())
    bar.skip(40)  # a resumed run's finished batches
    bar.update(30)
    bar.rewind(40)  # the batch failed (out of memory) and runs again
    assert bar.done == 40
    bar.update(200)
    assert bar.done == 100  # never past the total
    bar.close()


def test_a_failed_run_prints_no_summary() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), Progress(10, "recording x", stream=out) as bar:
        bar.update(2)
        raise RuntimeError("boom")
    assert out.getvalue() == ""


def test_status_line_only_on_a_terminal_and_only_when_showing() -> None:
    quiet = io.StringIO()
    with status("loading m", stream=quiet):
        pass
    assert quiet.getvalue() == ""
    tty = _Terminal()
    with status("loading m", stream=tty):
        pass
    assert tty.getvalue().startswith("\r\x1b[Kppmech: loading m … ") and tty.getvalue().endswith(" \n")
    off = _Terminal()
    with showing(False), status("loading m", stream=off):
        pass
    assert off.getvalue() == ""


def test_a_note_clears_the_bar_line_on_a_terminal_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    note("decoding eagerly")
    assert capsys.readouterr().err == "ppmech: note: decoding eagerly\n"
    tty = _Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    note("decoding eagerly")
    assert tty.getvalue() == "\r\x1b[Kppmech: note: decoding eagerly\n"
