"""Output directories: the ``.ppmech-run`` marker, what each kind may hold, and staged replacement.

See :mod:`ppmech.artifacts` for the rules. File writes, renames and deletes go through
:mod:`ppmech.artifacts.files` by module attribute (``files._rename``), so that a test can
inject a crash at any one of them.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppmech.artifacts import files
from ppmech.artifacts.files import OutputLock
from ppmech.errors import PPMechError

MARKER = ".ppmech-run"
COMMIT_FILE = "summary.json"

# What each kind of output may contain (paths relative to its directory, fnmatch
# patterns; ``*`` also matches ``/``). Anything else is a file ppmech did not
# write, and ppmech will not delete a directory holding one.
KINDS: dict[str, tuple[str, ...]] = {
    "measure": (
        "summary.json",
        "config.toml",  # the resolved settings (`--config` reads it back)
        "steps.parquet",
        "trajectories.parquet",
        "hidden",
        "hidden/batch-*.npy",
        "parts",
        "parts/config.json",
        "parts/batch-*.parquet",
        # `make demo` writes the run's HTML report into the run directory (`ppmech report`); it is
        # derived from the run and goes with it when the run is replaced.
        "report.html",
    ),
    "steer": ("summary.json", "steps.parquet", "config.toml"),
    "steering-evaluation": ("summary.json", "items.csv", "baselines.csv"),
    # `verify`'s directory is a cache that later runs reuse (never replaced whole): its measure
    # runs (each a marked measure output, checked as such), cached analyses, and the ledger.
    "verify": ("claims.md", "claims.json", "runs", "runs/*", "analyses", "analyses/*"),
}
REUSABLE = ("verify",)
"""Kinds whose directory is updated in place by later commands, not replaced."""
# Temporary files of interrupted atomic writes, anywhere in an output.
_TEMPORARY = ("*.ppmech-tmp",)


# --------------------------------------------------------------------------- paths and markers


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of a directory ppmech made, or ``None`` when it has none (or an unreadable one)."""
    try:
        data = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def make_marked_dir(directory: Path, kind: str) -> None:
    """Create ``directory`` (and parents) and mark it as a ppmech output of ``kind``."""
    directory.mkdir(parents=True, exist_ok=True)
    files.write_json(
        directory / MARKER,
        {
            "kind": kind,
            "created": files._now(),
            "pid": os.getpid(),
            "host": files._host(),
            "ppmech": files.ppmech_version(),
        },
    )


def _make_or_undo(directory: Path, kind: str) -> None:
    """:func:`make_marked_dir`; when it fails (a full disk), a directory it created is removed again."""
    existed = directory.exists()
    try:
        make_marked_dir(directory, kind)
    except BaseException:
        if not existed and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()  # nothing in it: the marker was not written (its temporary is gone)
        raise


def foreign_entries(directory: Path, kind: str) -> list[str]:
    """Entries under ``directory`` that ppmech does not write for ``kind`` (relative paths)."""
    allowed = (MARKER, *KINDS.get(kind, ()), *_TEMPORARY)
    foreign = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_symlink() or not any(fnmatch.fnmatch(relative, p) for p in allowed):
            foreign.append(relative)
    # Report the outermost foreign entry only ("notes/" rather than each file in it).
    return [f for f in foreign if not any(f.startswith(g + "/") for g in foreign if g != f)]


def is_complete(directory: Path) -> bool:
    """A ppmech output that reached its last write (marker and ``summary.json``)."""
    return (directory / MARKER).is_file() and (directory / COMMIT_FILE).is_file()


def _remove_owned(directory: Path, kind: str) -> None:
    """Delete a directory ppmech wrote, after checking that it holds nothing else.

    Raises:
        PPMechError: no marker of ``kind``, or files ppmech did not write.
    """
    if not any(directory.iterdir()):
        directory.rmdir()  # e.g. a write killed between mkdir and the marker: nothing to lose
        return
    marker = read_marker(directory)
    if marker is None or marker.get("kind") != kind:
        raise PPMechError(
            f"{directory} has a ppmech name but no {kind} marker; refusing to delete it",
            "move it out of the way yourself",
        )
    foreign = foreign_entries(directory, kind)
    if foreign:
        raise PPMechError(
            f"{directory} holds files ppmech did not write ({', '.join(foreign[:3])})",
            "move them out of the way yourself",
        )
    # summary.json goes first, so that an interrupted delete never reads as complete, and
    # the marker last, so that it still reads as ppmech's (and can be deleted later).
    order = sorted(directory.iterdir(), key=lambda c: (c.name != COMMIT_FILE, c.name == MARKER, c.name))
    for child in order:
        files._delete(child)
    directory.rmdir()


