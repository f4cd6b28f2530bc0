"""The ``ppmech`` command line.

Each command group lives in its own module with a ``register(subparsers)``
function; :data:`COMMAND_MODULES` lists them. Every user-fixable problem is a
:class:`~ppmech.errors.PPMechError`, printed as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ppmech import __version__
from ppmech.errors import PPMechError

COMMAND_MODULES = [
    "ppmech.cli.measure",
    "ppmech.cli.verify",
    "ppmech.cli.monitor",
    "ppmech.cli.steer",
    "ppmech.cli.sweep",
    "ppmech.cli.report",
    "ppmech.cli.track",
]


@functools.cache
def config_defaults(spec: str) -> dict[str, Any]:
    """Field defaults of a config dataclass named ``"module:Class"`` (imported only for --help)."""
    from ppmech.cli.config import field_defaults

    module, name = spec.split(":")
    return field_defaults(getattr(importlib.import_module(module), name))


def show_default(default: Any) -> str:
    """A default as ``--help`` writes it: a list or tuple as its space-separated items (empty: none)."""
    if isinstance(default, tuple | list):
        return " ".join(map(str, default)) or "none"
    return str(default)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the layout of descriptions and examples, and shows every flag's default.

    A flag that sets a config field has no argparse default (``SUPPRESS``: the config
    dataclass owns it); its default is read from the dataclass when help is printed
    (only then: importing a config can import torch).
    """

    config: str | None = None

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is argparse.SUPPRESS and self.config:
            default = config_defaults(self.config).get(action.dest, argparse.SUPPRESS)
        # Identity, not equality: a default of 0 must still be shown (0 == False).
        shown = not any(default is v for v in (None, False, True, argparse.SUPPRESS)) and default != ""
        # A help text that states its default itself ("(default 0)", "default: all") is not given a second.
        if shown and action.option_strings and "default" not in text:
            value = show_default(default)
            text += f" (default: {value.replace('%', '%%')})"
        return text


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line, with exit status 2.

    Args:
        config: ``"module:Class"`` of the config dataclass behind the command, whose
            defaults ``--help`` shows.
    """

    def __init__(
        self,
        *args: Any,
        config: str | None = None,
        build: Callable[[argparse.ArgumentParser], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.config = config
        # Flags built from a config dataclass are added when this command is parsed or its help
        # shown, not when `ppmech` starts: importing a config can import torch.
        self._build = build
        kwargs.setdefault("formatter_class", HelpFormatter)
        # No prefix matching: `--prompt 3` must not silently mean `--prompts 3`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def ready(self) -> OneLineParser:
        """Add the flags that wait for this command to be used (see ``build``); returns self."""
        build, self._build = self._build, None
        if build is not None:
            build(self)
        return self

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.ready()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.ready()
        return super().format_help()

    def format_usage(self) -> str:
        self.ready()
        return super().format_usage()

    def _get_formatter(self) -> argparse.HelpFormatter:
        formatter = super()._get_formatter()
        if isinstance(formatter, HelpFormatter):
            formatter.config = self.config
        return formatter

    def defaults(self) -> dict[str, Any]:
        """Each flag's default as ``--help`` shows it (dest -> value; SUPPRESS resolved)."""
        self.ready()
        config = config_defaults(self.config) if self.config else {}
        return {
            a.dest: config.get(a.dest, a.default) if a.default is argparse.SUPPRESS else a.default
            for a in self._actions
        }

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")

    def flags(self) -> list[str]:
        """This command's own long flags, in the order of its help."""
        self.ready()
        return [
            opt
            for action in self._actions
            for opt in action.option_strings
            if opt.startswith("--") and opt not in ("--help", "--version")
        ]

    def unknown(self, extras: list[str]) -> NoReturn:
        """Refuse flags this command does not have, naming the ones it does."""
        unknown = [e for e in extras if e.startswith("-")] or extras
        own = self.flags()
        hints = []
        for flag in unknown:
            close = difflib.get_close_matches(flag.split("=")[0], own, n=1, cutoff=0.75)
            if close:
                hints.append(f"{flag}: did you mean {close[0]}?")
        takes = f"this command takes {', '.join(own)}" if own else "this command takes no flags"
        hint = f" ({'; '.join(hints)})" if hints else ""
        self.error(f"unrecognized {', '.join(unknown)}{hint}; {takes}")


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser that ``args`` were parsed by."""
    current = parser
    while True:
        action = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, action.dest, None) if action is not None else None
        if action is None or name is None:
            return current
        current = action.choices[name]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ppmech",
        description="Momentum-point-perplexity mechanics of language models.",
    )
    parser.add_argument("--version", action="version", version=f"ppmech {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def command_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """Field name -> long flag of the command that ``args`` invoked (for :meth:`PPMechError.for_cli`)."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                flags |= command_flags(chosen, args)
        elif action.option_strings and action.dest != "help":
            flags[action.dest] = max(action.option_strings, key=len)
    return flags


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ppmech`` script; returns the exit status."""
    # Quieten libraries' own chatter; ppmech prints what matters.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        chosen = chosen_parser(parser, args)
        if isinstance(chosen, OneLineParser):
            chosen.unknown(extras)
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        return int(args.func(args) or 0)
    except PPMechError as exc:
        print(f"ppmech: error: {exc.for_cli(command_flags(parser, args))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # A path the user gave cannot be read or written (a file where a directory
        # should be, no permission, a full disk): one line, not a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            print(
                f"ppmech: error: no space left on device{where}; free some disk space, or write "
                "to another disk",
                file=sys.stderr,
            )
            return 2
        print(
            f"ppmech: error: {exc.strerror or exc}{where}; check the path, its permissions and free space",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            "ppmech: interrupted; an unfinished run directory can be continued with --resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
