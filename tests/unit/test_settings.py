"""Each setting's role, declared once (issue 19), and config files built on it (issue 20)."""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from ppmech.cli.config import add_config_file_flag, add_config_flags, config_from_args, load_config_file
from ppmech.engine.sampling import Decoding
from ppmech.errors import PPMechError
from ppmech.measure import ANALYSIS_KEYS, EXECUTION_KEYS, MeasureConfig
from ppmech.settings import ModelSpec, Role, dump_toml, keys, role_of, values
from ppmech.steering.run import SteerConfig

CONFIGS = [MeasureConfig, SteerConfig]

# A value other than the default for each PROTOCOL setting of MeasureConfig (sample decoding
# throughout, so that the sampling settings are legal).
OTHER = {
    "model": "other-model",
    "weights": "random",
    "dtype": "bfloat16",
    "revision": "abc123",
    "corpus": "wiki-es",
    "text_field": "body",
    "prompts": 7,
    "context_tokens": 20,
    "new_tokens": 30,
    "decoding": "teacher",
    "temperature": 0.7,
    "top_k": 5,
    "top_p": 0.9,
    "stop_at_eos": True,
    "seed": 3,
    "save_hidden": True,
}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_declares_its_role(cls: Any) -> None:
    for f in fields(cls):
        assert isinstance(role_of(cls, f.name), Role), f.name
    assert keys(cls) == tuple(f.name for f in fields(cls))
    assert set(keys(ModelSpec)) <= set(keys(cls))  # the model fields are ModelSpec's, inherited flat


def test_key_lists_are_derived_from_the_roles() -> None:
    assert EXECUTION_KEYS == ("device", "trust_remote_code", "batch_size", "compile")
    assert ANALYSIS_KEYS == ("n_boot",)
    assert set(OTHER) == set(keys(MeasureConfig, Role.PROTOCOL))
    # The four roles partition the fields: no setting is in two lists, none is in none.
    parts = [keys(MeasureConfig, role) for role in Role]
    assert sorted(k for part in parts for k in part) == sorted(f.name for f in fields(MeasureConfig))
    assert values(MeasureConfig(n_boot=5), Role.ANALYSIS) == {"n_boot": 5}


def test_role_of_refuses_an_unknown_setting() -> None:
    with pytest.raises(KeyError, match="no setting 'nope'"):
        role_of(MeasureConfig, "nope")


@pytest.mark.parametrize("key", sorted(OTHER))
def test_runs_differing_in_any_protocol_setting_never_share_a_table5_group(key: str) -> None:
    """Issue 19: Table 5 grouped by a hand-written list that left out top_k, top_p, seed, ..."""
    from ppmech.claims.scaling import MODEL_IDENTITY, protocol_differences

    base = MeasureConfig(decoding="sample").to_dict()
    other = base | {key: OTHER[key]}
    differing = protocol_differences([base, other])
    if key in MODEL_IDENTITY:
        assert differing == []  # the model is what a scaling correlation varies
    else:
        assert differing == [key]


@pytest.mark.parametrize("key", [*EXECUTION_KEYS, *ANALYSIS_KEYS])
def test_execution_and_analysis_settings_do_not_split_a_table5_group(key: str) -> None:
    from ppmech.claims.scaling import protocol_differences

    changed = {"device": "cpu", "trust_remote_code": True, "batch_size": 3, "compile": "off", "n_boot": 9}
    base = MeasureConfig().to_dict()
    assert protocol_differences([base, base | {key: changed[key]}]) == []


SAMPLING = [{"temperature": 0.5}, {"top_k": 3}, {"top_p": 0.5}, {"top_k": 3, "top_p": 0.5}]


@pytest.mark.parametrize("given", SAMPLING, ids=lambda g: "+".join(g))
@pytest.mark.parametrize("strategy", ["greedy", "teacher"])
def test_sampling_settings_are_refused_off_sample_by_every_config(
    given: dict[str, Any], strategy: str
) -> None:
    """Issue 19: SteerConfig(decoding="greedy", top_p=0.5, top_k=3) was accepted and ignored."""
    names = sorted(given)
    with pytest.raises(PPMechError, match=f"only applies to `decoding` sample, not {strategy}") as exc:
        Decoding(strategy=strategy, **given)  # type: ignore[arg-type]
    assert all(f"`{n}`" in str(exc.value) for n in names)
    with pytest.raises(PPMechError, match="only applies to `decoding` sample"):
        MeasureConfig(decoding=strategy, **given)
    if strategy == "greedy":  # steer has no teacher decoding at all
        with pytest.raises(PPMechError, match="only applies to `decoding` sample"):
            SteerConfig(prompt="Hi", target_text="there", decoding=strategy, **given)
    # Under sample they are the point.
    assert Decoding.of(MeasureConfig(decoding="sample", **given)).strategy == "sample"
    assert SteerConfig(prompt="Hi", target_text="x", decoding="sample", **given).decoding == "sample"


