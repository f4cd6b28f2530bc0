"""``--track``: which tracker, where, and whether it can be used, decided before any work starts.

Forms (the one home of this list; the CLI's help and error messages quote :data:`FORMS`):

* ``mlflow``: MLflow, to ``$MLFLOW_TRACKING_URI`` when set, else the file store ``./mlruns``.
* ``mlflow:URI``: MLflow, to ``URI``: a directory (a file store), ``file:``, ``http(s)://`` (a
  tracking server) or any other URI MLflow accepts (``sqlite:///mlflow.db`` needs the full
  ``mlflow`` package, which brings SQLAlchemy).
* ``wandb`` / ``wandb:PROJECT``: Weights & Biases, project ``PROJECT`` (else ``$WANDB_PROJECT``,
  else ``ppmech``). Offline (``./wandb/offline-run-*``, upload later with ``wandb sync``) unless
  W&B is configured online: ``$WANDB_API_KEY`` set, or a key saved by ``wandb login`` in
  ``~/.netrc``. ``$WANDB_MODE`` overrides both.

Bottom of the tracking package: imports only the standard library and :mod:`ppmech.errors`
(the tracking libraries themselves are imported only to check that they are installed).
"""

from __future__ import annotations

import contextlib
import importlib
import netrc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ppmech.errors import PPMechError

FORMS = "mlflow, mlflow:URI, wandb or wandb:PROJECT"
"""The valid ``--track`` values, as messages write them."""

EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}
"""Tracker -> the ppmech extra that installs its library."""

DEFAULT_MLFLOW_DIR = "mlruns"
"""Where ``--track mlflow`` logs when ``$MLFLOW_TRACKING_URI`` is not set (relative to the cwd)."""

DEFAULT_PROJECT = "ppmech"
"""The MLflow experiment and the W&B project, unless ``$MLFLOW_EXPERIMENT_NAME`` / ``$WANDB_PROJECT``
or ``wandb:PROJECT`` name another."""


@dataclass(frozen=True)
class TrackSpec:
    """A parsed ``--track`` value.

    Attributes:
        backend: ``"mlflow"`` or ``"wandb"``.
        uri: MLflow's tracking URI, resolved (a file store is an absolute ``file://`` URI);
            ``None`` for W&B.
        project: the MLflow experiment or W&B project runs are logged to.
        mode: W&B's mode (``"offline"``, ``"online"``, or ``$WANDB_MODE``); ``None`` for MLflow.
    """

    backend: str
    uri: str | None = None
    project: str = DEFAULT_PROJECT
    mode: str | None = None

    @property
    def is_file_store(self) -> bool:
        """MLflow's file store (a directory of YAML and text files), not a server or database."""
        return self.uri is not None and self.uri.startswith("file:")

    def where(self) -> str:
        """Where runs go, for messages: the URI or W&B's mode and project."""
        if self.backend == "mlflow":
            return f"{self.uri} (experiment {self.project})"
        return f"W&B project {self.project} ({self.mode})"


def _require(backend: str) -> None:
    """Import the tracker's library, or refuse in one line naming the extra that installs it."""
    try:
        importlib.import_module(backend)
    except ImportError as exc:
        raise PPMechError(
            f"--track {backend} needs the {backend} library, which is not installed",
            f"pip install 'ppmech[{EXTRAS[backend]}]'",
        ) from exc


def _has_scheme(target: str) -> bool:
    """``target`` is a URI (``scheme:...``), not a path (a Windows drive letter is a path)."""
    scheme = urlparse(target).scheme
    return len(scheme) > 1


def _mlflow_uri(target: str | None) -> str:
    """The tracking URI of ``mlflow[:target]``: a path becomes an absolute ``file://`` URI."""
    target = target or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_DIR
    if target.startswith("file:"):
        return Path(urlparse(target).path).resolve().as_uri()
    if _has_scheme(target):
        return target
    return Path(target).expanduser().resolve().as_uri()


def _check_file_store(uri: str) -> None:
    """Refuse a file store that cannot be written, without creating anything (nothing is written
    before the run itself is)."""
    root = Path(urlparse(uri).path)
    fix = "pass another directory as --track mlflow:DIR"
    if root.exists() and not root.is_dir():
        raise PPMechError(f"the MLflow store {root} is a file, not a directory", fix)
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PPMechError(f"the MLflow store {root} cannot be written ({existing} is not writable)", fix)


@contextlib.contextmanager
def quick_http() -> Iterator[None]:
    """MLflow's HTTP client with few retries and a short timeout (its defaults retry for minutes)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_server(uri: str) -> None:
    """Ask a tracking server for one experiment, so an unreachable one is refused before the run."""
    from mlflow import MlflowClient

    try:
        with quick_http():
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises its own, requests' and urllib3's errors here
        reason = " ".join(str(exc).split())[:200]
        raise PPMechError(
            f"cannot reach the MLflow tracking server {uri} ({reason})",
            "start it or correct the URI, or use --track mlflow to log to ./mlruns",
        ) from exc


def allow_file_store() -> None:
    """Let MLflow (3.7 and later) use its file store, which it otherwise refuses as deprecated.

    ``./mlruns`` is what ``--track mlflow`` promises and needs no database; MLflow still reads and
    writes it (``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri ./mlruns`` shows it).
    A user's own ``MLFLOW_ALLOW_FILE_STORE`` is left as it is.
    """
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def wandb_mode() -> str:
    """``$WANDB_MODE`` when set; else ``online`` when W&B has a key (``$WANDB_API_KEY`` or
    ``wandb login``'s entry in ``~/.netrc``), else ``offline``."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        entry = netrc.netrc(str(path)).authenticators(host or "") if path.is_file() else None
    except (OSError, netrc.NetrcParseError):
        entry = None
    return "online" if entry and entry[2] else "offline"


def parse_track(spec: str | None) -> TrackSpec | None:
    """Parse a ``--track`` value and check, before any work, that it can be used.

    ``None`` or ``""`` (no tracking) gives ``None``. Checks the form, that the library is
    installed, and the destination: a file store's directory must be writable (nothing is
    created yet), a tracking server must answer.

    Raises:
        PPMechError: an unknown form (the message lists :data:`FORMS`), a missing library (the
            message names ``pip install 'ppmech[mlflow]'`` or ``'ppmech[wandb]'``), an
            unwritable store or an unreachable server.
    """
    if spec is None or not spec.strip():
        return None
    backend, _, target = spec.strip().partition(":")
    backend = backend.lower()
    if backend not in EXTRAS or (spec.strip().endswith(":") and not target):
        raise PPMechError(f"--track {spec!r} is not a tracker", f"use {FORMS}")
    _require(backend)
    if backend == "wandb":
        project = target or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        return TrackSpec("wandb", project=project, mode=wandb_mode())
    uri = _mlflow_uri(target or None)
    track = TrackSpec("mlflow", uri=uri, project=os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT)
    if track.is_file_store:
        _check_file_store(uri)
    elif urlparse(uri).scheme in ("http", "https"):
        _check_server(uri)
    return track
