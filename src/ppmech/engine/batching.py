"""Batch sizes: a fixed number, or ``auto`` — the largest batch that fits.

``--batch-size auto`` (the default) starts at :func:`auto_start` rows (on the CPU
the measured 50, on an accelerator up to :data:`AUTO_CHUNK`) and, when a batch
runs out of memory, halves the size and retries *that* batch; batches already
finished are kept, and later batches use the smaller size. Work is written to
disk in chunks of a size that does not depend on the device (:func:`chunk_size`),
so a run can be resumed anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from ppmech.errors import PPMechError
from ppmech.models.device import is_out_of_memory, release_memory

T = TypeVar("T")
R = TypeVar("R")

#: Rows per on-disk chunk with ``auto`` (a multiple of the CPU batch, so CPU runs batch as before).
AUTO_CHUNK = 400
#: The CPU's batch with ``auto``: measured in BENCHMARKS.md to be as fast as larger ones on 2 cores.
CPU_BATCH = 50


def parse_batch_size(value: int | str) -> int | str:
    """``auto`` or a positive whole number (from the CLI or a config)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (isinstance(value, float) and value != number):
        raise PPMechError(f"`batch_size` must be 'auto' or at least 1 (got {value!r})", "use auto or e.g. 50")
    return number


def chunk_size(batch_size: int | str) -> int:
    """Rows written to disk together: the batch size, or :data:`AUTO_CHUNK` with ``auto``."""
    return AUTO_CHUNK if batch_size == "auto" else int(batch_size)


def auto_start(device: torch.device, rows: int) -> int:
    """The first batch size ``auto`` tries for ``rows`` rows on ``device``."""
    if device.type == "cpu":
        return min(rows, CPU_BATCH)
    return min(rows, AUTO_CHUNK)


class BatchSizer:
    """Runs work in batches, halving the batch on out-of-memory (module docstring).

    Args:
        batch_size: a fixed size, or ``auto``.
        device: where the work runs (``auto`` starts by it; memory is released there).
    """

    def __init__(self, batch_size: int | str, device: torch.device) -> None:
        self.batch_size = parse_batch_size(batch_size)
        self.device = device
        self.current: int | None = None if self.batch_size == "auto" else int(self.batch_size)
        self.backoffs = 0

    def map(self, items: Sequence[T], fn: Callable[[list[T]], R]) -> list[R]:
        """``fn`` on consecutive batches of ``items``; results in order, one per batch run.

        With ``auto``, a batch that runs out of memory is retried at half the size
        (down to one row); finished batches are never run again.

        Raises:
            PPMechError: out of memory with a single row (or with a fixed batch size).
        """
        if self.current is None:
            self.current = auto_start(self.device, len(items))
        results: list[R] = []
        start = 0
        while start < len(items):
            batch = list(items[start : start + self.current])
            try:
                results.append(fn(batch))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                release_memory(self.device)
                if self.batch_size != "auto" or len(batch) == 1:
                    raise PPMechError(
                        f"out of memory on {self.device} with a batch of {len(batch)}",
                        "use a smaller `batch_size` (or auto), a smaller `dtype`, or another `device`",
                    ) from exc
                self.current = max(1, len(batch) // 2)
                self.backoffs += 1
                continue
            start += len(batch)
        return results