def test_model_at_revision_is_split_and_a_conflict_refused() -> None:
    config = MeasureConfig(model="HuggingFaceTB/SmolLM2-135M@main")
    assert (config.model, config.revision) == ("HuggingFaceTB/SmolLM2-135M", "main")
    assert MeasureConfig(model="org/m@v1", revision="v1").revision == "v1"
    with pytest.raises(PPMechError, match="pins revision 'v1' but `revision` is 'v2'"):
        MeasureConfig(model="org/m@v1", revision="v2")
    with pytest.raises(PPMechError, match="empty name or revision"):
        MeasureConfig(model="org/m@")
    with pytest.raises(PPMechError, match="`revision` is empty"):
        MeasureConfig(revision=" ")


def test_a_local_path_with_an_at_sign_is_left_whole(tmp_path: Path) -> None:
    path = tmp_path / "model@home"
    path.mkdir()
    assert MeasureConfig(model=str(path)).model == str(path)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_a_blank_device_is_refused(cls: Any) -> None:
    """Issue 18: `--device ''` silently meant auto."""
    extra = {"prompt": "Hi", "target_text": "x"} if cls is SteerConfig else {}
    with pytest.raises(PPMechError, match="`device` is empty"):
        cls(device="", **extra)


def test_toml_round_trip_of_a_config(tmp_path: Path) -> None:
    config = MeasureConfig(decoding="sample", top_k=4, temperature=0.8, corpus='a "quoted" é path')
    text = dump_toml(config.to_dict(), "a header")
    assert text.startswith("# a header\n") and "top_p" not in text  # None has no TOML spelling
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert MeasureConfig(**load_config_file(MeasureConfig, path)) == config
    steer = SteerConfig(prompt="Hi", target_ids=(5, -1, 7), layer=2)
    path.write_text(dump_toml(steer.to_dict()))
    assert SteerConfig(**load_config_file(SteerConfig, path)) == steer  # a list reads back as a tuple


def test_config_file_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("new_tokenz = 5\n")
    with pytest.raises(PPMechError, match="unknown key 'new_tokenz' \\(did you mean 'new_tokens'\\?\\)"):
        load_config_file(MeasureConfig, path)
    path.write_text("new_tokens = [\n")
    with pytest.raises(PPMechError, match=f"config file {path} is not valid TOML") as exc:
        load_config_file(MeasureConfig, path)
    assert "\n" not in exc.value.one_line()
    with pytest.raises(PPMechError, match="not found"):
        load_config_file(MeasureConfig, tmp_path / "missing.toml")
    with pytest.raises(PPMechError, match="is a directory"):
        load_config_file(MeasureConfig, tmp_path)


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('prompts = 9\nnew_tokens = 11\nmodel = "from-file"\n')
    parser = argparse.ArgumentParser()
    add_config_file_flag(parser)
    add_config_flags(parser, MeasureConfig)
    args = parser.parse_args(["--config", str(path), "--prompts", "4"])
    config = config_from_args(MeasureConfig, args)
    assert (config.prompts, config.new_tokens, config.model) == (4, 11, "from-file")
    # Without the file, an omitted flag leaves the dataclass default.
    assert config_from_args(MeasureConfig, parser.parse_args([])) == MeasureConfig()


def test_flags_follow_the_field_types() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, SteerConfig, skip=("layer",))
    args = parser.parse_args(["--target-ids", "5", "7"])
    assert config_from_args(SteerConfig, args, prompt="Hi").target_ids == (5, 7)
    parser = argparse.ArgumentParser()
    add_config_flags(parser, MeasureConfig)
    args = parser.parse_args(
        ["--batch-size", "auto", "--top-k", "3", "--decoding", "sample", "--save-hidden"]
    )
    config = config_from_args(MeasureConfig, args)
    assert (config.batch_size, config.top_k, config.save_hidden) == ("auto", 3, True)
    assert config_from_args(MeasureConfig, parser.parse_args(["--batch-size", "8"])).batch_size == 8


def test_dump_toml_is_valid_toml_for_awkward_strings() -> None:
    text = dump_toml({"a": 'back\\slash "q" \n\t é', "b": float("inf"), "c": [1, 2]})
    assert tomllib.loads(text) == {"a": 'back\\slash "q" \n\t é', "b": float("inf"), "c": [1, 2]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('prompts = "abc"', "`prompts` must be a whole number (got 'abc')"),
        ("prompts = 2.5", "`prompts` must be a whole number"),
        ("stop_at_eos = 1", "`stop_at_eos` must be true or false"),
        ("model = 3", "`model` must be a string"),
        ("top_p = true", "`top_p` must be a number"),
        ("batch_size = 1.5", "`batch_size` must be a whole number or a word"),
    ],
)
def test_a_config_file_value_of_the_wrong_type_is_one_line(line: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(line + "\n")
    with pytest.raises(PPMechError) as exc:
        load_config_file(MeasureConfig, path)
    assert message in exc.value.one_line() and str(path) in exc.value.one_line()


def test_config_file_values_are_converted_to_the_field_types(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('temperature = 1\nbatch_size = "auto"\n')
    assert load_config_file(MeasureConfig, path) == {"temperature": 1.0, "batch_size": "auto"}
    path.write_text('target_ids = [1, "x"]\n')
    with pytest.raises(PPMechError, match="`target_ids` must be a list of whole numbers"):
        load_config_file(SteerConfig, path)


def test_an_empty_config_path_is_named_as_such() -> None:
    with pytest.raises(PPMechError, match="the config file path is empty"):
        load_config_file(MeasureConfig, "")