# --------------------------------------------------------------------------- outputs


@dataclass
class _Paths:
    target: Path
    staging: Path
    trash: Path

    @classmethod
    def of(cls, target: Path) -> _Paths:
        return cls(
            target=target,
            staging=target.with_name(f".{target.name}.ppmech-staging"),
            trash=target.with_name(f".{target.name}.ppmech-trash"),
        )


def staging_path(target: str | Path) -> Path:
    """Where a replacement of ``target`` is written until it is complete."""
    return _Paths.of(Path(target)).staging


class Output:
    """An output directory being written: locked, checked, staged and committed.

    Use it as a context manager around the whole write::

        with Output(out, "steer", overwrite=overwrite) as output:
            write_parquet(output.path / "steps.parquet", steps)
            write_json(output.path / "summary.json", summary)   # last
            output.commit()

    Args:
        target: the output directory the user named.
        kind: a key of :data:`KINDS`; recorded in the marker.
        overwrite: replace an existing output of the same kind (staged: the old
            one stays until the new one is complete).
        resume: continue an interrupted output (``resumable`` kinds only).
        resumable: write a fresh output in place, so that an interrupted write
            can be resumed there; otherwise every write is staged.

    Attributes:
        path: where to write (the target itself, or its staging directory).
        resuming: an interrupted output is being continued at ``path``.

    Raises:
        PPMechError: ``--overwrite`` with ``--resume``, another writer holds the
            lock, or the target is a file, a foreign directory, another kind's
            output, or an output that needs ``--overwrite``/``--resume``.
    """

    def __init__(
        self,
        target: str | Path,
        kind: str,
        overwrite: bool = False,
        resume: bool = False,
        resumable: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown output kind {kind!r}")
        if not str(target).strip():
            raise PPMechError("`out` is empty", "give `out` a directory")
        if overwrite and resume:
            raise PPMechError(
                "`overwrite` and `resume` conflict (one starts again, the other continues)",
                "pass only one of them",
            )
        if resume and not resumable:
            raise PPMechError(f"a {kind} output cannot be resumed", "run it again with `overwrite`")
        self.paths = _Paths.of(Path(os.path.abspath(target)))
        self.target = Path(target)
        self.kind = kind
        self.overwrite = overwrite
        self.resume = resume
        self.resumable = resumable
        self.path = self.target
        self.resuming = False
        self.staged = False
        self.committed = False
        self._lock = OutputLock(self.paths.target)

    # ---- context management

    def __enter__(self) -> Output:
        self.open()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(failed=exc_type is not None)
        if isinstance(exc, PPMechError | OSError):
            named = self.named_for_user(exc)
            if named is not exc:
                raise named from exc

    def named_for_user(self, exc: PPMechError | OSError) -> PPMechError | OSError:
        """``exc`` naming the user's output where it names the staging directory (an internal name).

        A failure while writing a replacement (a full disk) happens in ``.NAME.ppmech-staging``;
        the user asked for ``NAME``, so that is what the message names.
        """
        internal = str(self.paths.staging)
        shown = str(self.target)
        if isinstance(exc, PPMechError) and internal in exc.problem:
            return PPMechError(exc.problem.replace(internal, shown), exc.fix)
        if isinstance(exc, OSError) and internal in str(exc.filename or ""):
            return OSError(exc.errno, exc.strerror or str(exc), str(exc.filename).replace(internal, shown))
        return exc

    def preflight(self) -> None:
        """Every refusal :meth:`open` would make, without writing anything.

        Call it before expensive work (loading a model) so that a taken ``--out``
        is refused at once; :meth:`open` checks again under the lock.
        """
        self._check_target_type()
        if not self.paths.target.parent.is_dir():
            return  # nothing there yet (open() makes the parents)
        with self._lock:
            self._plan(recovered=False)

    def open(self) -> None:
        """Take the lock, recover from an interrupted swap, and decide where to write."""
        self._check_target_type()
        self._lock.acquire()
        try:
            self._recover()
            self._apply(*self._plan(recovered=True))
        except (PPMechError, OSError) as exc:
            self._lock.release()
            named = self.named_for_user(exc)
            if named is exc:
                raise
            raise named from exc
        except BaseException:
            self._lock.release()
            raise

    def close(self, failed: bool = False) -> None:
        """Release the lock; a failed, non-resumable staged write is discarded."""
        try:
            discard = failed and self.staged and not self.resumable and not self.committed
            if discard and self.paths.staging.exists() and not is_complete(self.paths.staging):
                _remove_owned(self.paths.staging, self.kind)
        finally:
            self._lock.release()

    # ---- decisions

    def _check_target_type(self) -> None:
        from ppmech.artifacts.rule import check_location

        target = self.paths.target
        check_location(target, self.target, "`out`")  # not /proc, a writable parent
        if target.exists() and not target.is_dir():
            raise PPMechError(
                f"{self.target} is a file, not a ppmech output directory",
                "choose another `out` (ppmech never replaces a file it did not write)",
            )

    def _recover(self) -> None:
        p = self.paths
        if p.trash.exists():
            _remove_owned(p.trash, self.kind)  # an old output whose deletion was interrupted
        if p.staging.exists() and is_complete(p.staging):
            # A finished replacement whose swap was interrupted: finish the swap, once
            # both sides are known to be ours (this refuses otherwise).
            self._owned_state(p.staging)
            self._owned_state(p.target)
            self._swap()

    def _owned_state(self, directory: Path) -> str:
        """``fresh`` (absent or empty), ``complete`` or ``interrupted``; refuses what is not ours."""
        if not directory.exists() or not any(directory.iterdir()):
            return "fresh"
        marker = read_marker(directory)
        shown = self.target if directory == self.paths.target else directory
        if marker is None:
            legacy = (directory / COMMIT_FILE).is_file()
            raise PPMechError(
                f"{shown} is not empty and was not made by this ppmech (no {MARKER} marker"
                + ("; outputs of ppmech before 0.2 have none" if legacy else "")
                + ")",
                "choose another `out`; ppmech replaces only directories it made"
                + (" (delete an old one yourself)" if legacy else ""),
            )
        if marker["kind"] != self.kind:
            raise PPMechError(
                f"{shown} holds a ppmech {marker['kind']} output, not a {self.kind} output",
                "choose another `out`",
            )
        foreign = foreign_entries(directory, self.kind)
        if foreign:
            raise PPMechError(
                f"{shown} holds files ppmech did not write ({', '.join(foreign[:3])})",
                "move them out of it, or choose another `out`",
            )
        return "complete" if is_complete(directory) else "interrupted"

    def _plan(self, recovered: bool) -> tuple[str, bool]:
        """Where to write: ``(action, drop_staging)``; ``action`` is ``fresh``, ``staged``,
        ``resume-target`` or ``resume-staging``. Raises the refusals; changes nothing."""
        p = self.paths
        state = self._owned_state(p.target)
        staged = "fresh" if not p.staging.exists() else self._owned_state(p.staging)
        if staged == "complete" and not recovered:
            state, staged = "complete", "fresh"  # open() will swap it in first
        if self.resume:
            if staged == "interrupted":
                return "resume-staging", False
            if state == "interrupted":
                return "resume-target", False
            if state == "complete":
                raise PPMechError(
                    f"{self.target} already holds a complete run; there is nothing to resume",
                    "pass `overwrite` (without `resume`) to replace it, or choose another `out`",
                )
            return "fresh", False
        if self.overwrite:
            return ("fresh" if state == "fresh" else "staged"), p.staging.exists()
        if state == "complete":
            raise PPMechError(
                f"{self.target} already holds a complete run",
                "pass `overwrite` to replace it, or choose another `out`",
            )
        if self.resumable and "interrupted" in (state, staged):
            raise PPMechError(
                f"{self.target} holds an interrupted run",
                "pass `resume` to continue it, or `overwrite` to start again",
            )
        if state == "interrupted":
            raise PPMechError(
                f"{self.target} holds an interrupted {self.kind} output",
                "pass `overwrite` to replace it, or choose another `out`",
            )
        # A leftover staging copy here is a crashed earlier write of ours (we hold the lock).
        return "fresh", p.staging.exists()

    def _apply(self, action: str, drop_staging: bool) -> None:
        p = self.paths
        if drop_staging:
            _remove_owned(p.staging, self.kind)
        if action == "resume-staging":
            self.path, self.staged, self.resuming = p.staging, True, True
        elif action == "resume-target":
            self.path, self.resuming = self.target, True
        elif action == "fresh" and self.resumable:
            _make_or_undo(p.target, self.kind)
            self.path = self.target
        else:
            _make_or_undo(p.staging, self.kind)
            self.path, self.staged = p.staging, True

    # ---- commit

    def _swap(self) -> None:
        p = self.paths
        if p.trash.exists():
            _remove_owned(p.trash, self.kind)
        if p.target.exists():
            if any(p.target.iterdir()):
                files._rename(p.target, p.trash)
            else:
                p.target.rmdir()
        files._rename(p.staging, p.target)
        files._fsync_dir(p.target.parent)
        if p.trash.exists():
            _remove_owned(p.trash, self.kind)

    def commit(self) -> list[str]:
        """Put the finished output in place (swap a staged one in); return its files.

        Call it after the last file (``summary.json``) was written.
        """
        if not is_complete(self.paths.staging if self.staged else self.paths.target):
            raise RuntimeError(f"commit() before {COMMIT_FILE} was written")
        if self.staged:
            self._swap()
        self.committed = True
        self.path = self.target
        return files_of(self.target)


def files_of(directory: Path) -> list[str]:
    """The files of an output (relative paths, sorted), without the marker and temporaries."""
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != MARKER and not p.name.endswith(".ppmech-tmp")
    )


