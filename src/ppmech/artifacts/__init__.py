"""Output files and directories: the one place for ppmech's rules on writing them.

Every command that writes goes through this package, so the rules hold everywhere:

* **One rule for every output** (:func:`check_output_file`, :func:`write_output_file`,
  :func:`check_output_dir`). A new path is created. An existing file or directory is
  replaced only when ppmech wrote it **and** the command's replace flag is given
  (``--overwrite``, ``--replace``): a directory by its ``.ppmech-run`` marker, a file by
  its generator mark (``<meta name="generator">`` in HTML, a first-line comment in
  Markdown, a first ``"generator"`` field in JSON). Nothing with foreign content is ever
  deleted. Outputs are checked before any work starts (not a special file system, a
  writable parent, not a directory where a file goes); every error names the user's
  path, never a temporary file.

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

from ppmech.artifacts.directories import (
    COMMIT_FILE,
    KINDS,
    MARKER,
    REUSABLE,
    Output,
    check_output_dir,
    files_of,
    foreign_entries,
    is_complete,
    make_marked_dir,
    open_output_dir,
    read_marker,
    staging_path,
)
from ppmech.artifacts.files import (
    OutputLock,
    atomic_path,
    describe_file,
    disk_full_error,
    named_error,
    no_space,
    ppmech_version,
    sha256,
    verify_file,
    write_bytes,
    write_csv,
    write_json,
    write_npy,
    write_parquet,
    write_text,
)
from ppmech.artifacts.rule import (
    FORMATS,
    add_mark,
    check_location,
    check_output_file,
    generator,
    has_mark,
    output_path,
    write_output_file,
)

__all__ = [
    "COMMIT_FILE",
    "FORMATS",
    "KINDS",
    "MARKER",
    "REUSABLE",
    "Output",
    "OutputLock",
    "add_mark",
    "atomic_path",
    "check_location",
    "check_output_dir",
    "check_output_file",
    "describe_file",
    "disk_full_error",
    "files_of",
    "foreign_entries",
    "generator",
    "has_mark",
    "is_complete",
    "make_marked_dir",
    "named_error",
    "no_space",
    "open_output_dir",
    "output_path",
    "ppmech_version",
    "read_marker",
    "sha256",
    "staging_path",
    "verify_file",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_npy",
    "write_output_file",
    "write_parquet",
    "write_text",
]
