"""The output rule for single files: checked before any work, marked, written atomically.

Every file a command writes for the user (``report --out``, ``compare --markdown``,
``monitor ... --json``, ``verify``'s ``claims.md`` ...) goes through
:func:`write_output_file`, after :func:`check_output_file` has refused a bad path
before the command did any work:

* a new path is created (with its parent directories);
* an existing file is replaced only when ppmech wrote it (it carries ppmech's
  generator mark) **and** the command's replace flag was given; a file without
  the mark is refused even with the flag, so a user's file is never lost;
* refused at once: an empty path, a directory, a symlink or a non-regular file
  where the file should go, a special file system (``/proc``, ``/sys``, ``/dev``),
  a parent that is a file or cannot be written;
* every message names the path the user gave (never a temporary file).

The generator mark depends on the format: ``<meta name="generator" content="ppmech X">``
in the HTML head, a first line ``<!-- generator: ppmech X -->`` in Markdown, a first
field ``"generator": "ppmech X"`` in a JSON object, and a ``Software`` text chunk right
after the header of a PNG.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ppmech.artifacts import files
from ppmech.errors import PPMechError

FORMATS = ("html", "markdown", "json", "png")
"""The file formats a ppmech output file can have (each has its generator mark)."""

SPECIAL_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
"""Kernel file systems: writing there is never an output (and may do something else)."""

_HTML_MARK = re.compile(r"""<meta\s+name=["']generator["']\s+content=["']ppmech[\s"']""", re.IGNORECASE)
_MARKDOWN_MARK = re.compile(r"<!-- generator: ppmech[ -]")
_JSON_MARK = re.compile(r'^\s*\{\s*"generator"\s*:\s*"ppmech[ "]')
_HEAD = re.compile(r"<head(\s[^>]*)?>", re.IGNORECASE)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MARK = b"tEXtSoftware\x00ppmech "
_HEAD_BYTES = 1 << 16  # the marks sit at the start (JSON, Markdown) or in the head (HTML)


def generator() -> str:
    """The generator string every mark carries: ``ppmech <version>``."""
    return f"ppmech {files.ppmech_version()}"


def output_path(value: str | os.PathLike[str] | None, default: str, flag: str = "--out") -> Path:
    """The output path a user asked for: ``default`` when not given, an empty value refused.

    (``Path("")`` is ``.``, so the check must see the string the user typed.)
    """
    if value is None:
        return Path(default)
    if not str(value).strip():
        raise PPMechError(f"{flag} is empty", f"give {flag} a path, or leave it out for {default}")
    return Path(value)


# --------------------------------------------------------------------------- marks


def _kind(kind: str) -> str:
    if kind not in FORMATS:
        raise ValueError(f"unknown output file format {kind!r} (one of {', '.join(FORMATS)})")
    return kind


def add_mark(data: str | bytes | Mapping[str, Any], kind: str) -> bytes:
    """``data`` with ppmech's generator mark for ``kind`` (one of :data:`FORMATS`), as UTF-8 bytes.

    A JSON ``data`` may be a mapping or the text of a JSON object; it is written with
    ``"generator"`` as its first field (indent 2; NaN and inf are refused).
    """
    _kind(kind)
    mark = generator()
    if kind == "png":
        if not isinstance(data, bytes) or not data.startswith(_PNG_SIGNATURE):
            raise ValueError("a PNG output must be the bytes of a PNG image")
        if _PNG_MARK in data[:_HEAD_BYTES]:
            return data
        body = b"Software\x00" + mark.encode("latin-1")
        chunk = struct.pack(">I", len(body)) + b"tEXt" + body
        chunk += struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
        end = len(_PNG_SIGNATURE) + 8 + struct.unpack(">I", data[8:12])[0] + 4  # after IHDR
        return data[:end] + chunk + data[end:]
    if kind == "json":
        obj = json.loads(data) if isinstance(data, str | bytes) else dict(data)
        if not isinstance(obj, dict):
            raise ValueError("a JSON output file must hold an object (its generator mark is a field)")
        obj.pop("generator", None)
        return (json.dumps({"generator": mark, **obj}, indent=2, allow_nan=False) + "\n").encode()
    text = data.decode("utf-8") if isinstance(data, bytes) else str(data)
    if kind == "markdown":
        if _MARKDOWN_MARK.match(text):
            text = text.split("\n", 1)[1] if "\n" in text else ""
        return f"<!-- generator: {mark} -->\n{text}".encode()
    if _HTML_MARK.search(text[:_HEAD_BYTES]):
        return text.encode()  # already marked (the page builder may add it itself)
    meta = f'<meta name="generator" content="{mark}">'
    head = _HEAD.search(text)
    if head is None:
        return (meta + "\n" + text).encode()
    return (text[: head.end()] + "\n" + meta + text[head.end() :]).encode()


