"""The shape of every input the report reads, checked when it is read.

A schema is plain data: ``str``/``int``/``bool``/:data:`NUM`/:data:`SCALAR`/:data:`ANY`
for a value, :class:`Maybe` for "this or null", :class:`Fields` for a JSON object
with named fields (required unless wrapped in :class:`Omittable`), :class:`ListOf`
and :class:`MapOf` for arrays and objects of one kind. :func:`check` walks a value
against a schema and raises one :class:`~ppmech.errors.PPMechError` naming the file
and the field (``scores[3].auroc``) at the first mismatch, so a malformed input is
one line, never a traceback from deep inside a figure.

Only what the report reads is required; other fields are left alone, so newer
outputs with more fields still read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppmech.errors import PPMechError


@dataclass(frozen=True)
class _Kind:
    name: str


NUM = _Kind("a number")
"""An int or a float (not a bool)."""
SCALAR = _Kind("a number, text, true/false or null")
"""A table cell."""
ANY = _Kind("anything")


@dataclass(frozen=True)
class Maybe:
    """``schema`` or JSON null."""

    schema: Any


@dataclass(frozen=True)
class Omittable:
    """A field that may be absent (if present it must match ``schema``)."""

    schema: Any


@dataclass(frozen=True)
class ListOf:
    """A JSON array whose items match ``schema``."""

    schema: Any


@dataclass(frozen=True)
class MapOf:
    """A JSON object with any keys whose values match ``schema``."""

    schema: Any


@dataclass(frozen=True)
class Fields:
    """A JSON object with these named fields (others allowed)."""

    fields: Mapping[str, Any]


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def describe(schema: Any) -> str:
    """What ``schema`` expects, in words."""
    if isinstance(schema, _Kind):
        return schema.name
    if schema is str:
        return "text"
    if schema is int:
        return "a whole number"
    if schema is bool:
        return "true or false"
    if isinstance(schema, Maybe):
        return f"{describe(schema.schema)} or null"
    if isinstance(schema, ListOf):
        return "a list"
    if isinstance(schema, MapOf | Fields):
        return "an object"
    raise TypeError(f"not a schema: {schema!r}")


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _matches(value: Any, schema: Any) -> bool:
    """Whether ``value`` has the outer type of ``schema`` (its contents are checked by :func:`_walk`)."""
    if isinstance(schema, Maybe):
        return value is None or _matches(value, schema.schema)
    if schema is ANY:
        return True
    if schema is NUM:
        return _is_num(value)
    if schema is SCALAR:
        return value is None or isinstance(value, str | bool) or _is_num(value)
    if schema is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if schema in (str, bool):
        return isinstance(value, schema)
    if isinstance(schema, ListOf):
        return isinstance(value, list)
    if isinstance(schema, MapOf | Fields):
        return isinstance(value, dict)
    raise TypeError(f"not a schema: {schema!r}")


def _walk(value: Any, schema: Any, where: str) -> tuple[str, Any, Any] | None:
    """The first mismatch as (field, value, expected schema), or None."""
    if not _matches(value, schema):
        return where, value, schema
    if isinstance(schema, Maybe):
        return None if value is None else _walk(value, schema.schema, where)
    if isinstance(schema, ListOf):
        for i, item in enumerate(value):
            if (bad := _walk(item, schema.schema, f"{where}[{i}]")) is not None:
                return bad
    elif isinstance(schema, MapOf):
        for key, item in value.items():
            if (bad := _walk(item, schema.schema, f"{where}.{key}" if where else str(key))) is not None:
                return bad
    elif isinstance(schema, Fields):
        for key, sub in schema.fields.items():
            name = f"{where}.{key}" if where else key
            if key not in value:
                if isinstance(sub, Omittable):
                    continue
                return name, _MISSING, sub
            inner = sub.schema if isinstance(sub, Omittable) else sub
            if (bad := _walk(value[key], inner, name)) is not None:
                return bad
    return None


_MISSING = object()


def check(value: Any, schema: Any, path: str | Path, fix: str, where: str = "") -> None:
    """Raise one line naming ``path`` and the first field of ``value`` that does not match ``schema``.

    Args:
        value: the parsed input (JSON, or a record of it).
        schema: see the module docstring.
        path: the file (``file:line`` for JSON lines), named in the message.
        fix: what to do about it (e.g. the command that writes the file).
        where: a prefix of field names (for nested calls).

    Raises:
        PPMechError: e.g. ``bench.json: field scores is 'oops', expected a list``.
    """
    bad = _walk(value, schema, where)
    if bad is None:
        return
    field, got, expected = bad
    what = "the file" if not field else f"field {field}"
    if got is _MISSING:
        raise PPMechError(f"{path}: {what} is missing ({describe(expected)} expected)", fix)
    raise PPMechError(f"{path}: {what} is {_shown(got)}, expected {describe(expected)}", fix)


def check_columns(columns: Any, required: tuple[str, ...], path: str | Path, fix: str) -> None:
    """Raise one line naming ``path`` and the first column of ``required`` it lacks."""
    missing = [c for c in required if c not in set(columns)]
    if missing:
        raise PPMechError(f"{path}: column {missing[0]} is missing (needs {', '.join(required)})", fix)
