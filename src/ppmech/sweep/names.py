"""Run names of a study: readable, derived from the settings that change what a run measures, and safe.

A run's directory is ``OUT/runs/<name>``. The name is ``<model>-<weights>`` plus one
token per PROTOCOL setting (:mod:`ppmech.settings`) that differs from ``measure``'s
default, so it depends only on the run's own settings: adding an axis to a study keeps
the names (and the finished runs) of the runs it already had. Settings of the other
roles (``n_boot``, ``device``, ``batch_size``, ...) never appear in a name: runs that
differ only in them measure the same thing.

Every name is one safe path component (letters, digits, ``.``, ``_``, ``-``, not
starting with ``.``): a model given as a path contributes its last component; a
model entry's own ``name`` that is not such a component is refused. Before
anything is written, :func:`run_path` resolves the run's directory and checks that
it lies inside ``OUT/runs/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ppmech.errors import PPMechError
from ppmech.measure import MeasureConfig
from ppmech.settings import Role, keys

#: One safe path component: what a run name (and a model entry's ``name``) may be.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Settings written as the name's prefix (``<model>-<weights>``), not as tokens.
PREFIX_KEYS = ("model", "weights")
#: Short forms of settings in run names (others are written ``<key><value>``).
ABBREVIATIONS = {
    "prompts": "n",
    "context_tokens": "ctx",
    "new_tokens": "new",
    "temperature": "t",
    "top_k": "topk",
    "top_p": "topp",
    "stop_at_eos": "eos",
    "revision": "rev",
}
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def slug(text: str) -> str:
    """``text`` with every run of unsafe characters replaced by ``_`` (may be empty)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")


def check_entry_name(name: Any, source: str) -> str:
    """A model entry's ``name``, refused unless it is one safe path component.

    Raises:
        PPMechError: not a string, empty, ``.``/``..``, or with a separator or another character.
    """
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise PPMechError(
            f"{source}: a model entry's name {name!r} is not one safe path component",
            "use letters, digits, '.', '_' and '-' (not starting with '.'), e.g. name = \"smol\"",
        )
    return name


def model_slug(spec: str) -> str:
    """A readable directory-name form of a model spec: embedded name, hub id, path or ``.gguf``.

    A path (absolute, relative, ``~``, or an existing directory) contributes only its last
    component; a hub id ``org/name`` its ``name``.
    """
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return slug(path.stem) or "model"
    if path.exists():
        return slug(path.resolve().name) or "model"
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return slug(spec.split("/")[1]) or slug(spec) or "model"
    return slug(path.name) or "model"


def named_keys() -> tuple[str, ...]:
    """The settings that appear as tokens in a run name: PROTOCOL settings besides the prefix."""
    return tuple(k for k in keys(MeasureConfig, Role.PROTOCOL) if k not in PREFIX_KEYS)


def _token(key: str, value: Any) -> str:
    short = ABBREVIATIONS.get(key, key.replace("_", ""))
    if key == "dtype":
        return DTYPE_NAMES.get(value, slug(str(value)))
    if key == "corpus":
        text = str(value)
        return slug(Path(text).stem) if ("/" in text or "." in text) else slug(text)
    if isinstance(value, bool):
        return short if value else f"no{short}"
    if key == "text_field":
        return f"field{slug(str(value))}"
    if key == "revision":
        return f"{short}{slug(str(value))[:12]}"
    if isinstance(value, str):
        return slug(value)
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{short}{text}"


def setting_tokens(config: MeasureConfig) -> list[str]:
    """A token per named setting (:func:`named_keys`) of ``config`` that differs from the default."""
    default = MeasureConfig()
    tokens = [
        _token(k, getattr(config, k)) for k in named_keys() if getattr(config, k) != getattr(default, k)
    ]
    return [t for t in tokens if t]


def run_name(model_slug_: str, config: MeasureConfig) -> str:
    """``<model>-<weights>`` plus :func:`setting_tokens`; always one safe path component."""
    name = "-".join([model_slug_, config.weights, *setting_tokens(config)])
    check_run_name(name)
    return name


def check_run_name(name: str) -> None:
    """Refuse a run name that is not one safe path component (a bug guard: names are built safe)."""
    if not SAFE_NAME.fullmatch(name):
        raise PPMechError(
            f"run name {name!r} is not one safe path component",
            "name the model entry with letters, digits, '.', '_' and '-' (name = \"...\")",
        )


def run_path(runs_root: Path, name: str) -> Path:
    """``runs_root/name``, resolved and checked to lie directly inside ``runs_root``.

    Raises:
        PPMechError: the name is unsafe, or the path resolves elsewhere (e.g. through a symlink).
    """
    check_run_name(name)
    root = runs_root.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise PPMechError(
            f"run {name}'s directory resolves to {path}, outside {root}",
            f"remove the link {runs_root / name}, or use another --out",
        )
    return runs_root / name