def has_mark(path: str | Path) -> bool:
    """Whether the file at ``path`` carries ppmech's generator mark (any format).

    Only the start of the file is read: every mark sits there (the HTML one in the head).
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_HEAD_BYTES)
    except OSError:
        return False
    if raw.startswith(_PNG_SIGNATURE):
        return _PNG_MARK in raw
    head = raw.decode("utf-8", errors="replace")
    return bool(_MARKDOWN_MARK.match(head) or _JSON_MARK.match(head) or _HTML_MARK.search(head))


# --------------------------------------------------------------------------- checks


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_location(path: Path, shown: Path, flag: str) -> None:
    """Refuse an output location on a special file system or under an unwritable parent.

    Args:
        path: the absolute output path.
        shown: the path as the user gave it (for messages).
        flag: the option that named it (for messages).
    """
    real = Path(os.path.realpath(path))
    for root in SPECIAL_ROOTS:
        if real == root or root in real.parents:
            raise PPMechError(
                f"{flag} {shown} is on the special file system {root}, not a place for output",
                f"give {flag} a path on a real disk",
            )
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise PPMechError(
            f"cannot create {shown}: {ancestor} is a file, not a directory", f"choose another {flag}"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PPMechError(
            f"cannot create {shown}: {ancestor} is not writable (permission denied)",
            f"choose another {flag}, or make {ancestor} writable",
        )


def check_output_file(
    path: str | os.PathLike[str],
    *,
    kind: str,
    replace: bool,
    flag: str = "--out",
    replace_flag: str = "--overwrite",
) -> Path:
    """Refuse an output file path that may not be written; call it before any work.

    Writes nothing. :func:`write_output_file` checks again under the lock.

    Args:
        path: the path the user gave.
        kind: the file's format, one of :data:`FORMATS`.
        replace: the command's replace flag was given.
        flag, replace_flag: the command's options, named in messages.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        PPMechError: see the module docstring; the message names ``path``.
    """
    _kind(kind)
    if not str(path).strip():
        raise PPMechError(f"{flag} is empty", f"give {flag} a file name")
    shown = Path(path)
    target = Path(os.path.abspath(shown))
    check_location(target, shown, flag)
    if target.is_symlink():
        raise PPMechError(
            f"{shown} is a symbolic link; ppmech does not write through links or replace them",
            f"choose another {flag}",
        )
    if target.is_dir():
        raise PPMechError(f"{shown} is a directory, not a file", f"give {flag} a file name")
    if os.path.lexists(target):
        if not target.is_file():
            raise PPMechError(f"{shown} is not a regular file", f"choose another {flag}")
        if not has_mark(target):
            raise PPMechError(
                f"{shown} exists and was not written by ppmech (it has no ppmech generator mark)",
                f"choose another {flag}; ppmech never replaces a file it did not write, with or "
                f"without {replace_flag} (move or delete the file yourself)",
            )
        if not replace:
            raise PPMechError(
                f"{shown} already exists (an earlier ppmech output)",
                f"pass {replace_flag} to replace it, or choose another {flag}",
            )
    return shown


def write_output_file(
    path: str | os.PathLike[str],
    data: str | bytes | Mapping[str, Any],
    *,
    kind: str,
    replace: bool,
    flag: str = "--out",
    replace_flag: str = "--overwrite",
) -> None:
    """Write one output file under the rule: checked under a lock, marked, atomic.

    Args:
        path: the path the user gave (parent directories are created).
        data: the content; for ``kind="json"`` also a mapping (see :func:`add_mark`).
        kind, replace, flag, replace_flag: as for :func:`check_output_file`.

    Raises:
        PPMechError: a refusal of :func:`check_output_file`, another writer holds the
            file, or a full disk (naming ``path``).
        OSError: another failure to write, naming ``path``.
    """
    content = add_mark(data, kind)
    shown = check_output_file(path, kind=kind, replace=replace, flag=flag, replace_flag=replace_flag)
    target = Path(os.path.abspath(shown))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PPMechError(
            f"cannot create the directory of {shown}: {exc.strerror or exc}", f"choose another {flag}"
        ) from exc
    with files.OutputLock(target):
        check_output_file(shown, kind=kind, replace=replace, flag=flag, replace_flag=replace_flag)
        try:
            files.write_bytes(target, content)
        except OSError as exc:
            raise PPMechError(
                f"cannot write {shown}: {exc.strerror or exc}", f"choose another {flag}"
            ) from exc
        except PPMechError as exc:
            if str(target) in exc.problem:  # the full-disk message: name the path as given
                raise PPMechError(exc.problem.replace(str(target), str(shown)), exc.fix) from exc
            raise
