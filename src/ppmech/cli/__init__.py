"""The ``ppmech`` command line.

Each command group lives in its own module with a ``register(subparsers)``
function; :data:`COMMAND_MODULES` lists them. Every user-fixable problem is a
:class:`~ppmech.errors.PPMechError`, printed as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from ppmech import __version__
from ppmech.errors import PPMechError

COMMAND_MODULES = [
    "ppmech.cli.measure",
    "ppmech.cli.verify",
    "ppmech.cli.monitor",
    "ppmech.cli.steer",
    "ppmech.cli.report",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


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
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PPMechError as exc:
        print(f"ppmech: error: {exc.for_cli(command_flags(parser, args))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # A path the user gave cannot be read or written (a file where a directory
        # should be, no permission, a full disk): one line, not a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
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