# --------------------------------------------------------------------------- the rule for directories


def _with_flags(exc: PPMechError, flag: str, replace_flag: str) -> PPMechError:
    """``exc`` (from :class:`Output`, which names fields) naming the command's options instead."""

    def named(text: str) -> str:
        return text.replace("`out`", flag).replace("`overwrite`", replace_flag)

    return PPMechError(named(exc.problem), named(exc.fix))


def _check_reusable(shown: Path, target: Path, kind: str, flag: str) -> None:
    if not target.exists() or not any(target.iterdir()):
        return
    marker = read_marker(target)
    if marker is None:
        legacy = any((target / name).exists() for name in KINDS[kind] if "*" not in name)
        raise PPMechError(
            f"{shown} is not empty and is not a ppmech {kind} directory (no {MARKER} marker"
            + (f"; {kind} directories of ppmech before 0.2 have none" if legacy else "")
            + ")",
            f"choose another {flag}; ppmech writes only into directories it made",
        )
    if marker["kind"] != kind:
        raise PPMechError(
            f"{shown} holds a ppmech {marker['kind']} output, not a {kind} directory",
            f"choose another {flag}",
        )
    from ppmech.artifacts.rule import has_mark

    # The files a reusable output rewrites must carry ppmech's mark (a user's claims.md put
    # into a verify directory is theirs): refused now, not after the work.
    unmarked = [
        name
        for name in KINDS[kind]
        if "*" not in name and (target / name).is_file() and not has_mark(target / name)
    ]
    foreign = foreign_entries(target, kind) + unmarked
    if foreign:
        raise PPMechError(
            f"{shown} holds files ppmech did not write ({', '.join(foreign[:3])})",
            f"move them out of it, or choose another {flag}",
        )


