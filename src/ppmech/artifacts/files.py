"""Atomic file writes, the one SHA-256 helper, and the one-writer lock.

The bottom of :mod:`ppmech.artifacts`: no knowledge of what a file holds. A file
is written to a temporary name beside its target, flushed to disk (``fsync``),
and renamed over the target, so a reader sees the old file or the new one, never
half of one. Every failure names the target the caller asked for, never the
temporary name; a full disk is "no space left on device while writing PATH".
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ppmech.errors import PPMechError


def ppmech_version() -> str:
    """The installed ppmech's version (from the package metadata; no import of the package).

    Read from the distribution's metadata so that this bottom-layer module does not import
    ``ppmech/__init__`` (which sits above it).
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ppmech")
    except PackageNotFoundError:  # a source tree on sys.path without an install
        return "unknown"


def _host() -> str:
    return socket.gethostname()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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


def named_error(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` (the file the user asked for) instead of a temporary name.

    Stays an :class:`OSError` (callers that tolerate a failed write still catch it); the
    CLI prints it as one line with this path.
    """
    if exc.errno is None:
        return OSError(f"{exc} while writing {path}")
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


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
        raise named_error(exc, target) from exc
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
