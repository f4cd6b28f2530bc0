"""What a long command shows on the console (stderr): notes, a status line, a progress bar.

* :func:`note` — one line on how a run was computed (never a failure).
* :func:`status` — a status line while something slow happens that has no count
  (loading or converting a model); on a terminal it shows the elapsed seconds,
  updated once a second, and ends with how long it took.
* :class:`Progress` — work done out of the total, its rate and the time left,
  redrawn at least once a second (a background ticker redraws it even while one
  step of the work takes longer than that). The work calls :meth:`Progress.update`
  from inside its loop, so the bar moves within a batch, not once per batch.

Showing is switched off by :func:`showing` (``--no-progress`` and ``progress=False``
in the API) and whenever stderr is not a terminal. Then nothing is drawn, and a
:class:`Progress` prints one summary line when it closes.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TextIO

__all__ = ["Progress", "note", "showing", "status"]

#: Whether progress may be drawn in this context (``--no-progress`` sets it off).
_SHOW: ContextVar[bool] = ContextVar("ppmech_show_progress", default=True)
#: Seconds between redraws of a status line or bar while nothing else moves it.
TICK_S = 1.0


def note(message: str) -> None:
    """A one-line note on stderr (how a run was computed, never a failure).

    On a terminal it first clears the line, so a note never lands in the middle of a bar
    or status line (which the ticker redraws below it within a second).
    """
    clear = "\r\x1b[K" if _interactive(sys.stderr) else ""
    print(f"{clear}ppmech: note: {message}", file=sys.stderr)


@contextlib.contextmanager
def showing(enabled: bool) -> Iterator[None]:
    """Within this block, draw progress only if ``enabled`` (and stderr is a terminal)."""
    token = _SHOW.set(enabled and _SHOW.get())
    try:
        yield
    finally:
        _SHOW.reset(token)


def _interactive(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(_SHOW.get() and isatty is not None and isatty())


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 07 s`` or ``1 h 02 min``."""
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _Ticker:
    """Calls ``draw`` every :data:`TICK_S` seconds on a daemon thread until stopped."""

    def __init__(self, draw: Callable[[], None]) -> None:
        self._draw = draw
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ppmech-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            self._draw()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * TICK_S)


@contextlib.contextmanager
def status(message: str, enabled: bool = True, stream: TextIO | None = None) -> Iterator[None]:
    """A status line (``ppmech: loading smollm2-135m … 12 s``) while the block runs.

    On a terminal the elapsed time is redrawn once a second and the line ends with the
    total time; elsewhere (or with progress off) nothing is printed.
    """
    out = stream if stream is not None else sys.stderr
    if not (enabled and _interactive(out)):
        yield
        return
    started = time.perf_counter()
    lock = threading.Lock()

    def draw(final: str = "") -> None:
        with lock:
            elapsed = _duration(time.perf_counter() - started)
            out.write(f"\r\x1b[Kppmech: {message} … {elapsed}{final}")
            out.flush()

    draw()
    ticker = _Ticker(draw)
    try:
        yield
    finally:
        ticker.stop()
        draw(" \n")


class Progress:
    """Work done out of ``total``, with its rate and time left (module docstring).

    Args:
        total: units of work (e.g. tokens).
        description: what is being done (``recording smollm2-135m``).
        unit: the unit's name, for the rate (``tok`` gives ``tok/s``).
        enabled: ``False`` (``--no-progress``): draw nothing, print the summary line at the end.
        stream: where to draw (default stderr).
    """

    def __init__(
        self,
        total: int,
        description: str,
        unit: str = "tok",
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.total = max(int(total), 0)
        self.description = description
        self.unit = unit
        self.done = 0
        self._out = stream if stream is not None else sys.stderr
        self._started = time.perf_counter()
        #: Work already done before this session (a resumed run): not counted in the rate.
        self._skipped = 0
        self._lock = threading.Lock()
        self._closed = False
        self.drawing = enabled and _interactive(self._out)
        self._ticker = _Ticker(self._draw) if self.drawing else None
        if self.drawing:
            self._draw()

    # ------------------------------------------------------------------ counting

    def update(self, n: int) -> None:
        """``n`` more units done (called from inside the work's loop)."""
        with self._lock:
            self.done = min(self.total, self.done + n)

    def skip(self, n: int) -> None:
        """``n`` units that were already done (a resumed run): they count as done, not in the rate."""
        with self._lock:
            self.done = min(self.total, self.done + n)
            self._skipped += n

    def rewind(self, done: int) -> None:
        """Set the count back to ``done`` (work that failed and will be run again)."""
        with self._lock:
            self.done = max(0, min(self.done, done))

    def rate(self) -> float:
        """Units per second since the start (NaN before any time has passed)."""
        elapsed = time.perf_counter() - self._started
        worked = self.done - self._skipped
        return worked / elapsed if elapsed > 0 else float("nan")

    def line(self) -> str:
        """``recording x: 120/300 tok (40%), 25.3 tok/s, 7 s left`` (no timing assumed)."""
        with self._lock:
            done, total = self.done, self.total
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        rate = self.rate()
        text = f"{self.description}: {done}/{total} {self.unit}{pct}"
        if rate == rate and rate > 0:  # not NaN
            text += f", {rate:.1f} {self.unit}/s"
            if done < total:
                text += f", {_duration((total - done) / rate)} left"
        else:
            text += f", {_duration(time.perf_counter() - self._started)} so far"
        return text

    # ------------------------------------------------------------------ drawing

    def _draw(self) -> None:
        if not self._closed:
            self._out.write(f"\r\x1b[Kppmech: {self.line()}")
            self._out.flush()

    def tick(self) -> None:
        """Redraw now if drawing (the ticker also redraws once a second)."""
        if self.drawing:
            self._draw()

    def close(self, failed: bool = False) -> None:
        """Stop drawing; print the final line (the one summary line when nothing was drawn).

        With ``failed`` (the work raised) no summary is printed: a drawn bar just ends its line.
        """
        if self._closed:
            return
        if self._ticker is not None:
            self._ticker.stop()
        if failed:
            self._closed = True
            if self.drawing:
                self._out.write("\n")
                self._out.flush()
            return
        elapsed = _duration(time.perf_counter() - self._started)
        rate = self.rate()
        summary = f"{self.description}: {self.done}/{self.total} {self.unit} in {elapsed}"
        if rate == rate and rate > 0:
            summary += f" ({rate:.1f} {self.unit}/s)"
        self._closed = True
        if self.drawing:
            self._out.write(f"\r\x1b[Kppmech: {summary}\n")
        else:
            print(f"ppmech: {summary}", file=self._out)
        self._out.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self.close(failed=kind is not None)
