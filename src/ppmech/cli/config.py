"""Configs from parsed arguments: one config dataclass behind each command, CLI and API alike."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, TypeVar

C = TypeVar("C")


def config_from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """``cls`` built from the attributes of ``args`` that are its fields (plus ``overrides``).

    A flag registered with ``default=argparse.SUPPRESS`` and not given is absent from ``args``,
    so the dataclass's own default applies.
    """
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**(values | overrides))
