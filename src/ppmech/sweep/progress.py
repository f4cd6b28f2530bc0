"""The sweep's progress line: runs done, running and failed, and the current run's own progress.

On a terminal (stderr is a TTY) and unless ``--no-progress``: a bar over the study's runs
whose postfix names the runs in flight. On a local cluster the driver can see each
run's scratch directory, so it also shows how far the current run is: the last line
of that run's own ``measure`` progress (tokens done of the total), which the worker
keeps in ``progress.txt`` there. On a remote cluster the scratch directories are on
other machines: runs in flight are counted, not followed. Elsewhere (a pipe, a log,
``--no-progress``) nothing is printed; the command prints a one-line summary at the end.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_TOKENS = re.compile(r"(\d+)/(\d+)")


class SweepProgress:
    """Progress of one sweep's Ray runs (see the module docstring)."""

    def __init__(self, study: str, total: int, done: int, enabled: bool, local: bool) -> None:
        from tqdm.auto import tqdm

        self.local = local
        self.failed = 0
        self.running: dict[str, str] = {}
        isatty = getattr(sys.stderr, "isatty", lambda: False)
        self.bar = tqdm(
            total=total,
            initial=done,
            desc=f"sweep {study}",
            unit="run",
            disable=not (enabled and isatty()),
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def poll(self, in_flight: dict[str, str]) -> None:
        """Refresh the runs in flight (run name -> its scratch directory on the worker)."""
        running: dict[str, str] = {}
        for name, work in in_flight.items():
            if not self.local:
                running[name] = ""
                continue
            root = Path(work)
            if not (root / "worker.json").is_file():
                continue  # queued: no worker has picked it up yet
            try:
                line = (root / "progress.txt").read_text(errors="replace")
            except OSError:
                line = ""
            match = _TOKENS.search(line)
            running[name] = f"{match.group(1)}/{match.group(2)} tok" if match else "loading"
        self.running = running
        self._show()

    def finished(self, name: str, status: str) -> None:
        """One run came back (``complete`` or ``failed``)."""
        self.running.pop(name, None)
        self.failed += status == "failed"
        self.bar.update(1)
        self._show()

    def _show(self) -> None:
        if self.bar.disable:
            return
        parts = [f"running {len(self.running)}", f"failed {self.failed}"]
        current = [f"{n}: {p}" for n, p in self.running.items() if p][:2]
        self.bar.set_postfix_str(", ".join(parts + current), refresh=True)

    def close(self) -> None:
        self.bar.close()
