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


SEED_LIMIT = 2**32
"""Seeds lie in ``[0, 2**32)``: numpy's generators refuse negative seeds, and the
per-trajectory sampling seeds (``seed * 1_000_003 + index``) must stay inside the
64-bit range that ``torch.Generator.manual_seed`` accepts."""


def check_seed(seed: object, field: str = "seed") -> None:
    """Refuse a seed outside ``[0, 2**32)`` (or not an integer) with one line.

    Raises:
        PPMechError: the seed is not an integer in range.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise PPMechError(
            f"`{field}` must be an integer from 0 to {SEED_LIMIT - 1} (got {seed!r})", "use e.g. 0"
        )
