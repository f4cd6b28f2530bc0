"""What a study directory already holds, run by run: reuse, re-analyse, re-record, or refuse.

The decision derives from the roles of the settings (:mod:`ppmech.settings`), compared
between the stored run's config and the planned one:

* a **PROTOCOL** (or BOOKKEEPING) setting differs, or the model's files changed: the run
  is ``stale`` and is re-recorded only with ``--replace``;
* only **ANALYSIS** settings differ (``n_boot``): the run is ``reanalyse``: its
  statistics are recomputed from the stored steps (:func:`reanalyse`), no model is loaded;
* only **EXECUTION** settings differ (``device``, ``compile``, ``batch_size``): the run is
  ``complete`` and reused as it is (they move numbers by round-off only);
* the directory holds something ppmech did not write (a user's ``NOTES.txt``): it is
  ``foreign`` and never touched, even with ``--replace`` (the rule of :mod:`ppmech.artifacts`).

Everything here only reads, except :func:`reanalyse`, which rewrites the run's
``summary.json`` and ``config.toml`` (through :func:`ppmech.measure.reanalyze`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ppmech.artifacts import MARKER, foreign_entries, read_marker
from ppmech.errors import PPMechError
from ppmech.measure import MeasureConfig
from ppmech.runs import Run, load_run
from ppmech.settings import Role, role_of
from ppmech.sweep.names import run_path
from ppmech.sweep.study import Study


def expected_source_hash(spec: str) -> str | None:
    """The ``source_hash`` a fresh load of ``spec`` would record, where the driver can tell cheaply.

    Reads the same (memoised) digests as :func:`ppmech.models.loading.load_model`, without
    loading the model. ``None`` when the driver cannot know: a hub id not in the
    local hub cache, or a path that exists only on the workers.
    """
    # The identity rules live in ppmech.models.loading; reuse them rather than restate them.
    from ppmech.models import loading as M

    try:
        if spec in M.EMBEDDED_MODELS:
            return M._sha256(M.EMBEDDED_MODELS[spec].locate())
        path = Path(spec).expanduser()
        if spec.endswith(".gguf"):
            return M._sha256(path) if path.is_file() else None
        if path.is_dir():
            return M._directory_hash(path) if (path / "config.json").is_file() else None
        if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
            revision = M._hub_revision(spec)
            if revision == "unknown-revision":
                return None
            return hashlib.sha256(f"{spec}@{revision}".encode()).hexdigest()
    except (PPMechError, OSError, AttributeError):
        return None
    return None


@dataclass(frozen=True)
class Existing:
    """The state of a run's directory before the sweep.

    ``missing``; ``complete`` (reused); ``reanalyse`` (only analysis settings differ:
    ``changed`` names them); ``stale`` (``--replace`` re-records it); ``foreign`` (not
    ppmech's alone: never touched).
    """

    state: str
    reason: str = ""
    run: Run | None = None
    changed: tuple[str, ...] = field(default=())


def differences(stored: dict[str, object], config: MeasureConfig) -> dict[Role, list[str]]:
    """The settings of ``config`` that a stored run's config does not share, by role.

    A setting added to ``measure`` after the run was made reads as its default.
    """
    defaults = MeasureConfig().to_dict()
    planned = config.to_dict()
    out: dict[Role, list[str]] = {}
    for key, value in planned.items():
        if stored.get(key, defaults.get(key)) != value:
            try:
                role = role_of(MeasureConfig, key)
            except KeyError:
                role = Role.PROTOCOL  # a setting without a declared role counts as changing the run
            out.setdefault(role, []).append(key)
    return out


def _changes(stored: dict[str, object], config: MeasureConfig, names: list[str]) -> str:
    defaults = MeasureConfig().to_dict()
    planned = config.to_dict()
    return ", ".join(f"{k}: {stored.get(k, defaults.get(k))!r} -> {planned[k]!r}" for k in names)


def existing_run(path: Path, config: MeasureConfig) -> Existing:
    """What ``path`` holds with respect to a planned run of ``config`` (reads only)."""
    if not os.path.lexists(path):
        return Existing("missing")
    if path.is_symlink() or not path.is_dir():
        return Existing("foreign", "it is not a ppmech run directory")
    if read_marker(path) is None and not (path / "summary.json").is_file():
        return Existing("foreign", f"it is not a ppmech run (no {MARKER} marker, no summary.json)")
    foreign = foreign_entries(path, "measure")
    try:
        run = load_run(path)
    except PPMechError as exc:
        return _stale_or_foreign(f"it does not read back as a complete run ({exc.problem})", foreign)
    diff = differences(run.config, config)
    recorded = [k for role in (Role.PROTOCOL, Role.BOOKKEEPING) for k in diff.get(role, [])]
    if recorded:
        reason = f"it was made with different settings ({_changes(run.config, config, recorded)})"
        return _stale_or_foreign(reason, foreign)
    expected = expected_source_hash(config.model)
    if expected is not None and run.model.get("source_hash") != expected:
        return _stale_or_foreign(f"the files of model {config.model} changed since it was recorded", foreign)
    analysis = diff.get(Role.ANALYSIS, [])
    if analysis:
        reason = f"re-analysed from its stored steps ({_changes(run.config, config, analysis)})"
        return Existing("reanalyse", reason, run, tuple(analysis))
    return Existing("complete", run=run)


def _stale_or_foreign(reason: str, foreign: list[str]) -> Existing:
    if foreign:
        # Re-recording would replace the directory, and with it a user's files: never.
        return Existing(
            "foreign", f"{reason}, and it holds files ppmech did not write ({', '.join(foreign[:3])})"
        )
    return Existing("stale", reason)


def plan(study: Study, out: Path) -> dict[str, Existing]:
    """The state of every run of ``study`` under ``out/runs`` (each path checked to lie inside it)."""
    root = out / "runs"
    return {r.name: existing_run(run_path(root, r.name), r.config) for r in study.runs}


def refuse(states: dict[str, Existing], runs_root: Path, replace: bool) -> None:
    """Refuse, before anything is written, runs the sweep may not touch.

    Raises:
        PPMechError: a run directory with foreign content (always), or a stale run without ``replace``.
    """

    def more(n: int) -> str:
        return f" (and {n - 1} more)" if n > 1 else ""

    foreign = {n: s for n, s in states.items() if s.state == "foreign"}
    if foreign:
        first = next(iter(foreign))
        raise PPMechError(
            f"{runs_root / first} exists and is not a ppmech run to replace: {foreign[first].reason}"
            + more(len(foreign)),
            "move what you put there out of the study directory, or use another --out",
        )
    stale = {n: s for n, s in states.items() if s.state == "stale"}
    if stale and not replace:
        first = next(iter(stale))
        raise PPMechError(
            f"{runs_root / first} holds another run: {stale[first].reason}{more(len(stale))}",
            "pass --replace to re-record such runs, or use another --out",
        )


def reanalyse(path: Path, config: MeasureConfig) -> Run:
    """Recompute a run's statistics from its stored steps under ``config``'s analysis settings.

    No model is loaded and no step is recorded: :func:`ppmech.measure.reanalyze` (the one
    re-analysis, also behind ``ppmech analyze RUN --n-boot``) rewrites the run's
    ``summary.json`` and ``config.toml`` under its lock.
    """
    from ppmech.measure import reanalyze

    reanalyze(path, config)
    return load_run(path)
