"""Output files and directories: the one place for ppmech's rules on writing them.

Every command that writes goes through this module, so the rules hold everywhere:

* **Atomic files.** A file is written to a temporary name beside its target,
  flushed to disk (``fsync``), and renamed over the target: a reader sees the
  old file or the new one, never half of one. A full disk is reported as "no
  space left on device", with the path.
* **A marker in every directory ppmech makes.** ``.ppmech-run`` (JSON: ``kind``,
  ``created``, ``pid``, ``host``, ``ppmech``) names what wrote the directory.
  ``--overwrite`` replaces only a directory that carries the marker of the same
  kind and holds nothing but files ppmech writes for that kind; a user's file,
  a foreign directory, or another kind's output (``steer --overwrite`` on a
  ``measure`` run) is refused with one line, with or without ``--overwrite``.
* **One writer per output.** :class:`Output` holds an exclusive ``flock`` on a
  lock file beside the target (``.NAME.ppmech-lock``) for the whole write; a
  second writer is refused with one line naming the holder's pid and host. The
  kernel releases a ``flock`` when its process dies, however it dies (even
  ``SIGKILL``), so a lock left by a killed process never blocks: the stale lock
  file is simply locked again. The lock is per machine (``flock`` on a local
  file system); that suffices for sweeps across nodes because a sweep's driver,
  one process, writes the run directories.
* **Staged replacement.** A replacement (``--overwrite``) is written in a
  sibling ``.NAME.ppmech-staging`` and swapped in only when complete (rename the
  old directory to ``.NAME.ppmech-trash``, rename the new one to ``NAME``, delete
  the trash). Until then the old output stays whole; a crash leaves it
  untouched. A staging copy that reached its ``summary.json`` is committed by
  the next writer (the swap itself was interrupted); one that did not is
  resumable (``measure --resume``) or discarded (``--overwrite``).

Layout of states for an output ``NAME`` of a resumable kind (``measure``)::

    NAME/.ppmech-run + summary.json     complete
    NAME/.ppmech-run, no summary.json   interrupted (resume in place)
    .NAME.ppmech-staging/               an interrupted replacement (resume there)

A *complete* output is one whose marker and ``summary.json`` exist; every writer
writes ``summary.json`` last.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import hashlib
import io
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppmech.errors import PPMechError

MARKER = ".ppmech-run"
COMMIT_FILE = "summary.json"

# What each kind of output may contain (paths relative to its directory, fnmatch
# patterns; ``*`` also matches ``/``). Anything else is a file ppmech did not
# write, and ppmech will not delete a directory holding one.
KINDS: dict[str, tuple[str, ...]] = {
    "measure": (
        "summary.json",
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
    "steer": ("summary.json", "steps.parquet"),
    "steering-evaluation": ("summary.json", "items.csv", "baselines.csv"),
}
# Temporary files of interrupted atomic writes, anywhere in an output.
_TEMPORARY = ("*.ppmech-tmp",)


# --------------------------------------------------------------------------- files


def _rename(source: Path, target: Path) -> None:
    """``os.rename``; one name so that tests can inject a crash between two renames."""
    os.rename(source, target)


def _delete(path: Path) -> None:
    """Delete one file or directory tree (a seam for crash-injection tests, like :func:`_rename`)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (cheap; skipped where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def no_space(exc: OSError, path: Path) -> bool:
    """Whether a failed write to ``path`` ran out of disk space (or quota).

    Some libraries lose the errno (numpy's ``tofile`` says "N requested and M
    written"), so an errno-less failure on a nearly full file system counts too.
    """
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if exc.errno is None:
        try:
            return shutil.disk_usage(path.parent if not path.is_dir() else path).free < 1 << 20
        except OSError:
            return False
    return False


def disk_full_error(path: Path) -> PPMechError:
    return PPMechError(
        f"no space left on device while writing {path}",
        "free some disk space, or write to another disk",
    )


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was.
    A full disk becomes a one-line :class:`PPMechError`.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.ppmech-tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if no_space(exc, target):
            raise disk_full_error(target) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically; NaN and inf are refused (store them as null)."""
    write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def write_parquet(path: str | Path, table: Any) -> None:
    """Write a pyarrow table or a pandas frame (without its index) as Parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_csv(path: str | Path, frame: Any) -> None:
    """Write a pandas frame (without its index) as CSV, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_npy(path: str | Path, array: Any) -> None:
    """Write a numpy array as ``.npy``, atomically.

    Serialised in memory first: ``np.save`` on a file loses the errno of a full disk.
    """
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes(path, buffer.getvalue())


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_file(root: Path, relative: str, rows: int | None = None) -> dict[str, Any]:
    """What a summary records about one of its files: bytes, SHA-256, rows (tables)."""
    path = root / relative
    entry: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
    if rows is not None:
        entry["rows"] = int(rows)
    return entry


def verify_file(root: Path, relative: str, expected: dict[str, Any], fix: str) -> None:
    """Refuse a file that is missing or differs from what its summary recorded.

    Raises:
        PPMechError: the file is missing, or its size or SHA-256 differ.
    """
    path = root / relative
    if not path.is_file():
        raise PPMechError(f"{relative} of {root} is missing (its summary.json lists it)", fix)
    if path.stat().st_size != expected.get("bytes") or sha256(path) != expected.get("sha256"):
        raise PPMechError(
            f"{relative} of {root} is not the file its summary.json describes (size or SHA-256 "
            "differ): it was changed or replaced after the run was written",
            fix,
        )


# --------------------------------------------------------------------------- paths and markers


def output_path(value: str | os.PathLike[str] | None, default: str, flag: str = "--out") -> Path:
    """The output path a user asked for: ``default`` when not given, an empty value refused.

    (``Path("")`` is ``.``, so the check must see the string the user typed.)
    """
    if value is None:
        return Path(default)
    if not str(value).strip():
        raise PPMechError(f"{flag} is empty", f"give {flag} a path, or leave it out for {default}")
    return Path(value)


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of a directory ppmech made, or ``None`` when it has none (or an unreadable one)."""
    try:
        data = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def _host() -> str:
    return socket.gethostname()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_marked_dir(directory: Path, kind: str) -> None:
    """Create ``directory`` (and parents) and mark it as a ppmech output of ``kind``."""
    from ppmech import __version__

    directory.mkdir(parents=True, exist_ok=True)
    write_json(
        directory / MARKER,
        {"kind": kind, "created": _now(), "pid": os.getpid(), "host": _host(), "ppmech": __version__},
    )


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
        _delete(child)
    directory.rmdir()


# --------------------------------------------------------------------------- the lock


class OutputLock:
    """An exclusive, cross-process lock on an output path (see the module docstring).

    The lock file ``.NAME.ppmech-lock`` beside the target holds the holder's pid,
    host and start time, for the refusal message. It is removed on release; a
    writer that finds the file replaced after locking it retries, so two writers
    can never both hold the lock.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.with_name(f".{target.name}.ppmech-lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`PPMechError` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise PPMechError(
                    f"{self.target} is being written by another ppmech process ({holder})",
                    "wait for it to finish, or choose another `out`",
                ) from None
            except OSError:
                os.close(fd)
                raise
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is None or (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev):
                os.close(fd)  # the previous holder removed the file while we waited: lock the new one
                continue
            break
        info = {"pid": os.getpid(), "host": _host(), "since": _now()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info.get("pid"):
            return "pid unknown: it is just starting"
        return f"pid {info['pid']} on {info.get('host', '?')}, since {info.get('since', '?')}"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


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
        target = self.paths.target
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
            make_marked_dir(p.target, self.kind)
            self.path = self.target
        else:
            make_marked_dir(p.staging, self.kind)
            self.path, self.staged = p.staging, True

    # ---- commit

    def _swap(self) -> None:
        p = self.paths
        if p.trash.exists():
            _remove_owned(p.trash, self.kind)
        if p.target.exists():
            if any(p.target.iterdir()):
                _rename(p.target, p.trash)
            else:
                p.target.rmdir()
        _rename(p.staging, p.target)
        _fsync_dir(p.target.parent)
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


def check_file_target(path: str | Path, is_ours: Callable[[Path], bool], overwrite: bool, what: str) -> None:
    """Refuse a single-file output path that may not be written (see :func:`replace_file`).

    Call it before expensive work; :func:`replace_file` checks again under the lock.
    """
    target = Path(path)
    if not str(path).strip():
        raise PPMechError("`out` is empty", f"give `out` a {what} file name")
    if target.is_dir():
        raise PPMechError(f"{target} is a directory, not a {what} file", "give `out` a file name")
    if target.exists():
        if not overwrite:
            raise PPMechError(
                f"{target} already exists", "pass `overwrite` to replace it, or choose another `out`"
            )
        if not is_ours(target):
            raise PPMechError(
                f"{target} is not a {what} written by ppmech",
                "choose another `out` (ppmech replaces only files it wrote)",
            )


def replace_file(
    path: str | Path, data: bytes, is_ours: Callable[[Path], bool], overwrite: bool, what: str
) -> None:
    """Write a single-file output (e.g. a monitor calibration) under a lock.

    An existing file is replaced only with ``overwrite`` and only when ``is_ours``
    recognises it as a ppmech file of this kind; the write is atomic (the old file
    stays whole until the new one is complete).

    Args:
        data: the new content.
        is_ours: recognises a file ppmech wrote for this output (by its content).
        what: what the file is, for messages (e.g. "monitor calibration").

    Raises:
        PPMechError: see :func:`check_file_target`; another writer holds the lock.
    """
    target = Path(path)
    check_file_target(target, is_ours, overwrite, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(Path(os.path.abspath(target))):
        check_file_target(target, is_ours, overwrite, what)
        write_bytes(target, data)
