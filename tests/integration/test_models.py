"""Model loading from every kind of source, on real files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ppmech.errors import PPMechError
from ppmech.models.identity import LoadedModel
from ppmech.models.loading import EMBEDDED_MODELS, cache_root, load_model


def test_embedded_model_is_cached_as_safetensors(smollm2: LoadedModel) -> None:
    source = Path(smollm2.identity.source)
    assert source.parent == cache_root() / "converted"
    assert (source / "COMPLETE").is_file() and (source / "model.safetensors").is_file()
    assert smollm2.identity.num_layers == 30 and smollm2.identity.vocab_size == 49152
    assert smollm2.identity.weights == "pretrained" and smollm2.identity.seed is None


def test_gguf_path_loads_through_the_same_cache(smollm2: LoadedModel) -> None:
    path = EMBEDDED_MODELS["smollm2-135m"].locate()
    lm = load_model(str(path))
    assert lm.identity.source == smollm2.identity.source
    assert lm.identity.source_hash == smollm2.identity.source_hash


def test_random_weights_are_seeded_and_differ_from_pretrained(
    smollm2: LoadedModel, smollm2_random: LoadedModel
) -> None:
    again = load_model("smollm2-135m", weights="random", seed=0)
    other = load_model("smollm2-135m", weights="random", seed=1)
    w0 = smollm2_random.model.model.layers[3].mlp.up_proj.weight
    assert torch.equal(w0, again.model.model.layers[3].mlp.up_proj.weight)
    assert not torch.equal(w0, other.model.model.layers[3].mlp.up_proj.weight)
    assert not torch.equal(w0, smollm2.model.model.layers[3].mlp.up_proj.weight)
    assert smollm2_random.identity.key != smollm2.identity.key
    assert smollm2_random.identity.tokenizer_hash == smollm2.identity.tokenizer_hash


def test_local_directory(tiny_model_dir: Callable[[str], str]) -> None:
    lm = load_model(tiny_model_dir("llama"))
    assert lm.identity.source == tiny_model_dir("llama")
    assert lm.identity.hidden_size == 64


def test_local_directory_identity_follows_the_weights(
    tiny_model_dir: Callable[[str], str], tmp_path: Path
) -> None:
    """Same config, different weights (a fine-tune) must not share an identity."""
    import shutil

    base = load_model(tiny_model_dir("llama"))
    tuned_dir = tmp_path / "tuned"
    shutil.copytree(tiny_model_dir("llama"), tuned_dir)
    assert load_model(str(tuned_dir)).identity.source_hash == base.identity.source_hash
    tuned = load_model(str(tuned_dir))
    with torch.no_grad():
        tuned.model.model.layers[0].mlp.up_proj.weight.mul_(1.01)
    tuned.model.save_pretrained(tuned_dir)
    assert (tuned_dir / "config.json").read_bytes() == (
        Path(tiny_model_dir("llama")) / "config.json"
    ).read_bytes()
    again = load_model(str(tuned_dir))
    assert again.identity.source_hash != base.identity.source_hash
    assert again.identity.key != base.identity.key
    # The remembered digest is the file's real SHA-256.
    memo = json.loads((cache_root() / "hashes.json").read_text())
    weights = tuned_dir / "model.safetensors"
    assert memo[str(weights.resolve())]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def _hub_cache_entry(cache: Path, repo: str, source: str, commit: str) -> None:
    """Lay out ``source`` as revision ``commit`` of ``repo`` in a Hugging Face hub cache."""
    import shutil

    root = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(source, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)


def _load_offline_from(cache: Path, spec: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    code = (
        "import json; from ppmech.models.loading import load_model; "
        f"i = load_model({spec!r}).identity; print(json.dumps({{'source': i.source, 'hash': i.source_hash}}))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_hub_id_loads_offline_from_the_hub_cache_and_pins_the_revision(
    tiny_model_dir: Callable[[str], str], tmp_path: Path
) -> None:
    """The real hub code path, on a local hub cache: a new revision is a new identity."""
    first, second = "a" * 40, "b" * 40
    _hub_cache_entry(tmp_path, "someone/tiny", tiny_model_dir("llama"), first)
    loaded = _load_offline_from(tmp_path, "someone/tiny")
    assert loaded["source"] == "someone/tiny"
    assert loaded["hash"] == hashlib.sha256(f"someone/tiny@{first}".encode()).hexdigest()
    _hub_cache_entry(tmp_path, "someone/tiny", tiny_model_dir("qwen2"), second)
    assert _load_offline_from(tmp_path, "someone/tiny")["hash"] == (
        hashlib.sha256(f"someone/tiny@{second}".encode()).hexdigest()
    )


def test_bfloat16_compute(tiny_model_dir: Callable[[str], str]) -> None:
    lm = load_model(tiny_model_dir("llama"), dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "GGUF file not found"),
        (b"PK\x03\x04zip", "not a GGUF file"),
        (b"GGUF" + b"\x00" * 64, "could not read GGUF"),
    ],
)
def test_bad_gguf_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PPMechError, match=message):
        load_model(str(path))
    assert not any((cache_root() / "converted").glob(".*"))  # no staging left behind


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(PPMechError, match="unknown model 'gpt-17'.*smollm2-135m"):
        load_model("gpt-17")


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(PPMechError, match="no config.json"):
        load_model(str(tmp_path))


#: Loads ``spec`` with the hub's endpoint unreachable; prints the load's seconds and its one-line error.
_OUT_OF_REACH = (
    "import sys, time; from ppmech.models.loading import load_model; from ppmech.errors import PPMechError\n"
    "from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer\n"  # imports are not the load
    "import huggingface_hub\n"
    "t = time.perf_counter()\n"
    "try:\n"
    "    i = load_model(sys.argv[1]).identity; print('LOADED', i.source_hash)\n"
    "except PPMechError as e:\n"
    "    print('ERROR', e.one_line())\n"
    "print('SECONDS', time.perf_counter() - t)\n"
)


def _out_of_reach(cache: Path, spec: str, offline: bool) -> tuple[list[str], str]:
    """Run :data:`_OUT_OF_REACH` with an empty (or given) hub cache: nothing listens on port 9."""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _OUT_OF_REACH, spec], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines(), done.stderr


@pytest.mark.parametrize("offline", [False, True], ids=["endpoint-refuses", "HF_HUB_OFFLINE"])
def test_hub_id_out_of_reach_fails_fast_in_one_line(tmp_path: Path, offline: bool) -> None:
    out, err = _out_of_reach(tmp_path, "nobody/no-such-model", offline)
    assert out[0].startswith("ERROR model 'nobody/no-such-model' is not in the local Hugging Face cache")
    assert ("HF_HUB_OFFLINE is set" if offline else "cannot reach http://127.0.0.1:9") in out[0]
    # Before: 5 retries per file with 1+2+4+8+8 = 23 s of back-off, twice (22 log lines, 40-50 s).
    # The bound is not a speed figure: it fails only if a retry's back-off comes back.
    assert "Retrying" not in err and err.strip() == ""
    assert float(out[1].split()[1]) < 20.0


def test_cached_hub_model_loads_when_the_hub_is_out_of_reach(
    tiny_model_dir: Callable[[str], str], tmp_path: Path
) -> None:
    commit = "c" * 40
    _hub_cache_entry(tmp_path, "someone/tiny", tiny_model_dir("llama"), commit)
    out, err = _out_of_reach(tmp_path, "someone/tiny", offline=False)
    assert out[0] == "LOADED " + hashlib.sha256(f"someone/tiny@{commit}".encode()).hexdigest()
    assert err.strip().splitlines() == [
        "ppmech: note: the Hugging Face hub is out of reach (cannot reach http://127.0.0.1:9 "
        "([Errno 111] Connection refused)); loading someone/tiny from the local cache"
    ]


@pytest.mark.parametrize(
    "spec", ["./nope", "~/ppmech-no-such-model", "/no/such/model", "a/b/c", "models/qwen"]
)
def test_path_like_name_is_no_such_directory(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()  # `models/qwen` names a folder under an existing ./models: a path
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PPMechError, match=f"^no such directory: {spec}; check the path"):
        load_model(spec)


def test_an_org_slash_name_is_a_hub_id_unless_its_org_is_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ppmech.models.hub import looks_like_path

    monkeypatch.chdir(tmp_path)
    assert not looks_like_path("HuggingFaceTB/SmolLM2-135M") and not looks_like_path("gpt2")
    (tmp_path / "HuggingFaceTB").mkdir()
    assert looks_like_path("HuggingFaceTB/SmolLM2-135M")
    assert looks_like_path("a\\b") and looks_like_path("~/m") and looks_like_path("/m")
