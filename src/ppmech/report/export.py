"""``report --png``: the page's own plotly figures as PNG files, drawn by kaleido in a local Chromium.

One drawing of each figure: kaleido renders the same plotly figure the page shows,
with plotly.js, in a headless Chromium found on this machine (no download). The
browser is the one the report's browser tests use (:func:`find_chromium`):
``$PPMECH_CHROMIUM`` if set, else ``chromium``/``chromium-browser``/``google-chrome``
on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import plotly.graph_objects as go

from ppmech.errors import PPMechError

#: The variable that names the Chromium to use (the report's --png and its browser tests).
CHROMIUM_ENV = "PPMECH_CHROMIUM"
#: How to install it, for messages.
INSTALL_CHROMIUM = "apt-get install chromium"
INSTALL_KALEIDO = "pip install 'ppmech[png]'"
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Width of every PNG in CSS pixels (the page's content width); the height is each figure's own.
PNG_WIDTH = 1200
PNG_SCALE = 2


def find_chromium() -> Path | None:
    """The Chromium executable to drive, or None: ``$PPMECH_CHROMIUM`` if set (even if missing), else PATH."""
    named = os.environ.get(CHROMIUM_ENV)
    if named is not None:
        path = Path(named)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def missing_chromium_message() -> str:
    named = os.environ.get(CHROMIUM_ENV)
    where = f"${CHROMIUM_ENV}={named} is not an executable" if named else f"no {' / '.join(_NAMES)} on PATH"
    return f"no Chromium found ({where})"


def check_png_export() -> Path:
    """Before any work: kaleido importable and a Chromium found; returns the Chromium's path.

    Raises:
        PPMechError: kaleido missing (names the extra) or no Chromium (names the install).
    """
    try:
        import kaleido  # noqa: F401
    except ImportError as exc:
        raise PPMechError("--png needs kaleido, which is not installed", INSTALL_KALEIDO) from exc
    chromium = find_chromium()
    if chromium is None:
        raise PPMechError(
            f"--png needs Chromium: {missing_chromium_message()}",
            f"{INSTALL_CHROMIUM} (or set {CHROMIUM_ENV}=/path/to/chromium)",
        )
    return chromium


@contextmanager
def _browser_path(chromium: Path) -> Iterator[None]:
    # kaleido's browser finder (choreographer) reads BROWSER_PATH; set it only while we export.
    before = os.environ.get("BROWSER_PATH")
    os.environ["BROWSER_PATH"] = str(chromium)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("BROWSER_PATH", None)
        else:
            os.environ["BROWSER_PATH"] = before


def render_pngs(figures: Mapping[str, go.Figure], chromium: Path) -> dict[str, bytes]:
    """Each figure as PNG bytes (``PNG_WIDTH`` wide, its own height, ``PNG_SCALE``x), by figure id.

    Raises:
        PPMechError: the browser failed to start or to draw.
    """
    import tempfile

    import plotly.io as pio

    ids = list(figures)
    with _browser_path(chromium), tempfile.TemporaryDirectory(prefix="ppmech-png-") as tmp:
        files = [Path(tmp) / f"{i:03d}.png" for i in range(len(ids))]
        try:
            # One browser for all figures (write_images); to_image would start one per figure.
            pio.write_images(
                [figures[f] for f in ids],
                files,
                format="png",
                width=PNG_WIDTH,
                height=[int(figures[f].layout.height or 450) for f in ids],
                scale=PNG_SCALE,
            )
            return {fid: path.read_bytes() for fid, path in zip(ids, files, strict=True)}
        except Exception as exc:  # kaleido/choreographer raise many types; one line for all
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PPMechError(
                f"Chromium ({chromium}) could not draw the PNGs: {first}",
                f"check that {chromium} starts (`{chromium} --headless --version`), or leave out --png",
            ) from exc
