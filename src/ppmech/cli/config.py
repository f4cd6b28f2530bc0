"""Configs from the command line and from config files: one config dataclass behind each command.

* :func:`add_config_flags` adds one flag per field of a config dataclass, from the field's
  :func:`~ppmech.settings.setting` (help text and flag options): each flag is defined once,
  on the field, and its default is the dataclass's (printed once, by :class:`ppmech.cli.HelpFormatter`).
* :func:`add_config_file_flag` adds ``--config FILE.toml``; :func:`load_config_file` reads one
  (keys: the dataclass's field names, the spelling a sweep study uses for a run).
* :func:`config_from_args` builds the config: the file's values, overridden by the flags given,
  overridden by the command's own ``overrides``.
"""

from __future__ import annotations

import argparse
import tomllib
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

from ppmech.errors import PPMechError
from ppmech.settings import Role, flag_options, help_of, unknown_key_message

C = TypeVar("C")

#: The flag that reads a config file (``dest`` ``config_file``: ``config`` is a field name elsewhere).
CONFIG_FLAG = "--config"


def add_config_file_flag(parser: argparse.ArgumentParser) -> None:
    """``--config FILE.toml``: settings from a file (keys = the config's field names); flags override it."""
    parser.add_argument(
        CONFIG_FLAG,
        dest="config_file",
        metavar="FILE.toml",
        default=None,
        help="read settings from this TOML file (keys: the setting names, e.g. new_tokens = 50; a run's "
        "config.toml reproduces it); flags given override the file (default: none)",
    )


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ActionsContainer,
    cls: Any,
    *,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    roles: tuple[Role, ...] = (),
) -> None:
    """Add one flag per field of dataclass ``cls`` that was declared with :func:`~ppmech.settings.setting`.

    The flag is ``--field-name`` (or the ``flag`` option), its help is the field's, and its
    default is ``SUPPRESS``: an omitted flag is absent from the namespace and the dataclass
    supplies the default (shown once by ``--help``). The value type comes from the field's
    annotation: ``bool`` -> a switch (``--no-x`` when the default is true), ``X | None`` -> ``X``,
    ``tuple[X, ...]`` -> one or more values, ``int | str`` -> a number or a word.

    Args:
        parser: the command's parser (or an argument group of it).
        cls: the config dataclass.
        only: add just these fields (in this order).
        skip: fields not to add (the command defines them itself, or has no use for them).
        roles: add just fields with these roles.
    """
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    names = only if only is not None else tuple(by_name)
    if getattr(parser, "config", None) is None and hasattr(parser, "config"):
        parser.config = f"{cls.__module__}:{cls.__qualname__}"
    for name in names:
        f = by_name[name]
        if name in skip or "ppmech.role" not in f.metadata:
            continue
        if roles and f.metadata["ppmech.role"] not in roles:
            continue
        options = flag_options(cls, name)
        if not options.pop("cli", True):
            continue
        flag = options.pop("flag", "--" + name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_of(cls, name)}
        kwargs.update(_value_options(hints[name], f.default))
        if kwargs.get("action") == "store_false":
            flag = options.pop("negative_flag", "--no-" + flag.removeprefix("--"))
        kwargs.update(options)
        parser.add_argument(flag, **kwargs)


def _value_options(annotation: Any, default: Any) -> dict[str, Any]:
    """argparse options for a field of type ``annotation``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if annotation is bool:
        return {"action": "store_false" if default is True else "store_true"}
    if is_union and len(args) == 1:
        return _value_options(args[0], None)
    if is_union and set(args) == {int, str}:
        return {"type": _int_or_word}
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        return {"nargs": "+", "type": item if item in (int, float) else str}
    if annotation in (int, float):
        return {"type": annotation}
    return {}


def _int_or_word(value: str) -> int | str:
    """A whole number, or a word such as ``auto`` (the config checks which words it takes)."""
    try:
        return int(value)
    except ValueError:
        if value.strip().isidentifier():
            return value.strip()
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, not {value!r}") from None


def load_config_file(cls: Any, path: str | Path) -> dict[str, Any]:
    """The settings of TOML file ``path`` for config dataclass ``cls``: ``{field: value}``, checked.

    Keys are ``cls``'s field names. A list becomes a tuple where the field is a tuple.

    Raises:
        PPMechError: missing or unreadable file, bad TOML (naming the file), or an unknown
            key (naming the closest valid one).
    """
    if not str(path).strip():  # before Path(), which reads "" as "."
        raise PPMechError("the config file path is empty", "give a TOML file, or leave --config out")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PPMechError(f"config file {path} not found", "check the path") from None
    except IsADirectoryError:
        raise PPMechError(
            f"config file {path} is a directory", f"pass a TOML file (a run's is {path / 'config.toml'})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PPMechError(
            f"cannot read config file {path}: {exc}", "check the path and its permissions"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PPMechError(f"config file {path} is not valid TOML ({exc})", "fix the file") from None
    return config_values(cls, data, str(path))


def config_values(cls: Any, data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` checked against the fields of ``cls`` (unknown key: one line naming the closest)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            what = "section" if isinstance(value, dict) else "key"
            message = unknown_key_message(key, names).replace("unknown key", f"unknown {what}")
            raise PPMechError(f"{source}: {message}", f"the keys are the setting names: {', '.join(names)}")
        out[key] = _typed(key, value, _strip_none(hints[key]), source)
    return out


def _typed(key: str, value: Any, annotation: Any, source: str) -> Any:
    """``value`` as field ``key`` of type ``annotation`` holds it, or one line naming the key.

    A flag's value is typed by argparse; a file's is whatever TOML made of it, so it is checked
    here (a string where a number belongs would otherwise end in a traceback).
    """
    whole = isinstance(value, int) and not isinstance(value, bool)
    if annotation is bool:
        ok, want = isinstance(value, bool), "true or false"
    elif annotation is int:
        ok, want = whole, "a whole number"
    elif annotation is float:
        ok, want = whole or isinstance(value, float), "a number"
        value = float(value) if ok else value
    elif annotation is str:
        ok, want = isinstance(value, str), "a string"
    elif typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        ok = isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)
        want = f"a list of {'whole numbers' if item is int else item.__name__ + 's'}"
        value = tuple(value) if ok else value
    elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
        # int | str (batch_size: a number or "auto"); the config checks which words it takes.
        ok, want = whole or isinstance(value, str), "a whole number or a word"
    else:
        ok, want = True, ""
    if not ok:
        raise PPMechError(f"{source}: `{key}` must be {want} (got {value!r})", "fix the file")
    return value


def _strip_none(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def config_from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """``cls`` built from ``--config``'s file (if any), then the flags given, then ``overrides``.

    A flag registered with ``default=argparse.SUPPRESS`` and not given is absent from ``args``,
    so the file's value, or else the dataclass's own default, applies. A list from a flag with
    several values becomes a tuple where the field is a tuple.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    config_file = getattr(args, "config_file", None)
    if config_file is not None:
        values |= load_config_file(cls, config_file)
    for key, value in vars(args).items():
        if key in names:
            if isinstance(value, list) and typing.get_origin(_strip_none(hints[key])) is tuple:
                value = tuple(value)
            values[key] = value
    return cls(**(values | overrides))


def field_defaults(cls: Any) -> dict[str, Any]:
    """Each field's default (``default_factory`` called); fields without one are left out."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out
