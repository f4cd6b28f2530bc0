"""Hugging Face hub ids: telling them from paths, and failing fast when the hub is out of reach.

A model name is a hub id only when it is ``org/name`` and does not look like a path
(:func:`looks_like_path`): a name that starts with ``.``, ``~`` or ``/``, has a backslash
or more than one ``/``, or whose first component is a local directory (``models/qwen``
next to a ``models/`` folder) is a path, and a missing one is "no such directory" —
never a hub lookup.

Before a hub model is loaded, :func:`hub_access` asks the hub once, with a short timeout
(:data:`PROBE_TIMEOUT_S`) and no retries. When it cannot be reached (no network,
``HF_HUB_OFFLINE=1``), a model in the local hub cache is loaded from there without
any request, and a model not in the cache is one line naming the cause, within
seconds. Without the probe, ``huggingface_hub`` retries each file five times with
back-off, which printed 11 to 22 lines of retry log over 40 to 50 s before its error.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ppmech.errors import PPMechError
from ppmech.progress import note

#: Seconds the reachability probe waits for the hub's endpoint.
PROBE_TIMEOUT_S = 5.0


def looks_like_path(spec: str) -> bool:
    """True when ``spec`` names a local path rather than a hub id ``org/name`` (module docstring)."""
    if spec.startswith((".", "~", "/")) or "\\" in spec or (os.sep != "/" and os.sep in spec):
        return True
    if spec.count("/") != 1:
        return "/" in spec
    first = spec.split("/", 1)[0]
    return Path(first).is_dir()


def _unreachable_reason(timeout: float) -> str | None:
    """Why the hub's endpoint cannot be reached (``None`` when it answers at all)."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        # Any HTTP answer, even an error status, means the hub is reachable.
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as exc:  # connection refused, DNS failure, timeout, proxy error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"cannot reach {constants.ENDPOINT} ({first[:120]})"
    return None


def _cached(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def hub_access(repo_id: str, revision: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Keyword arguments for transformers' ``from_pretrained`` of hub model ``repo_id``.

    ``{}`` when the hub answers; ``{"local_files_only": True}`` when it does not but the
    model is in the local hub cache (a note says so).

    Raises:
        PPMechError: the hub cannot be reached and the model is not cached.
    """
    reason = _unreachable_reason(timeout)
    if reason is None:
        return {}
    at = f"@{revision}" if revision else ""
    if _cached(repo_id, revision):
        note(f"the Hugging Face hub is out of reach ({reason}); loading {repo_id}{at} from the local cache")
        return {"local_files_only": True}
    from huggingface_hub import constants

    raise PPMechError(
        f"model '{repo_id}{at}' is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
        f"and the hub is out of reach: {reason} (if you meant a local directory, it does not exist)",
        "connect to the network and retry, download it there first, or use an embedded model "
        "(see `ppmech models`) or a local directory",
    )


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """Keep ``huggingface_hub``'s own warnings (retry logs) off the console while loading."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