def check_output_dir(
    path: str | os.PathLike[str],
    *,
    kind: str,
    replace: bool,
    flag: str = "--out",
    replace_flag: str = "--overwrite",
) -> Path:
    """Refuse an output directory that may not be written; call it before any work.

    The rule of :mod:`ppmech.artifacts.rule` for directories: a new path is created; an
    existing one is written only when it carries the ``.ppmech-run`` marker of ``kind`` and
    holds nothing but what ppmech writes for ``kind``, and (except for :data:`REUSABLE`
    kinds, which are updated in place) only with ``replace``. Writes nothing but the
    transient lock file beside the target.

    Args:
        path: the directory the user gave.
        kind: a key of :data:`KINDS`.
        replace: the command's replace flag was given.
        flag, replace_flag: the command's options, named in messages.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        PPMechError: the message names ``path``.
    """
    from ppmech.artifacts.rule import check_location

    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    if not str(path).strip():
        raise PPMechError(f"{flag} is empty", f"give {flag} a directory")
    shown = Path(path)
    target = Path(os.path.abspath(shown))
    check_location(target, shown, flag)
    if os.path.lexists(target) and not target.is_dir():
        raise PPMechError(
            f"{shown} is a file, not a directory",
            f"choose another {flag} (ppmech never replaces a file with a directory)",
        )
    if kind in REUSABLE:
        _check_reusable(shown, target, kind, flag)
        return shown
    try:
        Output(shown, kind, overwrite=replace).preflight()
    except PPMechError as exc:
        raise _with_flags(exc, flag, replace_flag) from exc
    return shown


def open_output_dir(path: str | os.PathLike[str], *, kind: str, flag: str = "--out") -> Path:
    """Check a :data:`REUSABLE` output directory under its lock, create it and mark it.

    Returns:
        ``path`` as a :class:`~pathlib.Path`, now an existing directory with the marker.
    """
    if kind not in REUSABLE:
        raise ValueError(f"{kind!r} outputs are written with Output (staged), not opened in place")
    shown = check_output_dir(path, kind=kind, replace=True, flag=flag)
    target = Path(os.path.abspath(shown))
    target.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(target):
        _check_reusable(shown, target, kind, flag)
        if read_marker(target) is None:
            make_marked_dir(target, kind)
    return shown
