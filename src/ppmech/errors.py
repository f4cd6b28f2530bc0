"""User-facing errors.

Every problem a user can cause (bad input, a missing file, an impossible
configuration) is raised as :class:`PPMechError`. The CLI prints it as one line
that names the problem and the fix, and exits with status 2; the Python API lets
it propagate so notebooks see an ordinary exception.
"""

from __future__ import annotations


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
