"""The run store of ``ppmech verify``: record or reuse each planned run, load its model, cache analyses.

Every run directory lives under ``OUT/runs/`` and is reused when it is complete
and was made with the same PROTOCOL settings (:func:`ppmech.settings.keys`;
execution and analysis settings never block reuse); a directory made with other
settings is an error, not silently overwritten. Analyses are cached under
``OUT/analyses/``, keyed by the run and the analysis settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from ppmech.claims.verify.plan import RunPlan
from ppmech.errors import PPMechError
from ppmech.measure import MeasureConfig, measure
from ppmech.models.identity import LoadedModel
from ppmech.models.loading import load_model
from ppmech.runs import Run, load_run
from ppmech.settings import Role, keys

ANALYSIS_VERSION = 2  # 2: null models and confounder controls


def protocol_differences(stored: dict[str, Any], expected: MeasureConfig) -> list[str]:
    """The PROTOCOL settings on which a stored run's config differs from ``expected``.

    A setting the stored config lacks was added after the run was recorded, which
    then ran with that setting's default: it is compared as the default.
    """
    defaults = {
        f.name: f.default_factory()
        if f.default is MISSING and f.default_factory is not MISSING
        else f.default
        for f in fields(MeasureConfig)
    }
    want = expected.to_dict()
    return sorted(
        k for k in keys(MeasureConfig, Role.PROTOCOL) if stored.get(k, defaults.get(k)) != want.get(k)
    )


def ensure_run(plan: RunPlan, root: Path, progress: bool = True) -> Run:
    """The run directory for ``plan``: reused when complete and identical, else recorded.

    Raises:
        PPMechError: the directory holds a run made with other settings (or an
            older schema, via :func:`~ppmech.runs.load_run`).
    """
    path = root / plan.name
    if (path / "summary.json").is_file():
        run = load_run(path)
        diff = protocol_differences(run.config, plan.config)
        if diff:
            raise PPMechError(
                f"{path} holds a run of {run.config.get('model')} ({run.config.get('weights')}) made with "
                f"different settings ({', '.join(diff)})",
                "delete that directory or pass another `out`",
            )
        return run
    resume = (path / "parts" / "config.json").is_file()
    measure(plan.config, path, overwrite=not resume and path.exists(), resume=resume, progress=progress)
    return load_run(path)


def check_model(run: Run, lm: LoadedModel) -> None:
    """Refuse to analyse a run's hidden states with a model other than the one that recorded them."""
    recorded = run.model
    if (
        recorded.get("source_hash") != lm.identity.source_hash
        or recorded.get("weights") != lm.identity.weights
    ):
        raise PPMechError(
            f"{run.path} was recorded with {recorded.get('spec')} ({recorded.get('weights')}, "
            f"{str(recorded.get('source_hash'))[:12]}), not {lm.identity.spec} ({lm.identity.weights}, "
            f"{lm.identity.source_hash[:12]})",
            "analyse it with the model that recorded it",
        )


def model_for_run(run: Run, device: str = "auto") -> LoadedModel:
    """Load the model a run was recorded with (on ``device``), and check it is the same one."""
    cfg = run.config
    lm = load_model(
        cfg["model"],
        weights=cfg.get("weights", "pretrained"),
        seed=cfg.get("seed", 0),
        dtype="float32",
        device=device,
    )
    check_model(run, lm)
    return lm


def cache_key(run: Run, what: str, settings: dict[str, Any]) -> str:
    payload = json.dumps(
        {"v": ANALYSIS_VERSION, "what": what, "created": run.summary.get("created"), "s": settings},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def cached(path: Path, key: str) -> dict[str, Any] | None:
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        if data.get("key") == key:
            return dict(data)
    return None
