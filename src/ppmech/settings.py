"""What each setting of a config is for: its role, its help text, its flag, declared once on the field.

Every config dataclass (``MeasureConfig``, ``SteerConfig``, the monitor's and
``verify``'s) declares each field with :func:`setting`, which records

* its :class:`Role`: whether it changes *what* is measured (``PROTOCOL``), only the
  statistics computed from stored steps (``ANALYSIS``), only *how* it is computed
  (``EXECUTION``), or nothing about the result (``BOOKKEEPING``);
* its help text and command-line flag options (the CLI builds one flag per field from
  them: :func:`ppmech.cli.config.add_config_flags`).

Run names, run reuse, sweep staleness, Table 5 grouping and ``verify``'s reuse all
derive their key lists from :func:`keys`; no list of keys is written by hand elsewhere.

:class:`ModelSpec` is the model half every config inherits, so keys stay flat
(``model``, ``weights``, ...; the spelling a study file uses for a run).

This module is the bottom layer: it imports only the standard library and
:mod:`ppmech.errors`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ppmech.errors import PPMechError

_ROLE = "ppmech.role"
_HELP = "ppmech.help"
_FLAG = "ppmech.flag"


class Role(StrEnum):
    """What changing a setting changes."""

    PROTOCOL = "protocol"
    """What is measured: model, weights, corpus, decoding and its parameters, lengths, seed, ..."""
    ANALYSIS = "analysis"
    """Only statistics computed from the stored steps (``n_boot``): re-analysed, never re-recorded."""
    EXECUTION = "execution"
    """Only how the run is computed (``device``, ``compile``, ``batch_size``): results agree to round-off."""
    BOOKKEEPING = "bookkeeping"
    """Nothing about the result (where it goes, how it is shown)."""


def setting(
    default: Any = MISSING,
    *,
    role: Role,
    help: str,
    default_factory: Callable[[], Any] | None = None,
    **flag_options: Any,
) -> Any:
    """A :func:`dataclasses.field` that carries its role, help text and CLI flag options.

    Args:
        default: the default value (or leave out and give ``default_factory``).
        role: the setting's :class:`Role`.
        help: one sentence for ``--help`` (the default is appended once, by the CLI).
        default_factory: as :func:`dataclasses.field`.
        **flag_options: extra :meth:`argparse.ArgumentParser.add_argument` options for the
            field's flag (``flag="--n"``, ``choices=...``, ``metavar=...``, ``type=...``,
            ``cli=False`` to give the field no flag).
    """
    if not isinstance(role, Role):
        raise TypeError(f"role must be a Role, not {role!r}")
    metadata = {_ROLE: role, _HELP: help, _FLAG: dict(flag_options)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _fields(cls: Any) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


def role_of(cls: Any, name: str) -> Role:
    """The role of field ``name`` of dataclass ``cls`` (a class or an instance).

    Raises:
        KeyError: ``name`` is not a field, or was declared without :func:`setting`.
    """
    for f in _fields(cls):
        if f.name == name:
            if _ROLE not in f.metadata:
                raise KeyError(f"{_name(cls)}.{name} was declared without ppmech.settings.setting")
            return Role(f.metadata[_ROLE])
    raise KeyError(f"{_name(cls)} has no setting {name!r}")


def keys(cls: Any, *roles: Role) -> tuple[str, ...]:
    """Names of the fields of ``cls`` with any of ``roles``, in field order (all roles if none given)."""
    wanted = set(roles) if roles else set(Role)
    return tuple(f.name for f in _fields(cls) if f.metadata.get(_ROLE) in wanted)


def values(config: Any, *roles: Role) -> dict[str, Any]:
    """``{name: value}`` of the fields of instance ``config`` with any of ``roles``, in field order."""
    return {name: getattr(config, name) for name in keys(config, *roles)}


def help_of(cls: Any, name: str) -> str:
    """The help text declared for field ``name`` (empty when none)."""
    return str(_field(cls, name).metadata.get(_HELP, ""))


def flag_options(cls: Any, name: str) -> dict[str, Any]:
    """The extra CLI flag options declared for field ``name`` (a copy)."""
    return dict(_field(cls, name).metadata.get(_FLAG, {}))


def _field(cls: Any, name: str) -> dataclasses.Field[Any]:
    for f in _fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{_name(cls)} has no setting {name!r}")


def _name(cls: Any) -> str:
    return cls.__name__ if isinstance(cls, type) else type(cls).__name__


def check_not_blank(config: Any, *names: str) -> None:
    """Refuse a blank string field (``''`` or whitespace) with one line naming it.

    A blank value is never a silent "use the default": ``--device ''`` would otherwise mean ``auto``.
    """
    for name in names:
        value = getattr(config, name)
        if isinstance(value, str) and not value.strip():
            raise PPMechError(f"`{name}` is empty", f"give `{name}` a value, or leave it out for its default")


@dataclass(frozen=True)
class ModelSpec:
    """Which model, and how to load it: the base class every config inherits (keys stay flat).

    A subclass may redeclare ``model`` (or any field) to change its default; the field keeps its place.

    Attributes:
        model: embedded name, ``.gguf`` path, local directory or hub id; ``hub/id@revision``
            pins a hub revision (split into ``model`` and ``revision``).
        weights: ``pretrained`` or ``random``.
        dtype: weight dtype (``float32``, ``bfloat16``, ``float16``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        revision: hub revision (branch, tag or commit) to pin a hub model to; ``None``: the default branch.
        trust_remote_code: let transformers run model code from the checkpoint.
    """

    model: str = setting(
        "smollm2-135m",
        role=Role.PROTOCOL,
        help="embedded name (see `ppmech models`), .gguf path, local directory or hub id "
        "(hub/id@revision pins a revision)",
    )
    weights: str = setting(
        "pretrained",
        role=Role.PROTOCOL,
        help="the trained weights, or the same architecture freshly initialised (seeded by --seed)",
        choices=("pretrained", "random"),
    )
    dtype: str = setting(
        "float32",
        role=Role.PROTOCOL,
        help="weight dtype",
        choices=("float32", "bfloat16", "float16"),
    )
    device: str = setting(
        "auto",
        role=Role.EXECUTION,
        help="auto (CUDA when available), cpu, cuda, cuda:N or mps",
    )
    revision: str | None = setting(
        None,
        role=Role.PROTOCOL,
        help="pin a hub model to this branch, tag or commit (default: the default branch)",
    )
    trust_remote_code: bool = setting(
        False,
        role=Role.EXECUTION,
        help="let transformers run code shipped with the model",
    )

    def __post_init__(self) -> None:
        check_not_blank(self, "model", "device")
        if self.revision is not None and not str(self.revision).strip():
            raise PPMechError(
                "`revision` is empty", "give a branch, tag or commit, or leave it out for the default branch"
            )
        model, revision = split_revision(self.model, self.revision)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "revision", revision)


def split_revision(model: str, revision: str | None) -> tuple[str, str | None]:
    """``("org/name@rev", None)`` -> ``("org/name", "rev")``; anything else unchanged.

    An existing local path that happens to contain ``@`` is left whole.

    Raises:
        PPMechError: an empty ``@revision``, or one that disagrees with ``revision``.
    """
    if "@" not in model or Path(model).expanduser().exists():
        return model, revision
    name, _, pinned = model.rpartition("@")
    if not name or not pinned:
        raise PPMechError(
            f"`model` '{model}' has an empty name or revision around '@'", "write hub/id@revision"
        )
    if revision is not None and revision != pinned:
        raise PPMechError(
            f"`model` pins revision '{pinned}' but `revision` is '{revision}'", "give the revision once"
        )
    return name, pinned


def unknown_key_message(key: str, valid: Mapping[str, Any] | tuple[str, ...] | list[str]) -> str:
    """``"unknown key 'x'"`` plus the closest valid key, when one is close."""
    import difflib

    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}"


def dump_toml(values: Mapping[str, Any], header: str = "") -> str:
    """``values`` (flat: strings, numbers, booleans, lists of them) as TOML text, keys in order.

    ``None`` has no TOML spelling: such a key is left out, which a config file reads as the
    field's default (every field whose value may be ``None`` defaults to ``None``).

    Raises:
        TypeError: a value TOML cannot hold flat (a nested mapping, an object).
    """
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f"{key} = {_toml_value(key, value)}")
    return "\n".join(lines) + "\n"


def _toml_value(key: str, value: Any) -> str:
    import json
    import math

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string (the same escapes), non-ASCII kept as is.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(key, v) for v in value) + "]"
    raise TypeError(f"setting {key!r}: {type(value).__name__} has no flat TOML form")
