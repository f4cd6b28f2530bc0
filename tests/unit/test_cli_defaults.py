"""The CLI writes no default of its own: omitted flags leave them to the config dataclasses."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from ppmech.claims.verify import VerifyConfig
from ppmech.cli import build_parser
from ppmech.cli.config import config_from_args
from ppmech.measure import MeasureConfig
from ppmech.monitor.benchmark import BenchmarkConfig
from ppmech.monitor.calibration import MonitorConfig
from ppmech.steering.evaluation import SteeringEvalConfig
from ppmech.steering.run import SteerConfig

# (command line with only what is required, config class, fields the command line gave)
COMMANDS: list[tuple[list[str], type[Any], dict[str, Any]]] = [
    (["measure"], MeasureConfig, {}),
    (
        ["steer", "--prompt", "Hi", "--target-text", "there"],
        SteerConfig,
        {"prompt": "Hi", "target_text": "there"},
    ),
    (["evaluate-steering"], SteeringEvalConfig, {}),
    (["monitor", "calibrate", "--out", "cal.json"], MonitorConfig, {}),
    (["monitor", "benchmark"], BenchmarkConfig, {}),
    (["verify"], VerifyConfig, {}),
]


@pytest.mark.parametrize(
    ("argv", "cls", "given"), COMMANDS, ids=lambda x: " ".join(x) if isinstance(x, list) else ""
)
def test_omitted_flags_take_the_dataclass_defaults(
    argv: list[str], cls: type[Any], given: dict[str, Any]
) -> None:
    args = build_parser().parse_args(argv)
    config_fields = {f.name for f in fields(cls)}
    assert config_fields & set(vars(args)) == set(given)  # no default written in the CLI
    overrides = {"baselines": True} if cls is SteeringEvalConfig else {}
    assert config_from_args(cls, args, **overrides) == cls(**given)


def test_given_flags_reach_the_config() -> None:
    parser = build_parser()
    args = parser.parse_args(["monitor", "calibrate", "--out", "c.json", "--z-clip", "3", "--model", "x"])
    assert config_from_args(MonitorConfig, args) == MonitorConfig(z_clip=3.0, model="x")
    args = parser.parse_args(["measure", "--prompts", "7", "--stop-at-eos", "--seed", "3"])
    assert config_from_args(MeasureConfig, args) == MeasureConfig(prompts=7, stop_at_eos=True, seed=3)


def test_verify_flags_reach_its_config() -> None:
    from ppmech.cli.verify import verify_config

    parser = build_parser()
    assert verify_config(parser.parse_args(["verify"])) == VerifyConfig()
    args = parser.parse_args(["verify", "--models", "smollm2-135m", "--no-extras", "--n-boot", "50"])
    assert verify_config(args) == VerifyConfig(models=("smollm2-135m",), extras=False, n_boot=50)
    assert verify_config(parser.parse_args(["verify", "--out", "x/v"])).out == "x/v"


def test_building_the_parser_imports_no_config_module() -> None:
    """Flags built from a config dataclass wait until their command is used: `ppmech --help` stays light."""
    import subprocess
    import sys

    code = "import sys; from ppmech.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_config_file_fills_what_the_flags_leave(tmp_path: Any) -> None:
    parser = build_parser()
    path = tmp_path / "eval.toml"
    path.write_text('prompts = 4\nbaselines = false\njudge = "embedding"\n')
    args = parser.parse_args(["evaluate-steering", "--config", str(path), "--prompts", "6"])
    from ppmech.cli.steer import _eval_config

    config = _eval_config(args)
    # The file's baselines = false is kept (only a given --no-baselines overrides); the flag wins on prompts.
    assert (config.prompts, config.baselines, config.judge) == (6, False, "embedding")
    path.write_text('prompts = 4\nnew_tokens = 9\nrevision = "v1"\nmodel = "org/m"\n')
    args = parser.parse_args(["measure", "--config", str(path), "--new-tokens", "12"])
    assert config_from_args(MeasureConfig, args) == MeasureConfig(
        prompts=4, new_tokens=12, model="org/m", revision="v1"
    )


def test_a_target_flag_replaces_the_files_target(tmp_path: Any) -> None:
    from ppmech.cli.steer import steer_config

    parser = build_parser()
    path = tmp_path / "steer.toml"
    path.write_text('prompt = "Hi"\ntarget_ids = [5, 6]\n')
    assert steer_config(parser.parse_args(["steer", "--config", str(path)])).target_ids == (5, 6)
    config = steer_config(parser.parse_args(["steer", "--config", str(path), "--target-text", "there"]))
    assert (config.target_text, config.target_ids) == ("there", None)
    with pytest.raises(SystemExit):  # both as flags: argparse's one-line refusal
        parser.parse_args(["steer", "--prompt", "a", "--target-text", "b", "--target-ids", "3"])
