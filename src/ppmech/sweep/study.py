"""Study files: the TOML schema of ``ppmech sweep``, its validation, and the grid of runs.

A study names models and the settings to measure them with; every key of
:class:`~ppmech.measure.MeasureConfig` is a top-level key (derived from its
dataclass fields, so a new ``measure`` option works here unchanged). A scalar
sets the option for every run; a list makes it an *axis* of the grid::

    name = "small-models"                      # optional
    models = ["smollm2-135m", "gemma3-270m"]   # or `model`; entries may be tables
    weights = ["pretrained", "random"]         # an axis
    prompts = 100                              # a setting
    seed = [0, 1]                              # another axis

    [resources]                                # per run (Ray resources)
    cpus = 1                                   # also the run's torch threads
    gpus = 0.25                                # fractions let runs share a card
    memory_gb = 4                              # optional reservation
    max_retries = 3                            # retries of a run lost to a dead worker/node

    [[conditions]]                             # optional: settings that go together
    decoding = "greedy"
    [[conditions]]
    decoding = "sample"
    temperature = 0.7

A model entry is a string (embedded name, hub id, local directory, ``.gguf``
file) or a table ``{ model = "...", name = "slug", <option> = ... }`` whose
options override the top level for that model (e.g. ``weights = "pretrained"``
for a model that should not be run with random weights).

The grid is, per model entry, the conditions times the product of the axes
(in that order; axes in ``MeasureConfig`` field order).
Later wins: top level < condition < model entry. Keys may be written with
``-`` or ``_`` (``new-tokens`` = ``new_tokens``).

Every problem is a :class:`~ppmech.errors.PPMechError` raised before anything
runs: malformed TOML (with line and column), unknown keys (named, with the
closest valid key), values of the wrong type, values ``measure`` refuses, an
empty grid, a device no machine has, a model entry ``name`` that is not one safe
path component, or two runs that measure the same thing (they differ in no PROTOCOL
setting of :mod:`ppmech.settings`: only in ``batch_size``, ``device``, ``n_boot``, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppmech.errors import PPMechError
from ppmech.measure import MeasureConfig
from ppmech.models.device import check_device_name
from ppmech.settings import Role, values
from ppmech.sweep.names import check_entry_name, model_slug, run_name, setting_tokens

__all__ = [
    "PRESETS",
    "PlannedRun",
    "Resources",
    "Study",
    "load_study",
    "model_slug",
    "parse_study",
    "preset_study",
    "run_name",
    "setting_tokens",
]

#: Top-level keys that are not ``measure`` options.
STUDY_KEYS = ("name", "models", "resources", "conditions")
#: Keys of a model entry table besides ``measure`` options.
ENTRY_KEYS = ("model", "name")
WEIGHTS = ("pretrained", "random")


@dataclass(frozen=True)
class Resources:
    """What one run reserves on the Ray cluster.

    Attributes:
        cpus: logical CPUs per run; the run also uses this many torch threads (at least 1).
        gpus: GPUs per run; fractions (0.25) let several runs share one card.
        memory_gb: memory reserved per run (Ray's ``memory`` resource), or ``None``.
        max_retries: how often a run lost to a dead worker or node is retried.
    """

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float | None = None
    max_retries: int = 3

    def threads(self) -> int:
        return max(1, int(self.cpus))


@dataclass(frozen=True)
class PlannedRun:
    """One cell of the grid: its directory name under ``runs/`` and its settings."""

    name: str
    config: MeasureConfig


@dataclass(frozen=True)
class Study:
    """A parsed, validated study.

    Attributes:
        name: the study's name (``name`` key, else the file's stem or the preset's name).
        runs: the grid, in file order (model entries, then conditions, then axes).
        resources: per-run resources.
        source: the file path, or ``preset:<name>``.
        data: the study as parsed (TOML tables as dicts, after ``--set`` overrides).
        overrides: the ``--set`` assignments applied.
    """

    name: str
    runs: tuple[PlannedRun, ...]
    resources: Resources
    source: str
    data: dict[str, Any]
    overrides: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "overrides": list(self.overrides),
            "study": self.data,
            "resources": dataclasses.asdict(self.resources),
            "runs": [{"name": r.name, "config": r.config.to_dict()} for r in self.runs],
        }


# --------------------------------------------------------------------------- presets

#: The paper's Table 1 checkpoints (§D.3.1: 10 models, each pretrained and random) as hub ids.
PAPER_TABLE1_MODELS = (
    "Qwen/Qwen2.5-1.5B",
    "HuggingFaceTB/SmolLM2-135M",
    "HuggingFaceTB/SmolLM2-360M",
    "HuggingFaceTB/SmolLM2-1.7B",
    "HuggingFaceTB/SmolLM3-3B",
    "Qwen/Qwen2.5-3B",
    "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "google/gemma-3-1b-pt",
)

PRESETS: dict[str, str] = {
    "paper-table1": "\n".join(
        [
            "# The paper's Table 1 (§D.3.1): 10 models x {pretrained, random}, 100 Wikipedia prompts",
            "# of 50 tokens, 100 greedy new tokens. Needs the Hugging Face hub (Llama and Gemma are",
            "# gated: accept their licences and log in). On GPUs: --set resources.gpus=0.25",
            'name = "paper-table1"',
            "models = [",
            *(f'  "{m}",' for m in PAPER_TABLE1_MODELS),
            "]",
            'weights = ["pretrained", "random"]',
            'corpus = "wiki-en"',
            "prompts = 100",
            "context_tokens = 50",
            "new_tokens = 100",
            'decoding = "greedy"',
            "",
            "[resources]",
            "cpus = 1",
            "gpus = 0",
            "",
        ]
    )
}


# --------------------------------------------------------------------------- parsing


def _measure_fields() -> dict[str, Any]:
    """``measure`` option name -> its type, from :class:`MeasureConfig`'s dataclass fields."""
    hints = typing.get_type_hints(MeasureConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(MeasureConfig)}


def _where(text: str | None, key: str) -> str:
    """`` (line N, column M)`` of the first ``key =`` (or ``[key]``) in ``text``, if found."""
    if not text:
        return ""
    pattern = re.compile(rf"(?:^|[\s{{,\[.])(\"?{re.escape(key)}\"?)\s*(?:=|\])", re.MULTILINE)
    match = pattern.search(text)
    if match is None:
        return ""
    start = match.start(1)
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    return f" (line {line}, column {column})"


def _decode_error(exc: tomllib.TOMLDecodeError, text: str) -> str:
    """tomllib's message, with a line and column also for errors "at end of document"."""
    message = str(exc)
    if "(at line" not in message and "end of document" in message:
        lines = text.split("\n")
        message = message.replace(
            "at end of document", f"at end of document, line {len(lines)}, column {len(lines[-1]) + 1}"
        )
    return message


def _unknown(key: str, allowed: list[str], context: str, source: str, text: str | None) -> PPMechError:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(allowed))}"
    return PPMechError(f"{source}: unknown key '{key}' {context}{_where(text, key)}", hint)


