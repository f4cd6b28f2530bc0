"""User-facing errors.

Every problem a user can cause (bad input, a missing file, an impossible
configuration) is raised as :class:`PPMechError`. The CLI prints it as one line
that names the problem and the fix, and exits with status 2; the Python API lets
it propagate so notebooks see an ordinary exception.

Errors raised by configs and library functions name the *field* in backticks
(`` `max_steps` must be >= 1``), never a command-line flag; the CLI rewrites each
field it has a flag for (``--max-steps``) when it prints the error
(:meth:`PPMechError.for_cli`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_FIELD = re.compile(r"`([a-z][a-z0-9_]*)`")


class PPMechError(Exception):
    """A problem the user can fix.

    Args:
        problem: what is wrong, stated plainly.
        fix: what to do about it.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}")

    def one_line(self) -> str:
        """The error as a single line for the terminal."""
        return " ".join(f"{self.problem}; {self.fix}".split())

    def for_cli(self, flags: Mapping[str, str]) -> str:
        """:meth:`one_line` with each `field` that has a flag in ``flags`` (field -> flag) as the flag."""
        return _FIELD.sub(lambda m: flags.get(m[1], m[0]), self.one_line())
