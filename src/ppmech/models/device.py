"""Which device a model runs on: one resolver for every config, subcommand and API call.

A device is named as ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. ``auto``
takes CUDA when it is available (device 0), then Apple's MPS, else the CPU.
Naming a device that this machine does not have is a user error (one line, the
fix named), never a silent fallback to the CPU.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ppmech.errors import PPMechError

DEVICE_HELP = "auto (CUDA when available), cpu, cuda, cuda:N or mps"


def check_device_name(spec: str) -> None:
    """Refuse a name that is no device on any machine (``bogus``, ``cuda:x``, ``''``).

    It does not look at this machine's devices: a sweep checks its runs' names on the
    driver before they run on a cluster's nodes, which may have a GPU the driver lacks.

    Raises:
        PPMechError: ``spec`` is not one of :data:`DEVICE_HELP`.
    """
    name = str(spec).strip().lower()
    if not name:
        raise PPMechError("`device` is empty", f"use {DEVICE_HELP}, or leave it out for auto")
    kind, colon, index = name.partition(":")
    if name in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and colon and index.isdigit()):
        return
    raise PPMechError(f"unknown device '{spec}'", f"use {DEVICE_HELP}")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` that ``spec`` names on this machine.

    Raises:
        PPMechError: an unknown name (:func:`check_device_name`), or a device this machine lacks.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = (spec or "auto").strip().lower()
    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise PPMechError(
                "`device` mps was asked for but this machine has no usable MPS (Apple GPU) backend",
                "use `device` cpu (or auto)",
            )
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise PPMechError(f"unknown device '{spec}'", f"use {DEVICE_HELP}")
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible CUDA device"
            raise PPMechError(
                f"`device` {spec} was asked for but CUDA is not available here ({build})",
                "use `device` cpu (or auto), or install a CUDA build of torch "
                "(e.g. `make TORCH_SPEC=torch demo`) on a machine with an NVIDIA GPU",
            )
        index = int(index_text)
        count = torch.cuda.device_count()
        if index >= count:
            raise PPMechError(
                f"`device` {spec} does not exist: this machine has {count} CUDA device(s)",
                f"use cuda:0 .. cuda:{count - 1}",
            )
        return torch.device("cuda", index)
    raise PPMechError(f"unknown device '{spec}'", f"use {DEVICE_HELP}")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """A human name for ``device``: the GPU's product name, or the CPU model."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return cpu_name()


def device_record(device: torch.device) -> dict[str, Any]:
    """What a run summary records about its device: the resolved device and its name."""
    record: dict[str, Any] = {"device": str(device), "name": device_name(device)}
    if device.type == "cuda":
        record["cuda"] = torch.version.cuda
    else:
        record["threads"] = torch.get_num_threads()
    return record


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an accelerator (or host) out-of-memory error, however the backend phrases it."""
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_memory(device: torch.device) -> None:
    """Return cached accelerator memory after an out-of-memory error (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