def _normalise(table: dict[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in table.items()}


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return " or ".join(_type_name(a) for a in args)
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _check_value(key: str, value: Any, tp: Any, source: str, text: str | None) -> Any:
    """Check one scalar against a field type; ints are accepted for floats."""
    options = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if option not in (bool, int, float, str):
            return value  # a type this schema does not know: let MeasureConfig judge it
    raise PPMechError(
        f"{source}: '{key}' must be {_type_name(tp)} (got {value!r}){_where(text, key)}",
        "fix the value in the study",
    )


def _axis(
    key: str, value: Any, tp: Any, source: str, text: str | None, scalar_only: bool = False
) -> list[Any]:
    """A key's values: a scalar is a one-value axis; a list is an axis (not inside conditions)."""
    if isinstance(value, list):
        if scalar_only:
            raise PPMechError(
                f"{source}: '{key}' inside [[conditions]] must be a single value{_where(text, key)}",
                "put axes (lists) at the top level or in a model entry",
            )
        if not value:
            raise PPMechError(
                f"{source}: the grid is empty: '{key}' = []{_where(text, key)}",
                f"give '{key}' at least one value",
            )
        values = [_check_value(key, v, tp, source, text) for v in value]
    else:
        values = [_check_value(key, value, tp, source, text)]
    if key == "weights":
        for v in values:
            if v not in WEIGHTS:
                raise PPMechError(
                    f"{source}: unknown weights '{v}'{_where(text, 'weights')}",
                    "use pretrained and/or random",
                )
    if key == "dtype":
        from ppmech.models.loading import DTYPES

        for v in values:
            if v not in DTYPES:
                raise PPMechError(
                    f"{source}: unknown dtype '{v}'{_where(text, 'dtype')}", f"use one of {', '.join(DTYPES)}"
                )
    return values


def _parse_resources(value: Any, source: str, text: str | None) -> Resources:
    if not isinstance(value, dict):
        raise PPMechError(f"{source}: 'resources' must be a table ([resources])", "see docs/sweep.md")
    table = _normalise(value)
    types = typing.get_type_hints(Resources)
    known = [f.name for f in dataclasses.fields(Resources)]
    kwargs: dict[str, Any] = {}
    for key, v in table.items():
        if key not in known:
            raise _unknown(key, known, "in [resources]", source, text)
        kwargs[key] = _check_value(f"resources.{key}", v, types[key], source, text)
    resources = Resources(**kwargs)
    for key in ("cpus", "gpus", "memory_gb"):
        v = getattr(resources, key)
        if v is not None and v < 0:
            raise PPMechError(f"{source}: resources.{key} must be 0 or more (got {v:g})", "fix the value")
    if resources.cpus == 0 and resources.gpus == 0:
        raise PPMechError(f"{source}: a run must reserve some CPUs or GPUs", "set resources.cpus = 1")
    if resources.gpus > 1 and resources.gpus != int(resources.gpus):
        raise PPMechError(
            f"{source}: resources.gpus above 1 must be a whole number (got {resources.gpus:g})",
            "use e.g. 0.5, 1 or 2",
        )
    if resources.max_retries < 0:
        raise PPMechError(f"{source}: resources.max_retries must be 0 or more", "use e.g. 3")
    return resources


def _model_entries(value: Any, fields: dict[str, Any], source: str, text: str | None) -> list[dict[str, Any]]:
    entries = value if isinstance(value, list) else [value]
    if not entries:
        raise PPMechError(
            f"{source}: the grid is empty: models = [] names no model{_where(text, 'models')}",
            'list at least one model, e.g. models = ["smollm2-135m"]',
        )
    out = []
    for entry in entries:
        if isinstance(entry, str):
            out.append({"model": entry})
            continue
        if not isinstance(entry, dict):
            raise PPMechError(
                f"{source}: a model entry must be a string or a table (got {entry!r})"
                f"{_where(text, 'models')}",
                'write "name-or-path" or { model = "name-or-path", ... }',
            )
        table = _normalise(entry)
        if not isinstance(table.get("model"), str) or not table["model"]:
            raise PPMechError(
                f"{source}: a model table needs a 'model' string{_where(text, 'models')}",
                'write { model = "name-or-path", ... }',
            )
        for key in table:
            if key not in fields and key not in ENTRY_KEYS:
                raise _unknown(key, [*ENTRY_KEYS, *fields], "in a model entry", source, text)
        if "name" in table:
            check_entry_name(table["name"], source)
        out.append(table)
    return out


def parse_study(
    text: str,
    source: str = "study.toml",
    overrides: typing.Sequence[str] = (),
    default_name: str | None = None,
) -> Study:
    """Parse and validate a study, apply ``--set`` overrides, and expand its grid.

    Args:
        text: the TOML text.
        source: where it came from (shown in error messages).
        overrides: ``KEY=VALUE`` assignments in TOML syntax (``prompts=10``,
            ``resources.gpus=0.5``, ``'models=["smollm2-135m"]'``); an unquoted
            value that is not TOML is taken as a string (``corpus=wiki-es``).
        default_name: the study's name when it has no ``name`` key.

    Raises:
        PPMechError: see the module docstring.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PPMechError(
            f"{source} is not valid TOML: {_decode_error(exc, text)}",
            "fix the study file at that line and column",
        ) from exc
    for assignment in overrides:
        _apply_override(data, assignment)
    fields = _measure_fields()
    allowed = [*STUDY_KEYS, *fields]
    data_n = _normalise(data)
    if "model" in data_n and "models" in data_n:
        raise PPMechError(f"{source}: both 'model' and 'models' are given", "use one of them")
    if "model" in data_n:
        data_n["models"] = data_n.pop("model")
    for key in data_n:
        if key not in allowed:
            raise _unknown(key, allowed, "at the top level", source, text)
    if "models" not in data_n:
        raise PPMechError(f"{source}: the study names no models", 'add e.g. models = ["smollm2-135m"]')
    name = data_n.get("name", default_name or Path(source).stem)
    if not isinstance(name, str) or not name:
        raise PPMechError(f"{source}: 'name' must be a non-empty string{_where(text, 'name')}", "fix it")
    resources = _parse_resources(data_n.get("resources", {}), source, text)
    entries = _model_entries(data_n["models"], fields, source, text)
    top = {k: _axis(k, v, fields[k], source, text) for k, v in data_n.items() if k in fields and k != "model"}

    raw_conditions = data_n.get("conditions", [{}])
    if not isinstance(raw_conditions, list) or not all(isinstance(c, dict) for c in raw_conditions):
        raise PPMechError(
            f"{source}: 'conditions' must be an array of tables ([[conditions]])", "see docs/sweep.md"
        )
    if not raw_conditions:
        raise PPMechError(
            f"{source}: the grid is empty: conditions = []", "remove it or add a [[conditions]] table"
        )
    conditions = []
    for cond in raw_conditions:
        table = _normalise(cond)
        for key in table:
            if key not in fields or key == "model":
                raise _unknown(key, [k for k in fields if k != "model"], "in [[conditions]]", source, text)
        conditions.append(
            {k: _axis(k, v, fields[k], source, text, scalar_only=True)[0] for k, v in table.items()}
        )

    slugs: dict[str, set[str]] = {}
    for entry in entries:
        slugs.setdefault(entry.get("name") or model_slug(entry["model"]), set()).add(entry["model"])

    def slug_of(entry: dict[str, Any]) -> str:
        base = entry.get("name") or model_slug(entry["model"])
        if len(slugs[base]) > 1:  # two specs, one readable name: tell them apart, deterministically
            return f"{base}-{hashlib.sha1(entry['model'].encode()).hexdigest()[:6]}"
        return str(base)

    runs: list[PlannedRun] = []
    seen: dict[str, PlannedRun] = {}
    for entry in entries:
        own = {
            k: _axis(k, v, fields[k], source, text) for k, v in entry.items() if k in fields and k != "model"
        }
        for cond in conditions:
            axes = {k: v for k, v in top.items() if k not in cond and k not in own}
            for k in cond:
                if len(top.get(k, [None])) > 1 and k not in own:
                    raise PPMechError(
                        f"{source}: '{k}' is both an axis (a list) and set by [[conditions]]"
                        f"{_where(text, k)}",
                        "set it in one place",
                    )
            axes.update({k: [v] for k, v in cond.items() if k not in own})
            axes.update(own)
            keys = [k for k in fields if k in axes]
            for combo in itertools.product(*(axes[k] for k in keys)):
                kwargs = dict(zip(keys, combo, strict=True))
                kwargs["model"] = entry["model"]
                if resources.gpus > 0 and "device" not in kwargs:  # a reserved card is used
                    kwargs["device"] = "cuda"
                config = _config(kwargs, source)
                run = PlannedRun(run_name(slug_of(entry), config), config)
                key = _protocol_key(config)
                if key in seen:
                    raise _duplicate(seen[key], run, source)
                seen[key] = run
                runs.append(run)
    names: dict[str, int] = {}
    for run in runs:
        names[run.name] = names.get(run.name, 0) + 1
    if any(n > 1 for n in names.values()):
        # Two protocols, one readable name (e.g. two corpus files with one stem): add a short hash.
        runs = [
            PlannedRun(
                f"{r.name}-{hashlib.sha1(_protocol_key(r.config).encode()).hexdigest()[:6]}"
                if names[r.name] > 1
                else r.name,
                r.config,
            )
            for r in runs
        ]
    return Study(
        name=name,
        runs=tuple(runs),
        resources=resources,
        source=source,
        data=data,
        overrides=tuple(overrides),
    )


def _config(kwargs: dict[str, Any], source: str) -> MeasureConfig:
    """The run's :class:`MeasureConfig`, built now so that every check ``measure`` makes applies here."""
    try:
        config = MeasureConfig(**kwargs)
        # The device is resolved on the node that runs it (it may have a GPU the driver lacks),
        # but a name that is no device anywhere is refused here, by measure's own rule.
        check_device_name(config.device)
        return config
    except PPMechError as exc:
        # MeasureConfig names the field; say which study file and which model.
        raise PPMechError(f"{source}: {kwargs['model']}: {exc.problem}", exc.fix) from exc


def _protocol_key(config: MeasureConfig) -> str:
    """What a run measures: its PROTOCOL settings (:mod:`ppmech.settings`), as a comparable string."""
    return repr(sorted(values(config, Role.PROTOCOL).items()))


def _duplicate(first: PlannedRun, second: PlannedRun, source: str) -> PPMechError:
    """Two runs of the grid that measure the same thing (they differ in no PROTOCOL setting)."""
    a, b = first.config.to_dict(), second.config.to_dict()
    differ = [k for k in a if a[k] != b.get(k)]
    how = f"differ only in {', '.join(differ)}" if differ else "have identical settings"
    return PPMechError(
        f"{source}: "
        + (f"two runs {first.name}" if first.name == second.name else f"runs {first.name} and {second.name}")
        + f" measure the same thing (they {how})",
        "remove the duplicate model entry, axis value or condition: settings that are not protocol "
        "(device, compile, batch_size, n_boot, ...) do not change what a run records",
    )


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set KEY=VALUE`` (TOML syntax; dotted keys reach into tables)."""
    if "=" not in assignment:
        raise PPMechError(f"--set {assignment!r} is not KEY=VALUE", "write e.g. --set prompts=10")
    key, value = (s.strip() for s in assignment.split("=", 1))
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
        raise PPMechError(
            f"--set {assignment!r}: '{key}' is not a key", "write e.g. --set resources.gpus=0.5"
        )
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # an unquoted string, e.g. corpus=wiki-es
    parts = key.split(".")
    target = data
    for part in parts[:-1]:
        nxt = target.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise PPMechError(f"--set {assignment!r}: '{part}' is not a table", "check the key")
        target = nxt
    target[parts[-1]] = parsed


def load_study(path: str | Path, overrides: typing.Sequence[str] = ()) -> Study:
    """Read and parse a study file; see :func:`parse_study`."""
    p = Path(path)
    if not p.is_file():
        raise PPMechError(f"study file {p} not found", "check the path")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PPMechError(f"{p} is not UTF-8 text", "save the study as UTF-8 TOML") from exc
    return parse_study(text, str(p), overrides, default_name=p.stem)


def preset_study(name: str, overrides: typing.Sequence[str] = ()) -> Study:
    """A built-in study (``--preset``); see :data:`PRESETS`."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(PRESETS)}"
        raise PPMechError(f"unknown preset '{name}'", hint)
    return parse_study(PRESETS[name], f"preset:{name}", overrides, default_name=name)
