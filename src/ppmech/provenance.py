"""Provenance and JSON hygiene for what ppmech writes.

* :data:`__version__`: ppmech's own version, read once from the installed package's metadata
  (its one home is ``pyproject.toml``); ``ppmech.__version__`` is this value.
* :func:`versions`: the versions of everything that can change a number, recorded in every
  summary, calibration and ledger.
* :func:`json_safe`: the one cleaner that makes results JSON-ready: NaN and ±inf become
  ``null`` (never a silent number), NumPy scalars become Python ones, tuples become lists.
"""

from __future__ import annotations

import math
import platform
import sys
from importlib import metadata
from typing import Any

import numpy as np

__all__ = ["__version__", "json_safe", "versions"]


def _installed_version() -> str:
    try:
        return metadata.version("ppmech")
    except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
        return "0+unknown"


__version__ = _installed_version()


def versions() -> dict[str, str]:
    """Versions of everything that can change a number."""
    import numpy
    import pandas
    import torch
    import transformers

    return {
        "ppmech": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None``, NumPy scalars as Python values, tuples as lists.

    Dicts and lists are cleaned recursively; anything else is returned as is.
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
